"""gc's removals. Each re-verifies its finding right before acting, under the network's lock:
the inventory is a snapshot, and between it and the removal a container may have been started.

A host veth in particular is deleted only if, at that moment, it is still the same link (same
index) on the same bridge and no owner claims it: the claims are read again from every lease
store and the Docker driver's state. That is enough because every owner writes its claim before
it makes the link (a CNI ADD leases its address first; the Docker driver records an endpoint
"creating" before the veth pair) and drops it only after the link is gone: a link seen on the
host whose claim is absent afterwards was nobody's.
"""

from __future__ import annotations

from typing import Callable

from cni_bridge import firewall
from cni_bridge.inventory.gather import gather_files
from cni_bridge.inventory.judge import BRIDGE_MODES, claims_of
from cni_bridge.inventory.model import Inventory, Network
from cni_bridge.inventory.stale import (
    ELEMENT,
    IFB,
    IFB_DEVICE,
    LEASE,
    PORT,
    TABLE,
    VM_PORT,
    VXLAN,
    Finding,
    veth_of_ifb,
)
from cni_bridge.ipam.backend import open_store, spec_at
from cni_bridge.kernel import netlink
from cni_bridge.locks import attachment_lock, network_lock
from cni_bridge.modes import vxlan
from cni_bridge.overlay import registry
from cni_bridge.state import StateStore
from cni_bridge.vm import names as vm_names


class Kept(Exception):
    """The re-verification found the item in use again: left alone (not a failure)."""


def remove(finding: Finding, inv: Inventory) -> None:
    """Remove what `finding` names, or raise Kept (in use again) or another error (failed)."""
    if finding.kind == IFB:  # not a network's
        _delete_ifb(finding)
        return
    net = inv.network(finding.network)
    assert net is not None, finding
    REMOVALS[finding.kind](finding, net, inv)


def _bridge_of(net: Network) -> str | None:
    """The bridge whose FORWARD rules go with the masquerade table (CNI networks only: the
    Docker driver keeps its rules for the network's whole life)."""
    return net.bridge if net.mode in BRIDGE_MODES and not net.docker_id else None


def _release_lease(finding: Finding, net: Network, inv: Inventory) -> None:
    ep = next(e for e in net.endpoints if f"{e.container_id} {e.ifname}" == finding.subject and e.source == "cni")
    _absent(ep.host_ifname)
    with network_lock(net.name):
        if ep.host_ifname and net.table_present:
            firewall.remove_members(firewall.Masquerade(net.name, _bridge_of(net), ()), owners=[ep.host_ifname])
    open_store(spec_at(ep.data_dir or ""), net.name).release(ep.container_id, ep.ifname)


def _release_vm_port(finding: Finding, net: Network, inv: Inventory) -> None:
    """Under the port's own lock (the one attach and detach hold): re-read the record and the tap;
    if both exist now the port is whole again and kept. Else the tap (if a tap), the masquerade
    entries, the lease and the record go, as `cni-bridge vm detach` would remove them."""
    tap = finding.subject
    ep = next(e for e in net.endpoints if e.source == "vm" and e.ifname == tap)
    cid, ifname = vm_names.owner_of(tap)
    assert inv.sources is not None
    records = StateStore(inv.sources.port_dir) if inv.sources.port_dir else None
    with attachment_lock(net.name, cid, ifname), netlink.root() as host:
        record = records.get(vm_names.KIND, tap) if records is not None else None
        details = host.link_details(tap)
        if details is not None and details.tun is None:
            raise Kept(f"{tap} is not a tap device")
        if details is not None and record is not None:
            raise Kept("its tap and record are both there again")
        if details is not None:
            host.delete_link(tap)
        with network_lock(net.name):
            if net.table_present:
                firewall.remove_members(firewall.Masquerade(net.name, _bridge_of(net), ()), owners=[tap])
        if ep.data_dir:
            open_store(spec_at(ep.data_dir), net.name).release(cid, ifname)
        if records is not None:
            records.delete(vm_names.KIND, tap)


def _remove_element(finding: Finding, net: Network, inv: Inventory) -> None:
    with network_lock(net.name):
        _absent(finding.subject)
        firewall.remove_members(firewall.Masquerade(net.name, _bridge_of(net), ()), owners=[finding.subject])


def _delete_table(finding: Finding, net: Network, inv: Inventory) -> None:
    with network_lock(net.name):
        if firewall.members(net.name):
            raise Kept("the table has entries again")
        firewall.delete_table(net.name, net.bridge if not net.docker_id else None)


def _delete_port(finding: Finding, net: Network, inv: Inventory) -> None:
    with network_lock(net.name), netlink.root() as host:
        bridge, port = host.link(net.bridge or ""), host.link(finding.subject)
        if port is None:
            raise Kept(f"{finding.subject} is gone already")
        if bridge is None or port.index != finding.index or port.master != bridge.index:
            raise Kept(f"{finding.subject} changed since the scan")
        assert inv.sources is not None
        claims = claims_of(gather_files(inv.sources))  # read after the link: see the module docstring
        why = claims.why_unprovable(bridge.name)
        if finding.subject in claims.ports or why:
            raise Kept(why or f"{finding.subject} is claimed now (an attachment was made meanwhile)")
        host.delete_link(finding.subject)


def _delete_ifb(finding: Finding) -> None:
    """Only the same device (same index), and only while no host veth of its attachment exists:
    an ADD makes the veth before the ifb, so an attachment being made keeps its ifb."""
    with netlink.root() as host:
        ifb = host.link(finding.subject)
        if ifb is None:
            raise Kept(f"{finding.subject} is gone already")
        if ifb.index != finding.index:
            raise Kept(f"{finding.subject} changed since the scan")
        match = IFB_DEVICE.match(finding.subject)
        assert match is not None, finding
        if veth_of_ifb(match.group(1), [link.name for link in host.links()]):
            raise Kept(f"{finding.subject} has its host veth again (an attachment was made meanwhile)")
        host.delete_link(finding.subject)


def _delete_vxlan(finding: Finding, net: Network, inv: Inventory) -> None:
    """Under the VNI's lock, like the last DEL: only while the device is alone on the bridge."""
    vni = int((net.vxlan or {})["vni"])
    with netlink.root() as host:
        port = host.link(finding.subject)
        if port is None or port.index != finding.index:
            raise Kept(f"{finding.subject} changed since the scan")
        if not vxlan.release_unused(host, vni, net.bridge or ""):
            raise Kept(f"bridge {net.bridge} has ports again")
    registry.drop_vni(vni)


def _absent(host_ifname: str | None) -> None:
    if not host_ifname:
        return
    with netlink.root() as host:
        if host.link(host_ifname) is not None:
            raise Kept(f"{host_ifname} reappeared")


REMOVALS: dict[str, Callable[[Finding, Network, Inventory], None]] = {
    LEASE: _release_lease, ELEMENT: _remove_element, TABLE: _delete_table, PORT: _delete_port,
    VM_PORT: _release_vm_port,
    VXLAN: _delete_vxlan}
