"""VM ports: persistent tap devices on a network's bridge, Neutron style, for VMs on this host
(QEMU `-netdev tap,ifname=TAP,script=no,downscript=no`).

A port is an attachment like a container's, made of the same parts: the bridge set up exactly as
a container ADD sets it up (modes/bridge.py: bridge, uplink, gateway, forwarding, isolation),
an address from the network's lease store under the owner key (`pybridge-vm-<tap>`, `<tap>`), the
address in the network's masquerade sets (owner: the tap's name, as a container's is its host
veth's), and the port itself, a tap instead of a veth.

Two MACs: the guest's (`--mac`, else a random locally administered one) is the one the lease,
DHCP and the bridge's forwarding database see, and the one printed for the VMM (`-device
virtio-net,mac=...`). The tap's own MAC must differ: a bridge delivers frames addressed to one of
its ports' MACs to the host itself, never out of that port. It is the guest's with the first
octet 0xfe (libvirt's convention; a high first octet also keeps the tap out of the bridge's
choice of its own MAC, which pybridge pins anyway).

Records: one JSON file per port (`state.StateStore` kind "ports", under DEFAULT_PORT_DIR): the
network, MAC, addresses, whether this port's attach created the bridge. It is written first
("creating") and removed last, so a port's claim is on disk whenever its tap exists: `cni-bridge
gc` may delete a tap no record claims and forget a record whose tap is gone. The bridge goes with
the last port only when a port's attach created it (a CNI DEL never removes a bridge, and a
Docker network's bridge is DeleteNetwork's).

Entry points for other features (a DHCP server's static entries follow every port): `attach`,
`detach`, `ports` (the records), and `HOOKS`: callables run after a port was attached or
detached, with (event, VmNetwork, record).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from cni_bridge import firewall, validate
from cni_bridge.attachment import Addressing
from cni_bridge.crashpoint import step
from cni_bridge.errors import INTERNAL, PluginError, config_error, shown
from cni_bridge.ipam.backend import location, open_store
from cni_bridge.kernel import netlink
from cni_bridge.locks import attachment_lock, network_lock
from cni_bridge.modes import bridge, tap, uplink
from cni_bridge.modes.common import Undo
from cni_bridge.state import StateStore
from cni_bridge.vm.names import CREATING, DEFAULT_PORT_DIR, KIND, READY, default_tap_name, owner_of
from cni_bridge.vm.networks import DOCKER, VmNetwork, addressing

log = logging.getLogger("cni_bridge.vm")

ATTACHED, DETACHED = "attached", "detached"

Hook = Callable[[str, VmNetwork, dict[str, Any]], None]
HOOKS: list[Hook] = []


def random_mac() -> str:
    """A locally administered unicast MAC (first octet x2, x6, xA or xE)."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


def host_mac(guest_mac: str) -> str:
    """The tap's own MAC (see the module docstring)."""
    first = "fe" if not guest_mac.lower().startswith("fe") else "fa"
    return first + guest_mac[2:].lower()


def tap_name(value: str) -> str:
    """--name: a link name that is also a record key (no '@')."""
    name = validate.ifname(value, "--name")
    if "@" in name or not name[0].isalnum():
        raise config_error(f"invalid tap name {shown(name)}", "letters, digits, '_', '.', '-'; starting with a "
                           "letter or digit; at most 15 bytes")
    return name


def records(port_dir: Path) -> StateStore:
    return StateStore(port_dir)


def ports(port_dir: Path) -> list[dict[str, Any]]:
    """Every port record, by network and tap."""
    return sorted(records(port_dir).all(KIND), key=lambda r: (r["network"], r["tap"]))


# --- attach ----------------------------------------------------------------------------------
def attach(net: VmNetwork, port_dir: Path, *, name: str | None = None, mac: str | None = None,
           owner: int | None = None, group: int | None = None, multi_queue: bool = False) -> dict[str, Any]:
    """Create the port; returns its record. On any failure nothing of it is left."""
    mac = (mac or random_mac()).lower()
    name = name or default_tap_name(net.name, mac)
    cid, ifname = owner_of(name)
    store = records(port_dir)
    spec = net.spec
    with attachment_lock(spec.name, cid, ifname):
        if store.get(KIND, name) is not None:
            raise config_error(f"tap {name} is already a VM port", f"cni-bridge vm detach NETWORK --name {name}")
        with netlink.root() as host:
            if host.link(name) is not None:
                raise config_error(f"a link named {name} already exists on the host")
            bridge_created = host.link(spec.bridge) is None
        record = {"id": name, "tap": name, "network": net.name, "source": net.source, "bridge": spec.bridge,
                  "mac": mac, "host_mac": host_mac(mac), "addresses": [], "gateway": None,
                  "owner": owner, "group": group, "multi_queue": multi_queue,
                  "bridge_created": bridge_created, "status": CREATING, "since": time.time(),
                  "stores": [[s.store, str(s.data_dir)] for s in net.leases]}
        store.put(KIND, name, record)  # the claim comes first (see the module docstring)
        step("vm-port-recorded")
        undo = Undo()
        undo.push(lambda: store.delete(KIND, name))
        try:
            _attach(net, record, undo, store)
        except BaseException as exc:
            undo.fail(exc)
    _run_hooks(ATTACHED, net, record)
    return record


def _attach(net: VmNetwork, record: dict[str, Any], undo: Undo, store: StateStore) -> None:
    spec, name = net.spec, record["tap"]
    cid, ifname = owner_of(name)
    leases = []
    for source in net.leases:
        undo.push(lambda source=source: open_store(source.config.store, source.store).release(cid, ifname))
        leases += open_store(source.config.store, source.store).allocate(cid, ifname, source.config)
    addresses = addressing(leases, net.leases)
    with netlink.root() as host:
        port = bridge.setup_network(host, spec, addresses)
        if record["bridge_created"]:
            undo.push(lambda: remove_bridge_if_unused(net))
        if net.source == DOCKER:
            with network_lock(spec.name):  # a reboot may have taken them (see bridge.create_endpoint)
                firewall.network_rules(spec.name, spec.bridge, spec.internal, True)
        link = tap.make_tap(host, name, owner=record["owner"], group=record["group"],
                            multi_queue=record["multi_queue"], mac=record["host_mac"], mtu=spec.mtu,
                            master=port.index)
        undo.push(lambda: host.delete_link(name))
        step("tap-created")
        host.set_up(link.index, no_ipv6_addresses=True)
        step("tap-up")
        if spec.hairpin_mode:
            host.set_hairpin(link.index, True)
            step("hairpin")
        bridge.add_masquerade(spec, name, addresses, undo, forward=net.forward)
        bridge.ensure_isolation(spec, addresses)
    if spec.dhcp:
        _join_dhcp(net, record, addresses, undo)
    gateways = bridge.gateways(addresses)
    record.update(status=READY, addresses=[str(ip.address) for ip in addresses.ips],
                  gateway=str(next((g for g in gateways if g.version == 4), gateways[0])) if gateways else None,
                  routes=[str(r.dst) + (f" via {r.gw}" if r.gw else "") for r in addresses.routes])
    store.put(KIND, name, record)
    step("vm-port-ready")


def _join_dhcp(net: VmNetwork, record: dict[str, Any], addresses: Addressing, undo: Undo) -> None:
    """On a `dhcp: true` network the guest asks DHCP for its address: the network's server
    answers the guest's MAC with the port's IPv4 lease (and starts with its first entry). Its
    own address comes from the same store as the port's."""
    from cni_bridge import dhcp  # lazy: only dhcp networks
    info, ip = dhcp.network_info(net.spec, addresses), dhcp.ipv4_of(addresses)
    if info is None or ip is None:
        return  # no IPv4 lease: DHCPv4 has nothing to serve
    if net.source == DOCKER:
        lease_source = next(s for s in net.leases if s.config.set_of(ip.address.ip) is not None)
        source = dhcp.AddressSource(location(lease_source.config.store), lease_source.store, lease_source.config, docker=True)
    else:
        source = dhcp.for_cni(net.config)
    undo.push(lambda: dhcp.remove_host(net.spec.name, record["tap"]))
    dhcp.add_host(info, record["tap"], record["mac"], ip.address.ip, source)
    step("vm-dhcp-entry")


# --- detach ----------------------------------------------------------------------------------
def detach(net: VmNetwork, port_dir: Path, name: str) -> dict[str, Any] | None:
    """Remove the port `name` of `net`: tap, masquerade members, leases, record, and the bridge
    when this port's attach created it and nothing else uses it. Idempotent; returns the record
    it found (None: there was none, whatever was left of the port is gone now)."""
    cid, ifname = owner_of(name)
    store = records(port_dir)
    spec = net.spec
    with attachment_lock(spec.name, cid, ifname):
        record = store.get(KIND, name)
        if record is not None and record["network"] != net.name:
            raise config_error(f"tap {name} is a port of network {record['network']}, not of {net.name}")
        with netlink.root() as host:
            details = host.link_details(name)
            port = host.link(spec.bridge)
            if details is not None and details.tun is not None and \
                    (record is not None or (port is not None and details.link.master == port.index)):
                host.delete_link(name)
            elif details is not None and record is not None:
                raise PluginError(INTERNAL, f"{name} on the host is not a tap device; left alone")
        step("vm-tap-deleted")
        if spec.dhcp:
            from cni_bridge import dhcp  # lazy: only dhcp networks
            dhcp.remove_host(spec.name, name)
        if bridge.remove_masquerade(spec, name, forward=net.forward):  # the network's last member
            bridge.release_ports(spec)
            if net.forward:
                bridge.release_isolation(spec)  # nothing of the network is left
        step("masquerade-removed")
        for source in net.leases:
            open_store(source.config.store, source.store).release(cid, ifname)
        if record is not None and record.get("bridge_created"):
            remove_bridge_if_unused(net)
            step("vm-bridge-removed")
        store.delete(KIND, name)
        step("vm-port-forgotten")
    if record is not None:
        _run_hooks(DETACHED, net, record)
    return record


def remove_bridge_if_unused(net: VmNetwork) -> bool:
    """Delete the bridge (and release its uplink) when no port but the uplink is left on it."""
    spec = net.spec
    with network_lock(spec.name), netlink.root() as host:
        if host.link(spec.bridge) is None or bridge.bridge_in_use(host, spec):
            return False
        if spec.uplink:
            uplink.detach(host, spec)
        return host.delete_link(spec.bridge)


def _run_hooks(event: str, net: VmNetwork, record: dict[str, Any]) -> None:
    """A hook's failure is logged, never the port's: the port exists (or is gone) either way."""
    for hook in HOOKS:
        try:
            hook(event, net, record)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.warning("vm port %s %s: hook %s failed: %s", record["tap"], event, getattr(hook, "__name__", hook), exc)


__all__ = ["ATTACHED", "CREATING", "DEFAULT_PORT_DIR", "DETACHED", "HOOKS", "KIND", "READY", "attach", "detach",
           "owner_of", "ports", "records"]
