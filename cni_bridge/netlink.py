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
import threading
from dataclasses import dataclass
from typing import Iterator

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

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


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def root() -> "Netlink":
    """A netlink handle in the caller's (host) namespace."""
    return Netlink(IPRoute())


@contextlib.contextmanager
def netns(path: str) -> Iterator["Netlink"]:
    """A netlink handle inside the namespace at `path`; raises NetnsGone if it is not there."""
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
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
                handle = Netlink(IPRoute(), ns_fd=target)
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

    def __init__(self, ipr: IPRoute, ns_fd: int | None = None) -> None:
        self.ipr = ipr
        self.ns_fd = ns_fd

    def close(self) -> None:
        self.ipr.close()

    def __enter__(self) -> "Netlink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- links -----------------------------------------------------------------------------
    def link(self, name: str) -> Link | None:
        try:
            msgs = self.ipr.get_links(ifname=name)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return _link_from_msg(msgs[0]) if msgs else None

    def link_by_index(self, index: int) -> Link | None:
        try:
            return _link_from_msg(self.ipr.get_links(index)[0])
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
        """One request: veth pair, host end enslaved and up, peer created directly in the target netns."""
        peer: dict = {"ifname": peer_name, "net_ns_fd": target.ns_fd}
        kwargs: dict = {"ifname": host_name, "kind": "veth", "state": "up", "peer": peer}
        if mtu:
            kwargs["mtu"] = mtu
            peer["mtu"] = mtu
        if master is not None:
            kwargs["master"] = master
        if peer_mac:
            peer["address"] = peer_mac
        self.ipr.link("add", **kwargs)
        created = self.link(host_name)
        assert created is not None
        return created

    def create_veth_pair(self, host_name: str, peer_name: str, *, mtu: int | None, master: int | None,
                         peer_mac: str | None = None) -> Link:
        """Both ends in this namespace (Docker moves the peer into the container itself)."""
        peer: dict = {"ifname": peer_name}
        kwargs: dict = {"ifname": host_name, "kind": "veth", "state": "up", "peer": peer}
        if mtu:
            kwargs["mtu"] = mtu
            peer["mtu"] = mtu
        if master is not None:
            kwargs["master"] = master
        if peer_mac:
            peer["address"] = peer_mac
        self.ipr.link("add", **kwargs)
        created = self.link(host_name)
        assert created is not None
        return created

    def add_link(self, **kwargs) -> None:
        """Generic link creation for the macvlan/ipvlan/vlan modes (kwargs as pyroute2 link())."""
        self.ipr.link("add", **kwargs)

    def set_link(self, index: int, **kwargs) -> None:
        self.ipr.link("set", index=index, **kwargs)

    def set_up(self, index: int) -> None:
        self.ipr.link("set", index=index, state="up")

    def set_hairpin(self, index: int, on: bool) -> None:
        self.ipr.link("set", index=index, kind="bridge_slave", mode=1 if on else 0)

    def delete_link(self, name: str) -> bool:
        """Delete by name; False when it was not there (DEL must be idempotent)."""
        try:
            self.ipr.link("del", ifname=name)
            return True
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                return False
            raise

    # --- addresses -------------------------------------------------------------------------
    def addresses(self, index: int) -> list[IPInterface]:
        out: list[IPInterface] = []
        for msg in self.ipr.get_addr(index=index):
            addr = msg.get("IFA_ADDRESS")
            if addr:
                out.append(ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}"))
        return out

    def add_address(self, index: int, iface: IPInterface) -> None:
        """Add an address; already present is fine. IPv6 skips DAD so it is usable at once."""
        kwargs: dict = {"index": index, "address": str(iface.ip), "prefixlen": iface.network.prefixlen}
        if iface.version == 6:
            kwargs["flags"] = IFA_F_NODAD
        else:
            kwargs["broadcast"] = str(iface.network.broadcast_address) if iface.network.prefixlen < 31 else None
            if kwargs["broadcast"] is None:
                del kwargs["broadcast"]
        try:
            self.ipr.addr("add", **kwargs)
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
        kwargs: dict = {"dst": str(dst)}
        if gateway is not None:
            kwargs["gateway"] = str(gateway)
        if index is not None:
            kwargs["oif"] = index
        try:
            self.ipr.route("add", **kwargs)
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
