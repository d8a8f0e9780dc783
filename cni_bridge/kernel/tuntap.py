"""Persistent tap devices through /dev/net/tun (ioctls: the kernel offers no rtnetlink way to
create a tun/tap device; `ip tuntap add` does the same).

A tap is made persistent (TUNSETPERSIST) so that it outlives the descriptor that created it: the
VMM (QEMU `-netdev tap,ifname=...`, Firecracker, Kata) opens it later by name. Owner and group
(TUNSETOWNER / TUNSETGROUP) let an unprivileged VMM attach. Multi-queue must match how the VMM
opens it (the kernel refuses a TUNSETIFF whose IFF_MULTI_QUEUE differs from the device's).

The device is created in the network namespace the descriptor was opened in (the tun socket
takes its namespace at open(2)), so `create_tap(..., ns_fd=...)` opens /dev/net/tun with the
thread switched into that namespace. Deleting needs no ioctl: RTM_DELLINK removes a persistent
tun device (links.delete_link).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
from dataclasses import dataclass
from typing import Iterator

from cni_bridge.kernel.netns import switched

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
TUNSETGROUP = 0x400454CE
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
TUN_TYPE_TAP = 2  # IFLA_TUN_TYPE of a tap (1: tun)


@dataclass(frozen=True)
class TunInfo:
    """What rtnetlink reports about a tun/tap device (IFLA_INFO_DATA of kind "tun")."""
    tap: bool
    owner: int | None       # None: anyone with CAP_NET_ADMIN (the kernel's -1)
    group: int | None
    multi_queue: bool
    persist: bool


def _ifreq(name: str, flags: int) -> bytes:
    """struct ifreq: 16-byte name, then the flags short, padded to the union's 40 bytes."""
    return struct.pack("16sH22x", name.encode(), flags)


@contextlib.contextmanager
def _tun_fd(ns_fd: int | None) -> Iterator[int]:
    if ns_fd is None:
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    else:
        with switched(ns_fd):
            fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def create_tap(name: str, *, owner: int | None = None, group: int | None = None,
               multi_queue: bool = False, ns_fd: int | None = None) -> None:
    """Create the persistent tap `name` (in the namespace open at `ns_fd`, else the caller's).
    The caller makes sure the name is free: TUNSETIFF on an existing tap attaches to it instead
    of failing, so this raises FileExistsError when the kernel hands back another name."""
    flags = IFF_TAP | IFF_NO_PI | (IFF_MULTI_QUEUE if multi_queue else 0)
    with _tun_fd(ns_fd) as fd:
        answer = fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, flags))
        got = answer[:16].split(b"\0", 1)[0].decode()
        if got != name:
            raise FileExistsError(errno.EEXIST, f"tun device came back as {got}, not {name}")
        if owner is not None:
            fcntl.ioctl(fd, TUNSETOWNER, owner)
        if group is not None:
            fcntl.ioctl(fd, TUNSETGROUP, group)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)


@contextlib.contextmanager
def opened_tap(name: str, *, multi_queue: bool = False, ns_fd: int | None = None) -> Iterator[int]:
    """A descriptor attached to the existing tap `name` (what a VMM holds): frames written to
    it enter the host through the tap, frames the host sends out of the tap can be read."""
    flags = IFF_TAP | IFF_NO_PI | (IFF_MULTI_QUEUE if multi_queue else 0)
    with _tun_fd(ns_fd) as fd:
        fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, flags))
        yield fd


def tun_info(linkinfo_data) -> TunInfo | None:
    """Parse IFLA_INFO_DATA of a kind "tun" link (None when the attributes are absent)."""
    if linkinfo_data is None or linkinfo_data.get("IFLA_TUN_TYPE") is None:
        return None

    def ident(value: int | None) -> int | None:
        return None if value is None or value == 0xFFFFFFFF or value < 0 else int(value)

    return TunInfo(tap=linkinfo_data.get("IFLA_TUN_TYPE") == TUN_TYPE_TAP,
                   owner=ident(linkinfo_data.get("IFLA_TUN_OWNER")),
                   group=ident(linkinfo_data.get("IFLA_TUN_GROUP")),
                   multi_queue=bool(linkinfo_data.get("IFLA_TUN_MULTI_QUEUE")),
                   persist=bool(linkinfo_data.get("IFLA_TUN_PERSIST")))
