"""The raw rtnetlink requests of the per-ADD hot path: links, veth pairs, addresses, routes and
the netconf forwarding read, on a plain NETLINK_ROUTE socket.

Why: pyroute2 0.9 drives every request through an asyncio event loop and decodes every
attribute of every reply; that is ~0.5-1 ms of Python per request, ~10 ms per ADD. The dozen
requests an ADD makes are simple, so they are encoded here with `struct` (~20-50 µs each). The
socket is bound to the namespace of the thread that created it (netlink.netns creates it while
switched), exactly like pyroute2's. Everything else (rare or complex requests) stays on pyroute2
(handle.py).
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from cni_bridge.kernel.nlsock import F_ACK, F_CREATE, F_DUMP, F_EXCL, NetlinkError, NetlinkSocket, attr, attrs

NETLINK_ROUTE = 0
NETLINK_GET_STRICT_CHK = 12
SOL_NETLINK = 270
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE = 24
RTM_GETNETCONF, NETCONFA_IFINDEX, NETCONFA_FORWARDING, NETCONFA_IFINDEX_ALL = 82, 1, 2, -1
IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO = 1, 3, 4, 10, 18
IFLA_AF_SPEC, IFLA_NET_NS_FD, IFLA_EXT_MASK = 26, 28, 29
IFLA_PROTINFO, IFLA_BRPORT_MODE, NLA_F_NESTED = 12, 4, 0x8000
IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE = 8, 1
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
IFA_F_NODAD = 0x02
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 4, 0, 1

_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_U32 = struct.Struct("=I")


# A link as the tuple links.Link is built from: (index, name, kind, mac, mtu, master, up).
LinkTuple = tuple[int, str, str, str, int, "int | None", bool]


def _cstr(value: str) -> bytes:
    return value.encode() + b"\0"


def _mac(raw: bytes | None) -> str:
    return ":".join(f"{b:02x}" for b in raw) if raw else ""


def parse_link(payload: bytes) -> LinkTuple:
    _family, _type, index, flags, _change = _IFINFO.unpack_from(payload, 0)
    a = attrs(payload, _IFINFO.size)
    kind = ""
    if IFLA_LINKINFO in a:
        info = attrs(a[IFLA_LINKINFO], 0)
        if IFLA_INFO_KIND in info:
            kind = info[IFLA_INFO_KIND].rstrip(b"\0").decode()
    master = _U32.unpack(a[IFLA_MASTER])[0] if IFLA_MASTER in a else None
    return (index, a.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace"), kind,
            _mac(a.get(IFLA_ADDRESS)), _U32.unpack(a[IFLA_MTU])[0] if IFLA_MTU in a else 0,
            master or None, bool(flags & IFF_UP))


class Rtnl(NetlinkSocket):
    """The NETLINK_ROUTE socket of one namespace, with the requests the hot path makes."""

    def __init__(self) -> None:
        super().__init__(NETLINK_ROUTE)
        # Strict checking makes the kernel honour the header's filters in dumps (addresses():
        # one interface's addresses instead of every address in the namespace). Our GET
        # requests already have the all-zero headers that strict mode demands.
        self.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)

    # --- links -----------------------------------------------------------------------------
    def get_link(self, name: str | None = None, index: int = 0) -> LinkTuple:
        body = _IFINFO.pack(0, 0, index, 0, 0)
        if name is not None:
            body += attr(IFLA_IFNAME, _cstr(name))
        body += attr(IFLA_EXT_MASK, _U32.pack(RTEXT_FILTER_SKIP_STATS))
        replies = self.request(RTM_GETLINK, F_ACK, body)
        if not replies:
            raise NetlinkError(19)  # ENODEV
        return parse_link(replies[0])

    def add_veth(self, host: str, peer: str, *, peer_ns_fd: int | None, mtu: int | None,
                 master: int | None, peer_mac: str | None, up: bool = True) -> None:
        peer_body = _IFINFO.pack(0, 0, 0, 0, 0) + attr(IFLA_IFNAME, _cstr(peer))
        if peer_ns_fd is not None:
            peer_body += attr(IFLA_NET_NS_FD, _U32.pack(peer_ns_fd))
        if mtu:
            peer_body += attr(IFLA_MTU, _U32.pack(mtu))
        if peer_mac:
            peer_body += attr(IFLA_ADDRESS, bytes.fromhex(peer_mac.replace(":", "")))
        info = attr(IFLA_INFO_KIND, b"veth") + attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer_body))
        body = _IFINFO.pack(0, 0, 0, IFF_UP if up else 0, IFF_UP if up else 0) + attr(IFLA_IFNAME, _cstr(host))
        if mtu:
            body += attr(IFLA_MTU, _U32.pack(mtu))
        if master is not None:
            body += attr(IFLA_MASTER, _U32.pack(master))
        body += attr(IFLA_LINKINFO, info)
        self.request(RTM_NEWLINK, F_ACK | F_CREATE | F_EXCL, body)

    def set_up(self, index: int, *, no_ipv6_addresses: bool = False) -> None:
        """`no_ipv6_addresses`: IPv6 address generation mode "none" in the same request (no
        link-local address, no fe80::/64 route, no DAD); EAFNOSUPPORT where IPv6 is off."""
        body = _IFINFO.pack(0, 0, index, IFF_UP, IFF_UP)
        if no_ipv6_addresses:
            mode = attr(IFLA_INET6_ADDR_GEN_MODE, bytes([IN6_ADDR_GEN_MODE_NONE]))
            body += attr(IFLA_AF_SPEC, attr(socket.AF_INET6, mode))
        self.request(RTM_SETLINK, F_ACK, body)

    def set_no_ipv6_addresses(self, index: int) -> None:
        """IPv6 address generation mode "none" alone, for a link that is still down: one that
        has carrier as soon as it is up (ifb) gets its link-local address during the up of a
        combined request (set_up), before the mode is applied; EAFNOSUPPORT where IPv6 is off."""
        mode = attr(IFLA_INET6_ADDR_GEN_MODE, bytes([IN6_ADDR_GEN_MODE_NONE]))
        self.request(RTM_SETLINK, F_ACK, _IFINFO.pack(0, 0, index, 0, 0) + attr(IFLA_AF_SPEC, attr(socket.AF_INET6, mode)))

    def set_port_hairpin(self, index: int, on: bool) -> None:
        """Hairpin mode of a bridge port (`bridge link set dev X hairpin on`): an AF_BRIDGE
        RTM_SETLINK with IFLA_PROTINFO/IFLA_BRPORT_MODE, as iproute2 sends it."""
        body = _IFINFO.pack(socket.AF_BRIDGE, 0, index, 0, 0) \
            + attr(IFLA_PROTINFO | NLA_F_NESTED, attr(IFLA_BRPORT_MODE, bytes([1 if on else 0])))
        self.request(RTM_SETLINK, F_ACK, body)

    def forwarding(self, family: int) -> bool | None:
        """The namespace-wide `forwarding` of a family (net.ipv4.ip_forward is conf.all.forwarding)
        from RTM_GETNETCONF; None if the kernel does not say. Not /proc/sys: a lookup there walks
        one cached entry per namespace that ever looked up the same path (~0.2-0.5 ms with
        2,000 containers on the host, growing with them)."""
        body = struct.pack("=Bxxx", family) + attr(NETCONFA_IFINDEX, struct.pack("=i", NETCONFA_IFINDEX_ALL))
        for payload in self.request(RTM_GETNETCONF, F_ACK, body):
            value = attrs(payload, 4).get(NETCONFA_FORWARDING)
            if value is not None:
                return struct.unpack("=i", value[:4])[0] != 0
        return None

    def delete_link(self, name: str) -> None:
        self.request(RTM_DELLINK, F_ACK, _IFINFO.pack(0, 0, 0, 0, 0) + attr(IFLA_IFNAME, _cstr(name)))

    # --- addresses and routes ----------------------------------------------------------------
    def add_address(self, index: int, iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> None:
        v6 = iface.version == 6
        family = socket.AF_INET6 if v6 else socket.AF_INET
        prefix = iface.network.prefixlen
        packed = iface.ip.packed
        body = _IFADDR.pack(family, prefix, IFA_F_NODAD if v6 else 0, 0, index)
        body += attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed)
        if not v6 and prefix < 31:
            body += attr(IFA_BROADCAST, iface.network.broadcast_address.packed)
        self.request(RTM_NEWADDR, F_ACK | F_CREATE | F_EXCL, body)

    def addresses(self, index: int, family: int = 0) -> list[tuple[bytes, int]]:
        """(packed IFA_ADDRESS, prefixlen) of one interface. The kernel filters the dump on
        ifa_index (strict mode), so its cost does not grow with the interfaces of the namespace;
        the check below only guards against kernels that ignore the filter."""
        out = []
        try:
            replies = self.request(RTM_GETADDR, F_DUMP, _IFADDR.pack(family, 0, 0, 0, index))
        except NetlinkError as exc:
            if exc.code == 19:  # ENODEV: no such interface, so no addresses (as an unfiltered dump)
                return out
            raise
        for payload in replies:
            _fam, prefixlen, _flags, _scope, ifindex = _IFADDR.unpack_from(payload, 0)
            if ifindex != index:
                continue
            a = attrs(payload, _IFADDR.size)
            address = a.get(IFA_ADDRESS) or a.get(IFA_LOCAL)
            if address:
                out.append((address, prefixlen))
        return out

    def add_route(self, dst: ipaddress.IPv4Network | ipaddress.IPv6Network,
                  gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None, oif: int | None) -> None:
        """Same message pyroute2 sends: main table, proto static, scope universe, unicast."""
        family = socket.AF_INET6 if dst.version == 6 else socket.AF_INET
        body = _RTMSG.pack(family, dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE,
                           RTN_UNICAST, 0)
        if dst.prefixlen:
            body += attr(RTA_DST, dst.network_address.packed)
        if gateway is not None:
            body += attr(RTA_GATEWAY, gateway.packed)
        if oif is not None:
            body += attr(RTA_OIF, _U32.pack(oif))
        self.request(RTM_NEWROUTE, F_ACK | F_CREATE | F_EXCL, body)
