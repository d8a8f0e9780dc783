"""The FDB and neighbour entries a vxlan device needs for a set of remote endpoints, and the
difference to what it has. Pure: no I/O, so every case is unit-tested.

For each VNI the device needs
* one all-zeros FDB entry per remote VTEP that has a member: where broadcast and unknown
  unicast (ARP for an address not in the table, DHCP, IPv6 multicast) are sent, head-end
  replicated. A VTEP without members of the network gets none, so it gets no flooding;
* one FDB entry per remote MAC -> its VTEP: unicast goes to the one host that has it;
* one permanent neighbour entry per remote IP -> its MAC: the device (`proxy`) answers ARP and
  neighbour solicitations itself, so they are not flooded to every host.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ZERO_MAC = "00:00:00:00:00:00"


@dataclass(frozen=True, order=True)
class RemoteEndpoint:
    """One attachment on another host: its MAC, its addresses, and the VTEP (the underlay
    address of the host's vxlan device) it is behind."""
    mac: str
    vtep: IPAddress
    ips: tuple[IPAddress, ...] = ()

    @classmethod
    def of(cls, mac: str, vtep: str | IPAddress, ips: Iterable[str | IPAddress] = ()) -> "RemoteEndpoint":
        """From strings (a registry record, a store's value); an IP may carry a prefix."""
        return cls(mac.lower(), ipaddress.ip_address(vtep),
                   tuple(ipaddress.ip_interface(ip).ip for ip in ips))


@dataclass(frozen=True)
class Entries:
    """A vxlan device's programmed entries: FDB (MAC, VTEP) and neighbours (IP, MAC)."""
    fdb: frozenset[tuple[str, IPAddress]] = frozenset()
    neighbours: frozenset[tuple[IPAddress, str]] = frozenset()


@dataclass
class Plan:
    """What to change; each list sorted, so the kernel is driven in a repeatable order."""
    fdb_add: list[tuple[str, IPAddress]] = field(default_factory=list)
    fdb_delete: list[tuple[str, IPAddress]] = field(default_factory=list)
    neighbour_set: list[tuple[IPAddress, str]] = field(default_factory=list)
    neighbour_delete: list[tuple[IPAddress, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.fdb_add or self.fdb_delete or self.neighbour_set or self.neighbour_delete)


def _key(item: tuple) -> tuple:
    return tuple((x.version, int(x)) if isinstance(x, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else (0, x)
                 for x in item)


def desired(endpoints: Iterable[RemoteEndpoint], local: IPAddress | None = None) -> Entries:
    """The entries for `endpoints`. Endpoints behind `local` (this host's own VTEP) are on the
    bridge already and are skipped. A MAC claimed by two VTEPs (a container moving between
    hosts, a stale record) goes to one of them, the same one on every host (lowest VTEP)."""
    fdb: dict[str, IPAddress] = {}
    neighbours: dict[IPAddress, str] = {}
    for ep in sorted(endpoints, key=lambda e: (e.mac, e.vtep.version, int(e.vtep))):
        if ep.vtep == local or ep.mac == ZERO_MAC or ep.mac in fdb:
            continue
        fdb[ep.mac] = ep.vtep
        for ip in ep.ips:
            neighbours.setdefault(ip, ep.mac)
    flood = {(ZERO_MAC, vtep) for vtep in fdb.values()}
    return Entries(frozenset(set(fdb.items()) | flood), frozenset(neighbours.items()))


def plan(current: Entries, want: Entries) -> Plan:
    """Add what is missing, remove what is stale, leave what is right alone. A neighbour whose
    MAC changed is set (replaced), not deleted and added; likewise a MAC that moved to another
    VTEP (one replace in the kernel, then its old entry is already gone)."""
    wanted_ips = {ip for ip, _ in want.neighbours}
    wanted_macs = {mac for mac, _ in want.fdb if mac != ZERO_MAC}
    return Plan(
        fdb_add=sorted(want.fdb - current.fdb, key=_key),
        fdb_delete=sorted(((mac, dst) for mac, dst in current.fdb - want.fdb
                           if mac == ZERO_MAC or mac not in wanted_macs), key=_key),
        neighbour_set=sorted(want.neighbours - current.neighbours, key=_key),
        neighbour_delete=sorted(((ip, mac) for ip, mac in current.neighbours - want.neighbours
                                 if ip not in wanted_ips), key=_key),
    )
