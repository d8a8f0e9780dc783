"""The judge step: `Facts` -> `Inventory`. Pure (no file, no kernel), so every rule is a unit test.

One network per name, merged from its CNI configs, its Docker driver record and its lease
stores; each endpoint judged attached / stale / unknown with the reason; the claims on host
veths built from every source, whatever networks were asked for.
"""

from __future__ import annotations

from typing import Any

from cni_bridge.attachment import Attachment
from cni_bridge.config import parse_network
from cni_bridge.dhcp.files import veth_name as dhcp_veth_name
from cni_bridge.errors import PluginError
from cni_bridge.inventory.model import (
    ALL_BRIDGES,
    ATTACHED,
    DOCKER,
    DOCKER_ENDPOINT_IFNAME,
    DOCKER_OWNER_PREFIX,
    STALE,
    UNKNOWN,
    Claims,
    Endpoint,
    Facts,
    Inventory,
    Network,
    NetworkConfig,
    wanted_name,
)
from cni_bridge.ipam.lease import DHCP_IFNAME, DHCP_OWNER_PREFIX
from cni_bridge.vm import names as vm_names

BRIDGE_MODES = (None, "bridge", "tap")  # attachments are host veths on the bridge


def judge(facts: Facts, wanted: set[str] | None, grace: float) -> Inventory:
    networks = build_networks(facts, wanted)
    for net in networks:
        describe(net, facts)
        net.endpoints = lease_endpoints(net, facts, grace) + docker_endpoints(net, facts) \
            + record_only_vm_ports(net, facts, grace)
        net.problems += network_problems(net)
    known = {n.table for n in networks}
    foreign = sorted(t for t in facts.tables if t not in known) if wanted is None else []
    return Inventory(networks, foreign, facts.netns, facts.problems, claims_of(facts), facts.links, facts.sources)


# --- networks --------------------------------------------------------------------------------
def build_networks(facts: Facts, wanted: set[str] | None) -> list[Network]:
    """The networks asked for, sorted by name, each merged from every source that names it."""
    networks: dict[str, Network] = {}

    def net_of(name: str) -> Network:
        return networks.setdefault(name, Network(name, table=facts.table_names.get(name)))

    for cfg in facts.configs:
        if wanted_name(cfg.name, wanted):
            add_config(net_of(cfg.name), cfg)
    for rec in facts.docker_networks:
        if wanted_name(rec["id"], wanted):
            add_docker_network(net_of(rec["id"]), rec)
    for rec in facts.vm_ports.values():
        if wanted_name(rec["network"], wanted):
            net_of(rec["network"]).sources.append("VM port records")
    for name, stores in facts.stores.items():
        if wanted_name(name, wanted):
            net = net_of(name)
            net.sources += [f"leases {d}" for d in stores]
            net.data_dir = net.data_dir or next(iter(stores))
    return sorted(networks.values(), key=lambda n: n.name)


def add_config(net: Network, cfg: NetworkConfig) -> None:
    net.sources.append(f"config {cfg.path}")
    net.plugin = net.plugin or cfg.plugin
    net.mode = net.mode or cfg.mode
    net.bridge = net.bridge or cfg.bridge
    net.ip_masq = cfg.ip_masq if net.ip_masq is None else net.ip_masq
    net.data_dir = net.data_dir or cfg.data_dir


def add_docker_network(net: Network, rec: dict[str, Any]) -> None:
    net.sources.append("docker driver state")
    net.docker_id = rec["id"]
    try:
        spec = parse_network(rec["config"])
    except PluginError as exc:
        net.problems.append(f"docker network config does not parse: {exc}")
        return
    net.plugin, net.mode, net.ip_masq = "pybridge", spec.mode, spec.ip_masq
    net.bridge = spec.bridge if spec.mode == "bridge" else spec.master


def describe(net: Network, facts: Facts) -> None:
    """Bridge (or master) and masquerade table as the kernel has them."""
    net.table_present = net.table in facts.tables
    net.masquerade = dict(facts.members.get(net.name, {})) if net.table_present else {}
    link = facts.links.get(net.bridge) if net.bridge else None
    if net.bridge:
        net.bridge_present = link is not None
    if link is not None:
        net.bridge_up = link.up
        net.bridge_addresses = list(facts.addresses.get(link.name, []))
        net.vxlan = facts.vxlan.get(link.name)


def network_problems(net: Network) -> list[str]:
    attached = [e for e in net.endpoints if e.state == ATTACHED]
    out = [f"{net.bridge} does not exist but attachments do"] if net.bridge_present is False and attached else []
    if net.ip_masq and net.mode in BRIDGE_MODES and any(unmasqueraded(e) for e in attached):
        out.append("ipMasq is on but some attached endpoints have no masquerade entry")
    return out


def unmasqueraded(ep: Endpoint) -> bool:
    return ep.source != "docker-ipam" and not ep.masquerade


# --- endpoints -------------------------------------------------------------------------------
def lease_endpoints(net: Network, facts: Facts, grace: float) -> list[Endpoint]:
    """One endpoint per (owner, lease store) of the network."""
    grouped: dict[tuple[str, str, str], list[Any]] = {}
    for data_dir, leases in facts.stores.get(net.name, {}).items():
        for lease in leases:
            grouped.setdefault((*lease.owner, data_dir), []).append(lease)
    out = []
    for (cid, ifname, data_dir), held in sorted(grouped.items()):
        since, leased = min(lease.since for lease in held), [str(lease.address) for lease in held]
        if cid.startswith(DHCP_OWNER_PREFIX) and ifname == DHCP_IFNAME:  # cni_bridge/dhcp's own address
            out.append(dhcp_endpoint(net, facts, Endpoint(cid, ifname, "dhcp", ATTACHED, leased=leased,
                                                          since=since, data_dir=data_dir), grace))
        elif cid.startswith(DOCKER_OWNER_PREFIX):
            out.append(Endpoint(cid, ifname, "docker-ipam", DOCKER, leased=leased, since=since,
                                why="held by the Docker IPAM driver", data_dir=data_dir))
        elif vm_names.tap_of_owner(cid, ifname) is not None:
            out.append(vm_endpoint(net, facts, Endpoint(cid, ifname, "vm", UNKNOWN, leased=leased, since=since,
                                                        data_dir=data_dir), grace))
        else:
            out.append(cni_endpoint(net, facts, Endpoint(cid, ifname, "cni", UNKNOWN, leased=leased, since=since,
                                                         data_dir=data_dir), grace))
    return out


def dhcp_endpoint(net: Network, facts: Facts, ep: Endpoint, grace: float) -> Endpoint:
    """The address of the network's DHCP server: attached while the server's veth exists;
    stale when it is gone (a reboot took the server, no attachment came back), after `grace`."""
    ep.host_ifname = dhcp_veth_name(net.name)
    link = facts.links.get(ep.host_ifname)
    ep.host_link, ep.host_master = link is not None, facts.name_of(link.master) if link else None
    if link is not None:
        ep.why = "the network's DHCP server"
    elif ep.since is not None and facts.now - ep.since < grace:
        ep.state, ep.why = UNKNOWN, f"lease younger than {grace:g}s (the DHCP server may be starting)"
    else:
        ep.state, ep.why = STALE, "the network's DHCP server is gone"
    return ep


def cni_endpoint(net: Network, facts: Facts, ep: Endpoint, grace: float) -> Endpoint:
    ep.host_ifname = Attachment(ep.container_id, ep.ifname, None).host_ifname
    link = facts.links.get(ep.host_ifname)
    ep.host_link, ep.host_master = link is not None, facts.name_of(link.master) if link else None
    ep.masquerade = owned_addresses(net, ep.host_ifname)
    cached = facts.cache.get((net.name, ep.container_id, ep.ifname))
    ep.container = facts.containers.get((ep.host_ifname, cached, ep.ifname))
    ep.state, ep.why = judge_endpoint(ep, net, cached, facts.netns_present.get(cached or "", False),
                                      facts.now, grace)
    return ep


def vm_endpoint(net: Network, facts: Facts, ep: Endpoint, grace: float) -> Endpoint:
    """A VM port (`cni-bridge vm`): its tap is the host link, its record the claim. Both there:
    attached; one without the other: stale (an attach writes the record before anything else and
    a detach removes it last, so only a crash or an operator leaves one alone), unless younger
    than `grace` (an attach may be running)."""
    tap = ep.ifname
    link = facts.links.get(tap)
    record = facts.vm_ports.get(tap)
    ep.host_ifname, ep.host_link = tap, link is not None and link.kind == "tun"
    ep.host_master = facts.name_of(link.master) if link else None
    ep.masquerade = owned_addresses(net, tap)
    if ep.since is None and record is not None:
        ep.since = record.get("since")
    if ep.host_link and record is not None:
        ep.state, ep.why = ATTACHED, "tap present"
    elif ep.since is not None and facts.now - ep.since < grace:
        ep.state, ep.why = UNKNOWN, f"younger than {grace:g}s (an attach may be in progress)"
    else:
        ep.state = STALE
        ep.why = "no port record claims the tap" if ep.host_link else \
            f"tap {tap} is gone" + ("" if record is not None else " and no port record")
    return ep


def record_only_vm_ports(net: Network, facts: Facts, grace: float) -> list[Endpoint]:
    """VM port records of this network without a lease anywhere (L2-only networks, or a crash
    after the lease went): judged like the others."""
    leased = {lease.ifname for stores in facts.stores.values() for held in stores.values() for lease in held
              if vm_names.tap_of_owner(*lease.owner) is not None}
    return [vm_endpoint(net, facts, Endpoint(vm_names.owner_of(tap)[0], tap, "vm", UNKNOWN,
                                             leased=list(rec.get("addresses", [])), since=rec.get("since")), grace)
            for tap, rec in sorted(facts.vm_ports.items()) if rec["network"] == net.name and tap not in leased]


def judge_endpoint(ep: Endpoint, net: Network, cached_netns: str | None, cached_present: bool,
                   now: float, grace: float) -> tuple[str, str]:
    """attached / stale / unknown, with the reason."""
    if ep.host_link or (ep.container is not None and ep.container.present):
        return ATTACHED, "host link present" if ep.host_link else "interface in netns"
    if ep.since is not None and now - ep.since < grace:
        return UNKNOWN, f"lease younger than {grace:g}s (an ADD may be in progress)"
    if cached_netns:
        return STALE, (f"no {ep.ifname} in netns {cached_netns}" if cached_present
                       else f"netns {cached_netns} is gone")
    return judge_without_trace(ep, net)


def judge_without_trace(ep: Endpoint, net: Network) -> tuple[str, str]:
    """No host link, no container interface, no libcni cache entry: only a pybridge bridge
    network names its veths so that the missing one proves the attachment gone."""
    if net.plugin == "pybridge" and net.mode in BRIDGE_MODES:
        return STALE, f"host veth {ep.host_ifname} is gone"
    if net.plugin is None and net.mode is None:
        # No config found: a pybridge bridge attachment would have this veth; a foreign main
        # plugin (the Go bridge with pybridge-ipam) names its veths differently.
        return UNKNOWN, "no config for this network; no veth named " + str(ep.host_ifname)
    return UNKNOWN, f"{net.plugin} {net.mode or ''} attachment without a libcni cache entry".strip()


def docker_endpoints(net: Network, facts: Facts) -> list[Endpoint]:
    out = []
    for rec in (r for r in facts.docker_endpoints if net.docker_id and r["network"] == net.docker_id):
        host_ifname = rec["host_ifname"]
        link = facts.links.get(host_ifname)
        ep = Endpoint(str(rec["id"])[:12], DOCKER_ENDPOINT_IFNAME, "docker", ATTACHED if link else UNKNOWN,
                      host_ifname, link is not None, facts.name_of(link.master) if link else None,
                      list(rec["addresses"]), masquerade=owned_addresses(net, host_ifname),
                      docker_endpoint=rec["id"],
                      why="host link present" if link else "no host link (dockerd owns this endpoint)")
        ep.container = facts.containers.get((host_ifname, None, DOCKER_ENDPOINT_IFNAME))
        out.append(ep)
    return out


def owned_addresses(net: Network, owner: str | None) -> list[str]:
    return sorted(a for a, o in net.masquerade.items() if o == owner)


# --- claims ----------------------------------------------------------------------------------
def claims_of(facts: Facts) -> Claims:
    """Every host veth some owner claims, from every store and the Docker driver's state (not
    only the networks asked for: networks share bridges), and the bridges whose ports cannot be
    judged because an owner's claims are out of sight."""
    return Claims(claimed_ports(facts), unprovable_bridges(facts))


def claimed_ports(facts: Facts) -> set[str]:
    """Host veths of leases and Docker endpoints, and the taps of VM port records (a VM lease
    alone claims nothing: its tap without a record is gc's to remove)."""
    leases = [lease for stores in facts.stores.values() for held in stores.values() for lease in held]
    return ({Attachment(*lease.owner, None).host_ifname for lease in leases
             if not lease.container_id.startswith(DOCKER_OWNER_PREFIX) and vm_names.tap_of_owner(*lease.owner) is None}
            | {rec["host_ifname"] for rec in facts.docker_endpoints} | set(facts.vm_ports))


def unprovable_bridges(facts: Facts) -> dict[str, str]:
    out = {cfg.bridge: f"network {cfg.name} on it keeps its leases in another IPAM" for cfg in facts.configs
           if cfg.bridge and cfg.plugin == "pybridge" and cfg.mode in BRIDGE_MODES and not cfg.data_dir}
    unread = [what for what, errors in (("a CNI config", facts.config_errors), ("a lease store", facts.store_errors),
                                        ("the Docker driver's state", facts.docker_errors),
                                        ("the VM port records", facts.vm_errors)) if errors]
    if unread:
        out[ALL_BRIDGES] = f"{' and '.join(unread)} could not be read completely"
    return out
