"""Desired state in, kernel in step: make one VNI's vxlan device hold exactly the FDB and
neighbour entries of a set of remote endpoints (peers.py), touching nothing else.

Called with the complete desired set, never with events: a caller that restarted, joined late
or missed an update converges by calling it again. Idempotent and cheap when nothing changed
(two dumps of the device's entries, no writes).
"""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Iterable

from cni_bridge.errors import config_error
from cni_bridge.kernel import netlink
from cni_bridge.kernel.netlink import Netlink
from cni_bridge.modes.vxlan import device_name
from cni_bridge.overlay.peers import ZERO_MAC, Entries, Plan, RemoteEndpoint, desired, plan


def current(host: Netlink, index: int) -> Entries:
    """The device's programmed entries as the kernel has them."""
    return Entries(frozenset(host.vxlan_fdb(index)), frozenset(host.permanent_neighbours(index)))


def apply(host: Netlink, index: int, changes: Plan) -> None:
    """Additions first (a moved MAC or IP is replaced in place), then removals; an entry that
    is already gone is fine (another reconcile, the device's own ageing)."""
    for mac, dst in changes.fdb_add:
        host.fdb_add(index, mac, dst)
    for ip, mac in changes.neighbour_set:
        host.neighbour_set(index, ip, mac)
    for mac, dst in changes.fdb_delete:
        host.fdb_delete(index, mac, dst)
    for ip, _ in changes.neighbour_delete:
        host.neighbour_delete(index, ip)


def reconcile(vni: int, endpoints: Iterable[RemoteEndpoint], *, host: Netlink | None = None) -> Plan:
    """Bring device `vx-<vni>` in step with `endpoints` (every remote endpoint of the VNI; the
    host's own are recognised by the device's local address and skipped). Returns what was
    changed. A device in multicast-learning mode (`group`) is refused: its entries are the
    kernel's to learn, and its group flood entry must stay."""
    with contextlib.nullcontext(host) if host is not None else netlink.root() as h:
        name = device_name(vni)
        details = h.vxlan_details(name)
        if details is None or details.vni != vni:
            raise config_error(f"no vxlan device {name} on this host (no attachment of VNI {vni} yet)")
        if details.group:
            raise config_error(f"{name} learns its peers from multicast group {details.group}; "
                               "programmed peers are for networks without vxlan.group")
        local = ipaddress.ip_address(details.local) if details.local else None
        changes = plan(current(h, details.link.index), desired(endpoints, local))
        apply(h, details.link.index, changes)
        return changes



def peers_of(entries: Entries) -> tuple[list[str], list[dict[str, object]]]:
    """(flood VTEPs, remote endpoints as {mac, vtep, ips}) of a device's entries: what
    `cni-bridge status` and `cni-bridge vxlan show` print."""
    ips: dict[str, list[str]] = {}
    for ip, mac in sorted(entries.neighbours, key=lambda n: (n[0].version, int(n[0]))):
        ips.setdefault(mac, []).append(str(ip))
    flood = sorted((dst for mac, dst in entries.fdb if mac == ZERO_MAC), key=lambda a: (a.version, int(a)))
    remote = [{"mac": mac, "vtep": str(dst), "ips": ips.get(mac, [])}
              for mac, dst in sorted(entries.fdb, key=lambda e: e[0]) if mac != ZERO_MAC]
    return [str(a) for a in flood], remote
