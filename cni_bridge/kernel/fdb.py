"""The forwarding database and neighbour entries of a vxlan device (`bridge fdb ... dev vx-N`,
`ip neigh ... dev vx-N nud permanent`): what tells the kernel which VTEP a MAC is behind, and
lets the device answer ARP and neighbour solicitations itself (its `proxy` flag).

Only the entries pybridge programs are reported and changed: FDB entries of the device itself
(NTF_SELF) that carry a remote VTEP (NDA_DST) and are permanent, and permanent neighbours. The
device's own entries, the bridge's (NTF_MASTER) entries and anything learned are left alone.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from cni_bridge.kernel.handle import Handle
from cni_bridge.kernel.nlsock import NetlinkError

NUD_PERMANENT = 0x80
NTF_SELF = 0x02
ZERO_MAC = "00:00:00:00:00:00"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _family(address: IPAddress) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


class Fdb(Handle):
    """FDB and neighbour requests of a namespace handle (see netlink.Netlink)."""

    def vxlan_fdb(self, index: int) -> set[tuple[str, IPAddress]]:
        """(MAC, remote VTEP) of the device's permanent remote entries; ZERO_MAC: a flood entry."""
        out: set[tuple[str, IPAddress]] = set()
        for msg in self.ipr.fdb("dump", ifindex=index):
            dst = msg.get("NDA_DST")
            if msg["ifindex"] != index or dst is None or not msg["flags"] & NTF_SELF \
                    or not msg["state"] & NUD_PERMANENT:
                continue
            out.add((msg.get("NDA_LLADDR").lower(), ipaddress.ip_address(dst)))
        return out

    def fdb_add(self, index: int, mac: str, dst: IPAddress) -> None:
        """A flood entry is appended (one per VTEP); a unicast MAC is replaced, so a MAC that
        moved to another VTEP moves in one request. NTF_SELF always: without it the kernel
        writes the bridge's FDB, where a permanent entry means "this MAC is the bridge's own"."""
        self.ipr.fdb("append" if mac == ZERO_MAC else "replace", ifindex=index, lladdr=mac, dst=str(dst),
                     state=NUD_PERMANENT, flags=NTF_SELF)

    def fdb_delete(self, index: int, mac: str, dst: IPAddress) -> bool:
        """False when it was not there."""
        try:
            self.ipr.fdb("del", ifindex=index, lladdr=mac, dst=str(dst), flags=NTF_SELF)
            return True
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                return False
            raise

    def permanent_neighbours(self, index: int) -> set[tuple[IPAddress, str]]:
        """(IP, MAC) of the device's permanent neighbour entries, both families."""
        out: set[tuple[IPAddress, str]] = set()
        for msg in self.ipr.get_neighbours(ifindex=index):
            lladdr = msg.get("NDA_LLADDR")
            if msg["ifindex"] == index and msg["state"] & NUD_PERMANENT and lladdr and msg.get("NDA_DST"):
                out.add((ipaddress.ip_address(msg.get("NDA_DST")), lladdr.lower()))
        return out

    def neighbour_set(self, index: int, ip: IPAddress, mac: str) -> None:
        self.ipr.neigh("replace", ifindex=index, dst=str(ip), lladdr=mac, state=NUD_PERMANENT,
                       family=_family(ip))

    def neighbour_delete(self, index: int, ip: IPAddress) -> bool:
        try:
            self.ipr.neigh("del", ifindex=index, dst=str(ip), family=_family(ip))
            return True
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                return False
            raise
