"""Bridge mode: a Linux bridge as the network's switch, one veth pair per container.

Also covers the Neutron-linuxbridge-style variants: `local` (no uplink, no masquerade), `flat`
(an uplink NIC enslaved to the bridge) and vlan (`<uplink>.<vlanId>` enslaved), see uplink.py.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from cni_bridge import firewall, netlink
from cni_bridge.attachment import Addressing, Attachment, IPAddress, build_result, interface_entry
from cni_bridge.config import NetworkSpec
from cni_bridge.errors import PluginError, INTERNAL, config_error
from cni_bridge.locks import network_lock
from cni_bridge.modes.common import (Undo, check_container, configure_container, container_interface,
                                     open_netns, with_default_routes)
from cni_bridge.netlink import Link, Netlink


def masquerade(spec: NetworkSpec, addressing: Addressing | None = None) -> firewall.Masquerade:
    return firewall.Masquerade(spec.name, spec.bridge, addressing.subnets() if addressing else ())


def ensure_gateway(host: Netlink, spec: NetworkSpec, bridge: Link, addressing: Addressing) -> None:
    """Put each family's gateway address on the bridge. An address of the same subnet that is
    not the gateway is a conflict: replaced with forceAddress, an error otherwise."""
    existing = host.addresses(bridge.index)
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


def enable_forwarding(addressing: Addressing) -> None:
    versions = {ip.address.version for ip in addressing.ips}
    if 4 in versions:
        netlink.ensure_sysctl("net.ipv4.ip_forward", "1")
    if 6 in versions:
        netlink.ensure_sysctl("net.ipv6.conf.all.forwarding", "1")


def ensure_bridge(host: Netlink, spec: NetworkSpec) -> Link:
    bridge = host.ensure_bridge(spec.bridge, spec.mtu, spec.promisc_mode)
    if spec.uplink:
        from cni_bridge.modes import uplink  # flat / vlan uplinks: only loaded when used
        uplink.attach(host, spec, bridge)
    return bridge


def add(spec: NetworkSpec, att: Attachment, addressing: Addressing) -> dict[str, Any]:
    undo = Undo()
    with netlink.root() as host, open_netns(att) as ns:
        try:
            bridge = ensure_bridge(host, spec)
            if spec.is_gateway:
                ensure_gateway(host, spec, bridge, addressing)
                enable_forwarding(addressing)
            if ns.link(att.ifname) is not None:
                raise PluginError(INTERNAL, f"container already has an interface named {att.ifname}")
            host.delete_link(att.host_ifname)  # stale end of an earlier, crashed ADD
            veth = host.create_veth_into(att.host_ifname, att.ifname, ns, mtu=spec.mtu,
                                         master=bridge.index, peer_mac=att.mac)
            undo.push(lambda: host.delete_link(att.host_ifname))
            if spec.hairpin_mode:
                host.set_hairpin(veth.index, True)
            inner = ns.link(att.ifname)
            assert inner is not None
            addressing = with_default_routes(addressing, spec.is_default_gateway)
            configure_container(ns, inner.index, addressing)
            if spec.ip_masq and addressing.ips:
                with network_lock(spec.name):
                    firewall.add_members(masquerade(spec, addressing), addressing.addresses(), att.host_ifname)
                undo.push(lambda: remove_masquerade(spec, att))
            interfaces = [interface_entry(bridge.name, host.link(bridge.name).mac),
                          interface_entry(veth.name, veth.mac),
                          interface_entry(att.ifname, inner.mac, att.netns)]
            return build_result(interfaces, 2, addressing)
        except netlink.NetlinkError as exc:
            undo.run()
            raise PluginError(INTERNAL, "netlink request failed", netlink.netlink_error_text(exc)) from None
        except BaseException:
            undo.run()
            raise


def remove_masquerade(spec: NetworkSpec, att: Attachment, addresses: list[IPAddress] = ()) -> None:
    with network_lock(spec.name):
        firewall.remove_members(masquerade(spec), owners=[att.host_ifname], addrs=addresses)


def delete(spec: NetworkSpec, att: Attachment, addresses: list[IPAddress]) -> None:
    """Idempotent; needs neither the netns nor the container's interface."""
    with netlink.root() as host:
        host.delete_link(att.host_ifname)
    if spec.ip_masq:
        remove_masquerade(spec, att, addresses)


def check(spec: NetworkSpec, att: Attachment, prev: dict[str, Any]) -> None:
    addressing = Addressing.from_result(prev)
    entry = container_interface(prev, att.ifname, att.netns)
    with open_netns(att) as ns:
        check_container(ns, att.ifname, entry.get("mac"), addressing)
    with netlink.root() as host:
        bridge = host.link(spec.bridge)
        if bridge is None:
            raise PluginError(INTERNAL, f"bridge {spec.bridge} not found")
        veth = host.link(att.host_ifname)
        if veth is None or veth.master != bridge.index:
            raise PluginError(INTERNAL, f"host interface {att.host_ifname} missing or not on bridge {spec.bridge}")
    if spec.ip_masq:
        missing = set(addressing.addresses()) - set(firewall.members(spec.name))
        if missing:
            raise PluginError(INTERNAL, "masquerade entry missing for " + ", ".join(map(str, sorted(missing, key=str))))


def gc(spec: NetworkSpec, valid: set[tuple[str, str]]) -> None:
    """Drop masquerade entries whose owner is not a valid attachment (spec 1.1 GC)."""
    if not spec.ip_masq:
        return
    keep = {Attachment(cid, ifname, None).host_ifname for cid, ifname in valid}
    with network_lock(spec.name):
        stale = {owner for owner in firewall.members(spec.name).values() if owner not in keep}
        if stale:
            firewall.remove_members(masquerade(spec), owners=stale)
