"""The vxlan port of a bridge network that spans hosts (Neutron linuxbridge's vxlan segment).

`vxlan: {"vni": N, "local": <underlay address>, ...}` -> a vxlan device `vx-<N>` becomes a port
of the network's bridge, so the same bridge on every host is one layer-2 segment. Its life cycle
is an uplink's (uplink.py): made and enslaved with the bridge's first attachment (`attach`,
idempotent, a read-only fast path and a slow path under a per-VNI lock), found by its
deterministic name without the container's netns, and removed when the bridge's last user goes
(`release`, from CNI DEL and Docker DeleteNetwork). Its FDB and neighbour entries die with it.

Peers: with `group` the kernel floods to the multicast group and learns remote MACs. Without
it (underlays without multicast) the device does not learn and answers ARP/ND from its
neighbour table; cni_bridge/overlay/ keeps both tables equal to the remote endpoints.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
from dataclasses import replace
from typing import Iterator

from cni_bridge.config import NetworkSpec, VxlanSpec
from cni_bridge.errors import INTERNAL, PluginError, config_error
from cni_bridge.kernel import netlink
from cni_bridge.kernel.netlink import Link, Netlink, VxlanDetails
from cni_bridge.locks import network_lock

PREFIX = "vx-"
DEFAULT_UNDERLAY_MTU = 1500  # without `dev` the underlay is whatever the route picks: assume Ethernet


def device_name(vni: int) -> str:
    """`vx-<vni>`: at most 11 bytes (VNIs have 24 bits), so always within IFNAMSIZ."""
    return f"{PREFIX}{vni}"


@contextlib.contextmanager
def _vni_lock(vni: int) -> Iterator[None]:
    """Serialises the slow path and the teardown per VNI (two networks racing for one VNI, an
    ADD that re-creates the device while the last DEL removes it)."""
    with network_lock(f"vxlan.{vni}"):
        yield


def _underlay(host: Netlink, vx: VxlanSpec) -> Link | None:
    if vx.dev is None:
        return None
    link = host.link(vx.dev)
    if link is None:
        raise config_error(f"vxlan.dev {vx.dev} (the underlay NIC) not found on the host")
    return link


def with_mtu(host: Netlink, spec: NetworkSpec) -> NetworkSpec:
    """The spec with the containers' MTU filled in: `mtu` (or `vxlan.mtu`) when set, else the
    underlay's MTU minus the encapsulation overhead (50 bytes over IPv4, 70 over IPv6), so a
    full-size container frame still fits in one underlay packet (vxlan never fragments)."""
    if spec.vxlan is None or spec.mtu is not None:
        return spec
    under = _underlay(host, spec.vxlan)
    return replace(spec, mtu=(under.mtu if under else DEFAULT_UNDERLAY_MTU) - spec.vxlan.overhead)


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    return ipaddress.ip_address(text) if text else None


def _is_ours(details: VxlanDetails, vx: VxlanSpec, dev: Link | None) -> bool:
    """Compared as addresses: the kernel's spelling of an IPv6 address need not be the user's."""
    return (details.vni == vx.vni and _address(details.local) == vx.local and details.port == vx.port
            and _address(details.group) == vx.group and (dev is None or details.dev == dev.index))


def is_port(host: Netlink, spec: NetworkSpec, bridge: Link) -> bool:
    """Is the network's vxlan device already a port of `bridge`? (Docker: whose port it is.)"""
    link = host.link(device_name(spec.vxlan.vni)) if spec.vxlan else None
    return link is not None and link.master == bridge.index


def attach(host: Netlink, spec: NetworkSpec, bridge: Link) -> None:
    """Make the vxlan device a port of `bridge`, up; idempotent. `spec.mtu` must be set
    (with_mtu). Refuses a device of that name with other parameters, one enslaved to another
    bridge (the VNI belongs to another network), and a bridge with a vxlan port of another VNI."""
    vx = spec.vxlan
    assert vx is not None and spec.mtu is not None
    # The fast path reads the device's parameters too (one RTM_GETLINK): a configuration whose
    # port, local address or group changed must fail, not use the old device silently.
    details = host.vxlan_details(device_name(vx.vni))
    if details is not None and details.link.master == bridge.index and details.link.up \
            and _is_ours(details, vx, _underlay(host, vx)):
        return
    with _vni_lock(vx.vni):
        _attach(host, spec, vx, bridge)


def _attach(host: Netlink, spec: NetworkSpec, vx: VxlanSpec, bridge: Link) -> None:
    name = device_name(vx.vni)
    dev = _underlay(host, vx)
    details = host.vxlan_details(name)
    if details is None:
        other = next((d for d in host.all_vxlan_details() if d.link.master == bridge.index), None)
        if other is not None:
            raise config_error(f"bridge {bridge.name} already has vxlan port {other.link.name} (VNI {other.vni})",
                               "one VNI per bridge: give each vxlan network its own bridge")
        try:
            host.add_vxlan(name, vni=vx.vni, local=str(vx.local), port=vx.port, dev=dev.index if dev else None,
                           group=str(vx.group) if vx.group else None, mtu=spec.mtu or 0, master=bridge.index)
        except netlink.NetlinkError as exc:
            raise _create_error(vx, name, exc) from None
        details = host.vxlan_details(name)
        if details is None:
            raise PluginError(11, f"vxlan device {name} vanished while being created, try again")
    elif not _is_ours(details, vx, dev):
        raise config_error(f"{name} exists but is not vxlan VNI {vx.vni} from {vx.local} port {vx.port}"
                           + (f" group {vx.group}" if vx.group else "") + (f" dev {vx.dev}" if vx.dev else ""),
                           "another network uses this VNI with other parameters; delete the device or "
                           "make the configurations agree")
    elif details.link.master is not None and details.link.master != bridge.index:
        owner = host.link_by_index(details.link.master)
        raise config_error(f"VNI {vx.vni} is already a port of bridge {owner.name if owner else details.link.master}",
                           f"it cannot also join bridge {bridge.name}")
    elif details.link.master != bridge.index:
        host.set_link(details.link.index, master=bridge.index)
    if not details.link.up:
        host.set_up(details.link.index, no_ipv6_addresses=True)


def _create_error(vx: VxlanSpec, name: str, exc: netlink.NetlinkError) -> PluginError:
    text = netlink.netlink_error_text(exc)
    if exc.code == errno.EOPNOTSUPP:
        return config_error("this kernel has no vxlan support (CONFIG_VXLAN / module vxlan missing)", text)
    if exc.code == errno.EEXIST:
        return config_error(f"a vxlan device for VNI {vx.vni} port {vx.port} exists under another name than "
                            f"{name}", text)
    if exc.code in (errno.EINVAL, errno.EADDRNOTAVAIL, errno.EPFNOSUPPORT):
        return config_error(f"the kernel refused vxlan device {name} (VNI {vx.vni}, local {vx.local})", text)
    return PluginError(INTERNAL, f"cannot create vxlan device {name}", text)


def release(host: Netlink, spec: NetworkSpec) -> bool:
    """Delete the network's vxlan device when nothing else is on its bridge (or the bridge is
    gone and the device is enslaved nowhere). True when it was deleted. Idempotent; leaves a
    device of another VNI's parameters, or one on another bridge, alone."""
    if spec.vxlan is None:
        return False
    return release_unused(host, spec.vxlan.vni, spec.bridge)


def release_unused(host: Netlink, vni: int, bridge_name: str) -> bool:
    """The core of `release`, also for `cni-bridge gc` (which knows the bridge, not the spec)."""
    name = device_name(vni)
    with _vni_lock(vni):
        details = host.vxlan_details(name)
        if details is None or details.vni != vni:
            return False
        bridge = host.link(bridge_name)
        if bridge is not None and details.link.master == bridge.index:
            if any(link.master == bridge.index and link.index != details.link.index for link in host.links()):
                return False
        elif details.link.master is not None:
            return False
        return host.delete_link(name)
