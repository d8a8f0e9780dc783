"""Bridge mode: a Linux bridge as the network's switch, one veth pair per container.

Also covers the Neutron-linuxbridge-style variants: `local` (no uplink, no masquerade), `flat`
(an uplink NIC enslaved to the bridge) and vlan (`<uplink>.<vlanId>` enslaved), see uplink.py,
and vxlan (a vxlan device `vx-<vni>` enslaved, joining the bridges of several hosts), see vxlan.py.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

from cni_bridge import firewall, shaping
from cni_bridge.attachment import Addressing, Attachment, IPAddress, build_result, interface_entry
from cni_bridge.config import NetworkSpec
from cni_bridge.crashpoint import step
from cni_bridge.errors import INTERNAL, PluginError, config_error
from cni_bridge.kernel import netlink
from cni_bridge.kernel.netlink import Link, Netlink
from cni_bridge.locks import network_lock
from cni_bridge.modes import uplink, vxlan
from cni_bridge.modes.common import (
    Lease,
    Undo,
    check_container,
    configure_container,
    container_interface,
    open_netns,
    require_free_ifname,
    with_default_routes,
)
from cni_bridge.overlay import registry


def masquerade(spec: NetworkSpec, addressing: Addressing | None = None, *,
               forward: bool = True) -> firewall.Masquerade:
    """The network's table: members always, the masquerade rule only with ipMasq.
    `forward=False`: the FORWARD accept rules are not tied to the table's life (the Docker
    driver keeps them for the network's whole life, containers or not)."""
    return firewall.Masquerade(spec.name, spec.bridge if forward else None,
                               addressing.subnets() if addressing else (), spec.ip_masq, spec.internal)


def ensure_gateway(host: Netlink, spec: NetworkSpec, bridge: Link, addressing: Addressing) -> None:
    """Put each family's gateway address on the bridge. An address of the same subnet that is
    not the gateway is a conflict: replaced with forceAddress, an error otherwise."""
    families = {ip.address.version for ip in addressing.ips if ip.gateway is not None}
    if not families:
        return
    # Only the families we need (the dump is of the bridge alone: see Netlink.addresses).
    existing = host.addresses(bridge.index, 0 if len(families) == 2 else (2 if 4 in families else 10))
    for ip in addressing.ips:
        if ip.gateway is None:
            continue
        wanted = ipaddress.ip_interface(f"{ip.gateway}/{ip.address.network.prefixlen}")
        if wanted in existing:
            continue
        for other in existing:
            if other.version == wanted.version and other.network.overlaps(wanted.network) \
                    and not other.ip.is_link_local:
                if not spec.force_address:
                    raise config_error(
                        f"bridge {spec.bridge} already has address {other}, which conflicts with "
                        f"gateway {wanted}", "set forceAddress to replace it")
                host.delete_address(bridge.index, other)
        host.add_address(bridge.index, wanted)


def enable_forwarding(host: Netlink, addressing: Addressing) -> None:
    for version in sorted({ip.address.version for ip in addressing.ips}):
        host.ensure_forwarding(version)


NET_ADDR_SET = "3"  # /sys/class/net/<dev>/addr_assign_type of a MAC set by someone


def pin_mac(host: Netlink, bridge: Link) -> bool:
    """A bridge whose MAC was never set takes its lowest port's MAC, so the gateway's MAC changes
    under every container's ARP cache when that container leaves. Setting the MAC to itself pins
    it (as the Go bridge does); done once per bridge, checked with one sysfs read per ADD.
    True when the MAC is pinned now (`bridge.mac` stays the bridge's MAC whatever ports come)."""
    try:
        with open(f"/sys/class/net/{bridge.name}/addr_assign_type") as f:
            if f.read().strip() == NET_ADDR_SET:
                return True
    except OSError:
        return False
    if bridge.mac:
        host.set_link(bridge.index, address=bridge.mac)
        return True
    return False


def ensure_bridge(host: Netlink, spec: NetworkSpec) -> Link:
    """The bridge; its `mac` is "" unless pinned (then it is final: the result reports it
    without asking the kernel again after the container's port joined)."""
    bridge = host.ensure_bridge(spec.bridge, spec.mtu, spec.promisc_mode)
    step("bridge")
    if not pin_mac(host, bridge):
        bridge = dataclasses.replace(bridge, mac="")
    step("bridge-mac-pinned")
    if spec.uplink:
        uplink.attach(host, spec, bridge)
        step("uplink")
    return bridge


def setup_network(host: Netlink, spec: NetworkSpec, addressing: Addressing) -> Link:
    """The per-network part of an attachment: bridge (+ uplink), gateway addresses, forwarding.
    Idempotent and cheap when already done: CNI runs it on every ADD, Docker at CreateNetwork
    and again at CreateEndpoint (a reboot or an operator may have removed the bridge)."""
    bridge = ensure_bridge(host, spec)
    if spec.is_gateway:
        ensure_gateway(host, spec, bridge, addressing)
        step("gateway-address")
        enable_forwarding(host, addressing)
        step("ip-forward-sysctl")
    return bridge


def gateways(addressing: Addressing) -> list[IPAddress]:
    return list(dict.fromkeys(ip.gateway for ip in addressing.ips if ip.gateway is not None))


def ensure_isolation(spec: NetworkSpec, addressing: Addressing) -> None:
    """`isolate`: the network's bridge in the shared isolation table (idempotent, re-done at
    every attachment so that a reboot or a firewall reload does not leave it open)."""
    if spec.isolate and spec.is_gateway:
        from cni_bridge.firewall import isolation  # lazy: only isolated networks
        isolation.isolate(spec.bridge, gateways(addressing))


def release_isolation(spec: NetworkSpec, gateway_list: list[IPAddress] = ()) -> None:
    if spec.isolate:
        from cni_bridge.firewall import isolation  # lazy: only isolated networks
        isolation.release(spec.bridge, gateway_list)


def add_masquerade(spec: NetworkSpec, owner: str, addressing: Addressing, undo: Undo, *,
                   forward: bool = True) -> None:
    """Put the attachment's addresses in the network's member sets (`owner`: the name of its
    port on the bridge, a host veth or a VM's tap),
    with or without ipMasq: the first member brings the network's FORWARD accept rules (hosts
    with a DROP policy), the last takes them away. An attachment without addresses is no member
    (an L2-only network on such a host needs its own FORWARD rule). Docker endpoints
    (`forward=False`: the rules live as long as the network) are members only to masquerade."""
    if addressing.ips and (spec.ip_masq or forward):
        with network_lock(spec.name):
            firewall.add_members(masquerade(spec, addressing, forward=forward), addressing.addresses(), owner)
        undo.push(lambda: remove_masquerade(spec, owner, forward=forward))
        step("masquerade")


def add(spec: NetworkSpec, att: Attachment, lease: Lease) -> dict[str, Any]:
    undo = Undo()
    with netlink.root() as host, open_netns(att) as ns:
        try:
            require_free_ifname(ns, att)  # before anything is leased or created
            spec = vxlan.with_mtu(host, spec)
            addressing = lease()
            bridge = setup_network(host, spec, addressing)
            host.delete_link(att.host_ifname)  # stale end of an earlier, crashed ADD
            veth = host.create_veth_into(att.host_ifname, att.ifname, ns, mtu=spec.mtu,
                                         master=bridge.index, peer_mac=att.mac)
            undo.push(lambda: host.delete_link(att.host_ifname))
            step("veth-into-netns")
            attach_vxlan(host, spec, bridge, att, undo)
            if spec.hairpin_mode:
                host.set_hairpin(veth.index, True)
                step("hairpin")
            if spec.bandwidth:
                shaping.apply(host, att, spec.bandwidth, undo)
            inner = ns.link(att.ifname)
            assert inner is not None
            addressing = with_default_routes(addressing, spec.is_default_gateway)
            configure_container(ns, inner.index, addressing,
                                allow_ipv6_on_ipv4=spec.allow_ipv6_on_ipv4_interface)
            return join_network(host, spec, att, addressing, undo, bridge, veth, inner.mac)
        except BaseException as exc:
            undo.fail(exc)


def join_network(host: Netlink, spec: NetworkSpec, att: Attachment, addressing: Addressing, undo: Undo,
                 bridge: Link, veth: Link, container_mac: str) -> dict[str, Any]:
    """The end of an ADD whose host veth is a port of `bridge` (bridge and tap modes): masquerade
    membership, isolation, and the result (bridge, host veth, the container's interface)."""
    add_masquerade(spec, att.host_ifname, addressing, undo)
    ensure_isolation(spec, addressing)
    record_vxlan(spec, att, container_mac, addressing, undo)
    interfaces = [interface_entry(bridge.name, bridge.mac or host.link(bridge.name).mac),
                  interface_entry(veth.name, veth.mac),
                  interface_entry(att.ifname, container_mac, att.netns)]
    return build_result(interfaces, 2, addressing)


def attach_vxlan(host: Netlink, spec: NetworkSpec, bridge: Link, att: Attachment, undo: Undo) -> None:
    """The network's vxlan port, after the attachment's own port is on the bridge: the last
    DEL removes the device when the bridge has no other port (under the VNI's lock), so an ADD
    that made its port first always finds or re-creates it."""
    if spec.vxlan is None:
        return
    vxlan.attach(host, spec, bridge)
    undo.push(lambda: (host.delete_link(att.host_ifname), vxlan.release(host, spec)))
    step("vxlan")


def record_vxlan(spec: NetworkSpec, att: Attachment, mac: str, addressing: Addressing, undo: Undo) -> None:
    """What this host publishes for the VNI (overlay/registry.py): the attachment's MAC and IPs,
    put in etcd at once when the network's store is etcd (overlay/distribute.py)."""
    if spec.vxlan is None:
        return
    entry = registry.record(spec, att, mac, addressing.addresses())
    undo.push(lambda: registry.forget(spec, att))
    step("vxlan-registry")
    store = registry.etcd_store(spec)
    if store is not None:
        from cni_bridge.overlay import distribute  # lazy: only vxlan networks on an etcd store (threading)
        undo.push(lambda: distribute.publish(store, spec.vxlan.vni, str(spec.vxlan.local), att.host_ifname, None))
        distribute.publish(store, spec.vxlan.vni, str(spec.vxlan.local), att.host_ifname, entry)
        step("vxlan-published")


def withdraw_vxlan(spec: NetworkSpec, att: Attachment) -> None:
    """The attachment leaves the registry and (etcd store) the published endpoints."""
    registry.forget(spec, att)
    step("vxlan-registry-removed")
    store = registry.etcd_store(spec)
    if store is not None:
        from cni_bridge.overlay import distribute  # lazy: as in record_vxlan
        distribute.publish(store, spec.vxlan.vni, str(spec.vxlan.local), att.host_ifname, None)


def release_vxlan(host: Netlink, spec: NetworkSpec, att: Attachment) -> None:
    """The attachment leaves the registry; the bridge's last user takes the vxlan device."""
    if spec.vxlan is None:
        return
    withdraw_vxlan(spec, att)
    vxlan.release(host, spec)
    step("vxlan-released")


def remove_masquerade(spec: NetworkSpec, owner: str, addresses: list[IPAddress] = (), *,
                      forward: bool = True) -> bool:
    """True when that was the network's last member (its table went)."""
    with network_lock(spec.name):
        return firewall.remove_members(masquerade(spec, forward=forward), owners=[owner], addrs=addresses)


def delete(spec: NetworkSpec, att: Attachment, addresses: list[IPAddress]) -> None:
    """Idempotent; needs neither the netns nor the container's interface."""
    with netlink.root() as host:
        host.delete_link(att.host_ifname)
        step("host-veth-deleted")
        if spec.bandwidth is not None:  # configured now or maybe at ADD (shaping.Bandwidth)
            shaping.remove(host, att)
        release_vxlan(host, spec, att)
    if remove_masquerade(spec, att.host_ifname, addresses):
        release_isolation(spec)  # the network's last container: nothing of it is left
        release_ports(spec)
    step("masquerade-removed")


def check(spec: NetworkSpec, att: Attachment, prev: dict[str, Any]) -> None:
    addressing = Addressing.from_result(prev)
    entry = container_interface(prev, att.ifname, att.netns)
    with open_netns(att) as ns:
        check_container(ns, att.ifname, entry.get("mac"), addressing)
    check_host_side(spec, att.host_ifname, addressing)
    if spec.bandwidth:
        with netlink.root() as host:
            shaping.check(host, att, spec.bandwidth)


def check_host_side(spec: NetworkSpec, port: str, addressing: Addressing) -> None:
    """The bridge exists, `port` is one of its ports, and (ipMasq) the addresses are members."""
    with netlink.root() as host:
        bridge = host.link(spec.bridge)
        if bridge is None:
            raise PluginError(INTERNAL, f"bridge {spec.bridge} not found")
        link = host.link(port)
        if link is None or link.master != bridge.index:
            raise PluginError(INTERNAL, f"host interface {port} missing or not on bridge {spec.bridge}")
        if spec.vxlan is not None and not vxlan.is_port(host, spec, bridge):
            raise PluginError(INTERNAL, f"vxlan device {vxlan.device_name(spec.vxlan.vni)} missing or not on "
                                        f"bridge {spec.bridge}")
    if spec.ip_masq:
        missing = set(addressing.addresses()) - set(firewall.members(spec.name))
        if missing:
            raise PluginError(INTERNAL, "masquerade entry missing for " + ", ".join(map(str, sorted(missing, key=str))))


def gc(spec: NetworkSpec, valid: set[tuple[str, str]]) -> None:
    """Drop member entries whose owner is not a valid attachment (spec 1.1 GC)."""
    keep = {Attachment(cid, ifname, None).host_ifname for cid, ifname in valid}
    with network_lock(spec.name):
        stale = {owner for owner in firewall.members(spec.name).values() if owner not in keep}
        if stale and firewall.remove_members(masquerade(spec), owners=stale):
            release_ports(spec)
    if spec.vxlan is not None:  # records of attachments the runtime no longer has; an unused device
        registry.prune(spec, keep)
        with netlink.root() as host:
            vxlan.release(host, spec)


# --- Docker (libnetwork remote driver) ---------------------------------------------------------
# Docker splits the life cycle differently from CNI: the network exists before and after its
# containers, and Docker moves the container end into the sandbox itself (Join returns its name).
# Same building blocks as add(); the FORWARD accept rules live as long as the network.

def create_network(spec: NetworkSpec, addressing: Addressing) -> dict[str, Any]:
    """CreateNetwork: bridge (+ uplink), gateway addresses, forwarding, FORWARD accept (and the
    drops of an internal network). Returns
    what was created, for delete_network; on failure nothing is left behind."""
    undo = Undo()
    uplink_attached = vxlan_attached = False
    with netlink.root() as host:
        try:
            spec = vxlan.with_mtu(host, spec)
            bridge_created = host.link(spec.bridge) is None
            bridge = host.ensure_bridge(spec.bridge, spec.mtu, spec.promisc_mode)
            if bridge_created:
                undo.push(lambda: host.delete_link(spec.bridge))
            pin_mac(host, bridge)
            if spec.uplink:
                uplink_attached = not uplink.is_port(host, spec, bridge)  # else someone else's port
                if uplink_attached:
                    undo.push(lambda: uplink.detach(host, spec))
                uplink.attach(host, spec, bridge)
            if spec.vxlan:
                vxlan_attached = not vxlan.is_port(host, spec, bridge)
                vxlan.attach(host, spec, bridge)
                if vxlan_attached:
                    undo.push(lambda: vxlan.release(host, spec))
            before = set(host.addresses(bridge.index))
            if spec.is_gateway:
                ensure_gateway(host, spec, bridge, addressing)
                enable_forwarding(host, addressing)
            added = [a for a in host.addresses(bridge.index) if a not in before]
            undo.push(lambda: [host.delete_address(bridge.index, a) for a in added])
            undo.push(lambda: firewall.network_rules(spec.name, spec.bridge, spec.internal, False))
            firewall.network_rules(spec.name, spec.bridge, spec.internal, True)
            undo.push(lambda: release_isolation(spec, gateways(addressing)))
            ensure_isolation(spec, addressing)
        except BaseException as exc:
            undo.fail(exc)
    return {"bridge_created": bridge_created, "uplink_attached": uplink_attached, "vxlan_attached": vxlan_attached,
            "addresses": [str(a) for a in added], "gateways": [str(g) for g in gateways(addressing)]}


def delete_network(spec: NetworkSpec, created: dict[str, Any]) -> None:
    """DeleteNetwork: undo create_network (idempotent). A bridge that existed before keeps
    everything it had; only the addresses we added are removed from it. A bridge that other
    ports still use (a CNI network on the same bridge) keeps its uplink and gateway address too:
    removing either would cut those containers off."""
    with network_lock(spec.name):
        firewall.delete_table(spec.name, spec.bridge, spec.internal)
    forget_ports(spec)
    release_isolation(spec, [ipaddress.ip_address(g) for g in created.get("gateways", [])])
    with netlink.root() as host:
        if bridge_in_use(host, spec):
            return
        # Records written before "uplink_attached" existed: the port was ours if the bridge was.
        if spec.uplink and created.get("uplink_attached", created.get("bridge_created", False)):
            uplink.detach(host, spec)
        if created.get("vxlan_attached"):
            vxlan.release(host, spec)
        if created.get("bridge_created"):
            host.delete_link(spec.bridge)
            return
        bridge = host.link(spec.bridge)
        if bridge is not None:
            for address in created.get("addresses", []):
                host.delete_address(bridge.index, ipaddress.ip_interface(address))


def bridge_in_use(host: Netlink, spec: NetworkSpec) -> bool:
    """After the network's own endpoints are gone: does the bridge still have ports besides the
    network's uplink? Then something else uses it (a CNI network on the same bridge and range,
    see `--ipam-opt network=NAME`)."""
    bridge = host.link(spec.bridge)
    if bridge is None:
        return False
    uplink_ports = set()
    if spec.uplink:
        uplink_ports.add(spec.uplink if spec.vlan_id is None else uplink.vlan_port_name(spec.uplink, spec.vlan_id))
    if spec.vxlan:
        uplink_ports.add(vxlan.device_name(spec.vxlan.vni))
    return any(link.master == bridge.index and link.name not in uplink_ports for link in host.links())


def create_endpoint(spec: NetworkSpec, att: Attachment, addressing: Addressing, src_name: str) -> str:
    """CreateEndpoint: a veth pair with both ends on the host, `att.host_ifname` enslaved to the
    bridge, `src_name` for Docker to move into the container; masquerade membership. Returns
    the MAC of `src_name` (att.mac when given)."""
    undo = Undo()
    with netlink.root() as host:
        try:
            spec = vxlan.with_mtu(host, spec)
            bridge = setup_network(host, spec, addressing)
            # Idempotent, and re-done on every endpoint: after a reboot, a firewall reload or a
            # DROP policy set after CreateNetwork, the rules would otherwise be missing for good.
            with network_lock(spec.name):
                firewall.network_rules(spec.name, spec.bridge, spec.internal, True)
            ensure_isolation(spec, addressing)
            host.delete_link(att.host_ifname)  # stale pair of a crashed CreateEndpoint
            host.delete_link(src_name)
            veth = host.create_veth_pair(att.host_ifname, src_name, mtu=spec.mtu, master=bridge.index,
                                         peer_mac=att.mac)
            undo.push(lambda: host.delete_link(att.host_ifname))
            step("veth-pair")
            if spec.vxlan is not None:  # the device lives as long as the network: no undo
                vxlan.attach(host, spec, bridge)
                step("vxlan")
            if spec.hairpin_mode:
                host.set_hairpin(veth.index, True)
                step("hairpin")
            if spec.bandwidth:
                shaping.apply(host, att, spec.bandwidth, undo)
            peer = host.link(src_name)
            if peer is None:
                raise PluginError(INTERNAL, f"veth peer {src_name} vanished right after creation")
            add_masquerade(spec, att.host_ifname, addressing, undo, forward=False)
            record_vxlan(spec, att, peer.mac, addressing, undo)
            return peer.mac
        except BaseException as exc:
            undo.fail(exc)


def delete_endpoint(spec: NetworkSpec, att: Attachment, addresses: list[IPAddress], src_name: str) -> None:
    """DeleteEndpoint: idempotent; the pair may already be gone with the container's netns."""
    with netlink.root() as host:
        if not host.delete_link(att.host_ifname):
            host.delete_link(src_name)  # Docker moved it back under its SrcName after Leave
        if spec.bandwidth is not None:
            shaping.remove(host, att)
    if spec.vxlan is not None:
        withdraw_vxlan(spec, att)  # the device lives as long as the Docker network
    if spec.ip_masq and remove_masquerade(spec, att.host_ifname, addresses, forward=False):
        release_ports(spec)


# --- published ports (both front ends) ---------------------------------------------------------
# The DNAT itself is firewall/portmap.py; what the mode adds is the bridge side: the owner tag
# (network + host veth), the network's subnets for the hairpin masquerade, and hairpin mode on
# the container's bridge port (with br_netfilter, a container's connection to its own published
# port is DNATed while bridged and must leave through the port it came in).
# Imported lazily: an ADD without port mappings never loads firewall.portmap.

def publish(spec: NetworkSpec, host_ifname: str, subnets: list, mappings: list) -> list:
    """Publish `mappings` (firewall.portmap.PortMapping) for the attachment whose host veth is
    `host_ifname`; all or nothing. Returns them with the host ports chosen for "any port"."""
    from cni_bridge.firewall import portmap  # lazy: only attachments with published ports
    made = portmap.publish(portmap.owner_tag(spec.name, host_ifname), spec.bridge, subnets, mappings)
    step("ports-published")
    try:
        with netlink.root() as host:
            veth = host.link(host_ifname)
            if veth is None:
                raise PluginError(INTERNAL, f"cannot publish ports: host interface {host_ifname} is gone")
            host.set_hairpin(veth.index, True)
            step("ports-hairpin")
    except BaseException:
        portmap.unpublish(portmap.owner_tag(spec.name, host_ifname))
        raise
    return made


def unpublish(spec: NetworkSpec, host_ifname: str, known: list = ()) -> list:
    """Remove the attachment's published ports (idempotent); returns what was removed.
    `known`: the mappings it was given, if the caller knows them (removed by key: flat cost)."""
    from cni_bridge.firewall import portmap  # lazy: only attachments with published ports
    removed = portmap.unpublish(portmap.owner_tag(spec.name, host_ifname), known, spec.bridge)
    if removed:
        step("ports-unpublished")
    return removed


def release_ports(spec: NetworkSpec) -> None:
    """The network's last member left: its entries in the shared ports table go, and the table
    with them when nothing else needs it (a keyed read when the network never published)."""
    from cni_bridge.firewall import portmap  # lazy: only attachments with published ports
    if portmap.release_network(spec.bridge):
        step("ports-released")


def forget_ports(spec: NetworkSpec) -> None:
    """The network is going: its leftover mappings and its entries in the shared ports table."""
    from cni_bridge.firewall import portmap  # lazy: only attachments with published ports
    portmap.drop_network(spec.name, spec.bridge)


def published(spec: NetworkSpec, host_ifname: str) -> list:
    from cni_bridge.firewall import portmap  # lazy: only attachments with published ports
    owner = portmap.owner_tag(spec.name, host_ifname)
    return [m for o, m in portmap.published(owner) if o == owner]
