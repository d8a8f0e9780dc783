"""Sysctls: host-wide ones written only when they differ, per-namespace ones written from a
thread switched into the namespace, and IP forwarding checked through netconf first."""

from __future__ import annotations

import socket

from cni_bridge.errors import INTERNAL, PluginError
from cni_bridge.kernel.handle import Handle
from cni_bridge.kernel.netns import switched
from cni_bridge.kernel.nlsock import NetlinkError


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


class Sysctls(Handle):
    """The sysctl requests of a namespace handle (see netlink.Netlink)."""

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
        with switched(self.ns_fd):
            return write()


def set_route_localnet(ifname: str, enabled: bool) -> bool:
    """net.ipv4.conf.<ifname>.route_localnet in the calling thread's namespace: lets a packet
    with a 127.0.0.0/8 source be routed out of `ifname` (host -> 127.0.0.1:port DNATed to a
    container). Written by path, since interface names may contain dots. False when the
    interface is gone."""
    path = f"/proc/sys/net/ipv4/conf/{ifname}/route_localnet"
    value = "1" if enabled else "0"
    try:
        with open(path) as f:
            if f.read().strip() == value:
                return True
        with open(path, "w") as f:
            f.write(value)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise PluginError(INTERNAL, f"cannot set route_localnet on {ifname}", exc.strerror or str(exc)) from None

