"""The only module that talks netlink (pyroute2) or writes sysctls.

Why thread-level `setns` instead of pyroute2's `netns=` argument: pyroute2 0.9 forks a helper
process to open a socket in another namespace (milliseconds, and it *creates* the namespace when
the path is missing). `setns(2)` with CLONE_NEWNET only affects the calling thread, and a netlink
socket stays bound to the namespace it was created in, so we switch the thread, open the socket,
and switch back at once. That is safe in the multi-threaded daemon too.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import socket
import threading
from dataclasses import dataclass, replace
from typing import Iterator

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from cni_bridge import _rtnl
from cni_bridge.errors import PluginError, INTERNAL, INVALID_CONFIG

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_netns_lock = threading.Lock()

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = ["NetlinkError", "Link", "root", "netns", "NetnsGone"]


class NetnsGone(Exception):
    """The namespace path does not exist or is not a network namespace any more."""


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str
    mac: str
    mtu: int
    master: int | None
    up: bool


@dataclass(frozen=True)
class LinkDetails:
    """A link plus what `ip -d link` shows about its parent and kind-specific mode."""
    link: Link
    parent: int | None         # IFLA_LINK: index of the lower device (in `parent_netnsid`'s ns)
    parent_netnsid: int | None  # set when the lower device lives in another namespace
    mode: str | int | None      # macvlan mode name, or ipvlan mode number (0 l2, 1 l3, 2 l3s)
    vlan_id: int | None


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def root() -> "Netlink":
    """A netlink handle in the caller's (host) namespace."""
    return Netlink(None, raw=_rtnl.Rtnl())


@contextlib.contextmanager
def netns(path: str) -> Iterator["Netlink"]:
    """A netlink handle inside the namespace at `path`; raises NetnsGone if it is not there."""
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not block us
    except OSError as exc:
        raise NetnsGone(f"network namespace {path}: {exc.strerror}") from None
    try:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                _setns(target)
            except OSError as exc:
                raise NetnsGone(f"{path} is not a network namespace: {exc.strerror}") from None
            try:
                handle = Netlink(None, ns_fd=target, raw=_rtnl.Rtnl())
            finally:
                _setns(own)
        finally:
            os.close(own)
        try:
            yield handle
        finally:
            handle.close()
    finally:
        os.close(target)


def netns_exists(path: str) -> bool:
    try:
        with netns(path):
            return True
    except NetnsGone:
        return False


def _details_from_msg(msg) -> "LinkDetails":
    info = msg.get("IFLA_LINKINFO")
    data = (info.get("IFLA_INFO_DATA") if info else None) or None
    mode: str | int | None = None
    vlan_id = None
    if data is not None:
        mode = data.get("IFLA_MACVLAN_MODE")
        if mode is None:
            mode = data.get("IFLA_IPVLAN_MODE")
        vlan_id = data.get("IFLA_VLAN_ID")
    return LinkDetails(_link_from_msg(msg), msg.get("IFLA_LINK"), msg.get("IFLA_LINK_NETNSID"),
                       mode, vlan_id)


def _link_from_msg(msg) -> Link:
    info = msg.get("IFLA_LINKINFO")
    kind = info.get("IFLA_INFO_KIND") if info else None
    return Link(
        index=msg["index"],
        name=msg.get("IFLA_IFNAME"),
        kind=kind or "",
        mac=msg.get("IFLA_ADDRESS") or "",
        mtu=msg.get("IFLA_MTU") or 0,
        master=msg.get("IFLA_MASTER"),
        up=bool(msg["flags"] & 1),
    )


class Netlink:
    """Typed wrappers over the handful of rtnetlink calls the modes need."""

    def __init__(self, ipr: IPRoute | None, ns_fd: int | None = None, raw: "_rtnl.Rtnl | None" = None) -> None:
        self._ipr = ipr
        self.ns_fd = ns_fd
        # The hot per-ADD requests go through `raw` (cni_bridge/_rtnl.py, ~20x cheaper than
        # pyroute2 0.9); everything else uses pyroute2, opened on first use.
        self.raw = raw if raw is not None else _rtnl.Rtnl()  # bound to the calling thread's ns

    @property
    def ipr(self) -> IPRoute:
        """pyroute2 handle in this handle's namespace, created on first use (~1 ms)."""
        if self._ipr is None:
            if self.ns_fd is None:
                self._ipr = IPRoute()
            else:
                own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    _setns(self.ns_fd)
                    try:
                        self._ipr = IPRoute()
                    finally:
                        _setns(own)
                finally:
                    os.close(own)
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
        if self.raw is not None:
            self.raw.close()

    def __enter__(self) -> "Netlink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- links -----------------------------------------------------------------------------
    def link(self, name: str) -> Link | None:
        # RTM_GETLINK with IFLA_IFNAME: the kernel looks the name up. (get_links(ifname=) dumps
        # every link and filters in Python: O(links), ~0.5 s with 1,000 containers attached.)
        try:
            return Link(*self.raw.get_link(name))
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise

    def link_by_index(self, index: int) -> Link | None:
        try:
            return Link(*self.raw.get_link(index=index))
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise

    def links(self) -> list[Link]:
        return [_link_from_msg(m) for m in self.ipr.get_links()]

    def ensure_bridge(self, name: str, mtu: int | None, promisc: bool) -> Link:
        """Create the bridge if missing; concurrent creators all succeed (EEXIST is fine)."""
        existing = self.link(name)
        if existing is None:
            kwargs: dict = {"ifname": name, "kind": "bridge", "state": "up"}
            if mtu:
                kwargs["mtu"] = mtu
            try:
                self.ipr.link("add", **kwargs)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
            existing = self.link(name)
            if existing is None:  # deleted under our feet by someone else
                raise PluginError(11, f"bridge {name} vanished while being created, try again")
        if existing.kind != "bridge":
            raise PluginError(INVALID_CONFIG, f"{name} already exists and is not a bridge (it is a {existing.kind or 'device'})")
        if not existing.up:
            self.ipr.link("set", index=existing.index, state="up")
        if promisc:
            self.ipr.link("set", index=existing.index, flags=0x100, change=0x100)
        return existing

    def create_veth_into(self, host_name: str, peer_name: str, target: "Netlink", *, mtu: int | None,
                         master: int | None, peer_mac: str | None = None) -> Link:
        """Veth pair, host end enslaved and up, peer created directly in the target netns."""
        self.raw.add_veth(host_name, peer_name, peer_ns_fd=target.ns_fd, mtu=mtu, master=master,
                          peer_mac=peer_mac, up=False)
        return self._bring_up_bridge_port(host_name)

    def create_veth_pair(self, host_name: str, peer_name: str, *, mtu: int | None, master: int | None,
                         peer_mac: str | None = None) -> Link:
        """Both ends in this namespace (Docker moves the peer into the container itself)."""
        self.raw.add_veth(host_name, peer_name, peer_ns_fd=None, mtu=mtu, master=master,
                          peer_mac=peer_mac, up=False)
        return self._bring_up_bridge_port(host_name)

    def _bring_up_bridge_port(self, name: str) -> Link:
        """Finish a host-side veth end that was created down, already enslaved to its bridge.

        Why not created up: every time a bridge port is enabled or disabled the kernel
        re-evaluates the state of all ports of the bridge (br_port_state_selection, which also
        re-arms each port's multicast timers): O(ports attached). Created up, the port is enabled
        at once (its operstate is still "unknown"), disabled when the first RTM_GETLINK settles
        the operstate to down (no carrier: the container end is down), and enabled again when
        the container end comes up: three passes over all ports per ADD. Created down, settled
        by the RTM_GETLINK below, then set up, it is enabled once, when it gets carrier.

        The same request sets IPv6 address generation to "none" on this end (before carrier,
        so addrconf has not run): a bridge port never needs an address of its own, and with
        one, every port adds a link-local address and fe80::/64 routes, DAD and MLD traffic to
        the host, so route inserts and lookups grow with the containers attached. (Not the
        `disable_ipv6` sysctl: its handler spins on rtnl_trylock() and walks the whole IPv6
        routing table: 32 parallel veth creations took 2.5x as long.) The container end keeps
        its IPv6."""
        created = self.link(name)
        assert created is not None
        self.set_up(created.index, no_ipv6_addresses=True)
        return replace(created, up=True)

    def add_link(self, **kwargs) -> None:
        """Generic link creation for the macvlan/ipvlan/vlan modes (kwargs as pyroute2 link())."""
        self.ipr.link("add", **kwargs)

    def set_link(self, index: int, **kwargs) -> None:
        self.ipr.link("set", index=index, **kwargs)

    def set_up(self, index: int, *, no_ipv6_addresses: bool = False) -> None:
        """`no_ipv6_addresses`: IPv6 address generation "none" in the same request (where the
        kernel has IPv6)."""
        if not no_ipv6_addresses:
            self.raw.set_up(index)
            return
        try:
            self.raw.set_up(index, no_ipv6_addresses=True)
        except NetlinkError as exc:
            if exc.code != errno.EAFNOSUPPORT:  # IPv6 disabled on this host: nothing to avoid
                raise
            self.raw.set_up(index)

    def ensure_forwarding(self, version: int) -> None:
        """IP forwarding on for a family, read in this handle's namespace; written (via /proc/sys,
        which resolves the calling thread's namespace: call it on the host handle) only when
        netlink says it is off, i.e. once per boot, not on every ADD."""
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        try:
            if self.raw.forwarding(family):
                return
        except NetlinkError:
            pass
        ensure_sysctl("net.ipv4.ip_forward" if version == 4 else "net.ipv6.conf.all.forwarding", "1")

    def set_hairpin(self, index: int, on: bool) -> None:
        self.ipr.link("set", index=index, kind="bridge_slave", mode=1 if on else 0)

    def delete_link(self, name: str) -> bool:
        """Delete by name; False when it was not there (DEL must be idempotent)."""
        try:
            self.raw.delete_link(name)
            return True
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                return False
            raise

    # --- addresses -------------------------------------------------------------------------
    def addresses(self, index: int, family: int = 0) -> list[IPInterface]:
        """Addresses of one interface; `family` 0 (both), 2 or 10. The kernel dumps only that
        interface's addresses (strict netlink), so the cost is flat in the interfaces attached."""
        return [ipaddress.ip_interface((ipaddress.ip_address(packed), prefixlen))
                for packed, prefixlen in self.raw.addresses(index, family)]

    def add_address(self, index: int, iface: IPInterface) -> None:
        """Add an address; already present is fine. IPv6 skips DAD so it is usable at once
        (IFA_F_NODAD); IPv4 gets the subnet's broadcast address below /31."""
        try:
            self.raw.add_address(index, iface)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise

    def delete_address(self, index: int, iface: IPInterface) -> None:
        try:
            self.ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except NetlinkError as exc:
            if exc.code not in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                raise

    # --- routes ----------------------------------------------------------------------------
    def add_route(self, dst: IPNetwork, gateway: IPAddress | None, index: int | None = None) -> None:
        try:
            self.raw.add_route(dst, gateway, index)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise

    def routes(self, family: int) -> list[tuple[IPNetwork, IPAddress | None, int | None]]:
        """Main-table routes as (dst, gateway, oif)."""
        out = []
        for msg in self.ipr.get_routes(family=family, table=254):
            dst = msg.get("RTA_DST")
            plen = msg["dst_len"]
            if dst is None:
                dst = "0.0.0.0" if family == 2 else "::"
            gw = msg.get("RTA_GATEWAY")
            out.append((ipaddress.ip_network(f"{dst}/{plen}", strict=False),
                        ipaddress.ip_address(gw) if gw else None, msg.get("RTA_OIF")))
        return out

    # --- child links of a NIC (macvlan / ipvlan / vlan modes, vlan uplinks) ----------------
    def default_route_link(self) -> Link | None:
        """The link of the main table's IPv4 default route (else IPv6): macvlan's default master."""
        for family in (2, 10):
            for msg in self.ipr.get_routes(family=family, table=254):
                if msg["dst_len"] != 0:
                    continue
                oif = msg.get("RTA_OIF")
                if oif is None:  # multipath: take the first hop
                    hops = msg.get("RTA_MULTIPATH") or []
                    oif = hops[0]["oif"] if hops else None
                if oif is not None:
                    return self.link_by_index(oif)
        return None

    def move_link(self, index: int, target: "Netlink", new_name: str) -> None:
        """Move a link into `target`'s namespace and rename it there, in one RTM_SETLINK
        (the kernel renames after the move, so a host link of the same name never collides)."""
        self.ipr.link("set", index=index, net_ns_fd=target.ns_fd, ifname=new_name)

    def link_details(self, name: str) -> "LinkDetails | None":
        """Kind-specific facts CHECK compares: parent index, macvlan/ipvlan mode, vlan id."""
        try:  # RTM_GETLINK by name (the kernel looks it up; get_links(ifname=) would dump all)
            msgs = self.ipr.link("get", ifname=name)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        if not msgs:
            return None
        return _details_from_msg(msgs[0])

    # --- read-only discovery (cni-bridge status / gc; cni_bridge/inventory.py) -------------
    def all_link_details(self) -> list["LinkDetails"]:
        """Every link of this namespace with its parent / peer (one dump, not one per link)."""
        return [_details_from_msg(msg) for msg in self.ipr.get_links()]

    def netnsid_of(self, ns_fd: int) -> int | None:
        """The id this namespace knows the namespace open at `ns_fd` by (what a veth's
        IFLA_LINK_NETNSID names), None if it has none. Never assigns an id."""
        try:
            reply = self.ipr.get_netnsid(fd=ns_fd)
        except NetlinkError:
            return None
        nsid = reply.get("nsid") if isinstance(reply, dict) else None
        return None if nsid is None or nsid < 0 or nsid >= 0xFFFFFFFF else int(nsid)

    def set_sysctl(self, path: str, value: str) -> bool:
        """Write a per-namespace sysctl (`path` below /proc/sys, with slashes, since interface names
        may contain dots) in this handle's namespace; best effort: False on failure.
        /proc/sys/net resolves the namespace of the calling thread, hence the short setns."""
        def write() -> bool:
            try:
                with open("/proc/sys/" + path, "w") as f:
                    f.write(value)
                return True
            except OSError:
                return False
        if self.ns_fd is None:
            return write()
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(self.ns_fd)
            try:
                return write()
            finally:
                _setns(own)
        finally:
            os.close(own)


# --- sysctls -------------------------------------------------------------------------------
def ensure_sysctl(name: str, value: str) -> None:
    """Write a sysctl only when it differs: a write costs more than a read and may be audited."""
    path = "/proc/sys/" + name.replace(".", "/")
    try:
        with open(path) as f:
            if f.read().strip() == value:
                return
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise PluginError(INTERNAL, f"cannot set sysctl {name}={value}", exc.strerror or str(exc)) from None


def netlink_error_text(exc: NetlinkError) -> str:
    return f"{os.strerror(exc.code)} (errno {exc.code})"
