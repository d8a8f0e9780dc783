"""Uplinks of bridge networks, in the style of OpenStack Neutron's linuxbridge agent.

* flat: `uplink: <nic>` -> the NIC itself becomes a port of the network's bridge, so containers
  share the NIC's layer-2 segment (no NAT needed: give them addresses of that segment).
* vlan: `uplink: <nic>` + `vlanId: N` -> an 802.1q sub-interface `<nic>.<N>` becomes the port,
  so every VLAN id has its own bridge; networks on different ids are isolated at layer 2 and the
  same id on two hosts (NICs on one trunk) is one segment.
* local (no uplink, no ipMasq) needs nothing here.

`attach` runs on every ADD of such a network (from bridge.ensure_bridge): a fast path that only
reads, and a slow path under a per-NIC lock that refuses to steal a NIC from another bridge or
bond, or to enslave a NIC that carries addresses (enslaving takes them out of service and would
cut the host off; move them to the bridge first). `detach` undoes it at network teardown.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
from typing import Iterator

from cni_bridge.config import NetworkSpec
from cni_bridge.errors import INTERNAL, PluginError, config_error
from cni_bridge.kernel import netlink
from cni_bridge.kernel.netlink import Link, LinkDetails, Netlink
from cni_bridge.locks import network_lock

IFNAMSIZ = 15


def vlan_port_name(nic: str, vlan_id: int) -> str:
    """`<nic>.<id>` when it fits in 15 bytes, else a shortened NIC name plus 4 hex digits of its
    hash (deterministic, so every ADD and the teardown find the same port)."""
    name = f"{nic}.{vlan_id}"
    if len(name.encode()) <= IFNAMSIZ:
        return name
    suffix = f".{vlan_id}"
    digest = hashlib.sha256(nic.encode()).hexdigest()[:4]
    return nic[:IFNAMSIZ - len(suffix) - len(digest)] + digest + suffix


@contextlib.contextmanager
def _nic_lock(nic: str) -> Iterator[None]:
    """Serialises the slow path per NIC across networks (two networks racing for one NIC)."""
    with network_lock(f"uplink.{nic}"):
        yield


def _nic(host: Netlink, spec: NetworkSpec) -> Link:
    nic = host.link(spec.uplink or "")
    if nic is None:
        raise config_error(f"uplink {spec.uplink} of network {spec.name} not found on the host")
    return nic


def _name_of(host: Netlink, index: int | None) -> str:
    link = host.link_by_index(index) if index else None
    return link.name if link else f"interface #{index}"


def _is_vlan_of(details: LinkDetails, nic: Link, vlan_id: int) -> bool:
    return (details.link.kind == "vlan" and details.vlan_id == vlan_id
            and details.parent == nic.index and details.parent_netnsid is None)


def is_port(host: Netlink, spec: NetworkSpec, bridge: Link) -> bool:
    """Is the uplink (flat NIC or VLAN sub-interface) already a port of `bridge`? Read-only: the
    Docker driver asks before attaching, to remember whether the port is its own to remove."""
    nic = host.link(spec.uplink or "")
    if nic is None:
        return False
    port = nic if spec.vlan_id is None else host.link(vlan_port_name(nic.name, spec.vlan_id))
    return port is not None and port.master == bridge.index


def attach(host: Netlink, spec: NetworkSpec, bridge: Link) -> None:
    """Make the uplink (flat NIC or VLAN sub-interface) a port of `bridge`; idempotent."""
    nic = _nic(host, spec)
    if spec.vlan_id is None:
        if nic.master == bridge.index and nic.up:
            return
        with _nic_lock(nic.name):
            _attach_flat(host, spec, bridge, _nic(host, spec))
        return
    port = host.link(vlan_port_name(nic.name, spec.vlan_id))
    if port is not None and port.master == bridge.index and port.up and nic.up:
        return
    with _nic_lock(nic.name):
        _attach_vlan(host, spec, bridge, _nic(host, spec))


def _refuse_foreign_master(host: Netlink, what: str, link: Link, bridge: Link) -> None:
    if link.master is not None and link.master != bridge.index:
        raise config_error(f"{what} {link.name} is already enslaved to {_name_of(host, link.master)}",
                           f"it cannot also be the uplink of bridge {bridge.name}")


def _attach_flat(host: Netlink, spec: NetworkSpec, bridge: Link, nic: Link) -> None:
    if nic.index == bridge.index or nic.kind == "bridge":
        raise config_error(f"uplink {nic.name} is a bridge; name a NIC (or a VLAN/bond device)")
    _refuse_foreign_master(host, "uplink", nic, bridge)
    if nic.master != bridge.index:
        addresses = [a for a in host.addresses(nic.index) if not a.ip.is_link_local]
        if addresses:
            raise config_error(
                f"uplink {nic.name} has addresses ({', '.join(map(str, addresses))}); enslaving it to "
                f"bridge {bridge.name} would take them out of service",
                "move them to the bridge, or use a NIC without addresses")
        _netlink(lambda: host.set_link(nic.index, master=bridge.index),
                 f"cannot enslave uplink {nic.name} to bridge {bridge.name}")
    if not nic.up:
        host.set_up(nic.index)


def _attach_vlan(host: Netlink, spec: NetworkSpec, bridge: Link, nic: Link) -> None:
    assert spec.vlan_id is not None
    name = vlan_port_name(nic.name, spec.vlan_id)
    if not nic.up:
        host.set_up(nic.index)
    details = host.link_details(name)
    if details is None:
        try:
            host.add_link(ifname=name, kind="vlan", link=nic.index, vlan_id=spec.vlan_id,
                          master=bridge.index, state="up")
        except netlink.NetlinkError as exc:
            raise _vlan_error(spec, nic, name, exc) from None
        return
    if not _is_vlan_of(details, nic, spec.vlan_id):
        raise config_error(f"{name} exists but is not VLAN {spec.vlan_id} of {nic.name}",
                           "rename or delete it, or pick another uplink/vlanId")
    _refuse_foreign_master(host, "VLAN uplink", details.link, bridge)
    if details.link.master != bridge.index:
        _netlink(lambda: host.set_link(details.link.index, master=bridge.index),
                 f"cannot enslave {name} to bridge {bridge.name}")
    if not details.link.up:
        host.set_up(details.link.index)


def _vlan_error(spec: NetworkSpec, nic: Link, name: str, exc: netlink.NetlinkError) -> PluginError:
    text = netlink.netlink_error_text(exc)
    if exc.code == errno.EOPNOTSUPP:
        return config_error("this kernel has no 802.1q VLAN support (CONFIG_VLAN_8021Q / module 8021q "
                            f"missing), or {nic.name} cannot carry VLANs", text)
    if exc.code == errno.EEXIST:
        return config_error(f"{nic.name} already has VLAN {spec.vlan_id} under another name than {name}",
                            text)
    return PluginError(INTERNAL, f"cannot create VLAN uplink {name}", text)


def _netlink(step, what: str) -> None:
    try:
        step()
    except netlink.NetlinkError as exc:
        raise config_error(what, netlink.netlink_error_text(exc)) from None


def detach(host: Netlink, spec: NetworkSpec) -> None:
    """Network teardown (the Docker driver's DeleteNetwork, when it made the port and nothing
    else uses the bridge: the uplink stays as long as other ports do): release a flat NIC from
    the bridge (never delete it) and delete the VLAN sub-interface when it is enslaved to this
    bridge, or the bridge is already gone and it is enslaved nowhere. Idempotent; leaves foreign
    links alone."""
    if not spec.uplink:
        return
    bridge = host.link(spec.bridge)
    bridge_index = bridge.index if bridge is not None else None
    nic = host.link(spec.uplink)
    if nic is None:  # a deleted NIC took its VLAN sub-interfaces with it
        return
    with _nic_lock(nic.name):
        if spec.vlan_id is None:
            nic = host.link(spec.uplink)
            if nic is not None and bridge_index is not None and nic.master == bridge_index:
                host.set_link(nic.index, master=0)
            return
        details = host.link_details(vlan_port_name(nic.name, spec.vlan_id))
        if details is not None and _is_vlan_of(details, nic, spec.vlan_id) \
                and details.link.master == bridge_index:
            host.delete_link(details.link.name)
