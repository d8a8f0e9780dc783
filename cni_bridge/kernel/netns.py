"""Entering a network namespace from one thread.

Why thread-level `setns` instead of pyroute2's `netns=` argument: pyroute2 0.9 forks a helper
process to open a socket in another namespace (milliseconds, and it *creates* the namespace when
the path is missing). `setns(2)` with CLONE_NEWNET only affects the calling thread, and a netlink
socket stays bound to the namespace it was created in, so we switch the thread, open the socket,
and switch back at once. That is safe in the multi-threaded daemon too.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from typing import Iterator

from cni_bridge.kernel.libc import setns


class NetnsGone(Exception):
    """The namespace path does not exist or is not a network namespace any more."""


def open_netns(path: str) -> int:
    """An O_CLOEXEC descriptor of the namespace file at `path`; NetnsGone if it cannot be opened."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not block us
    except OSError as exc:
        raise NetnsGone(f"network namespace {path}: {exc.strerror}") from None


@contextlib.contextmanager
def switched(fd: int, path: str | None = None) -> Iterator[None]:
    """Run the body with the calling thread in the namespace open at `fd`, and always switch
    back. With `path`, a descriptor that is not a network namespace raises NetnsGone naming it."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            setns(fd)
        except OSError as exc:
            if path is None:
                raise
            raise NetnsGone(f"{path} is not a network namespace: {exc.strerror}") from None
        try:
            yield
        finally:
            setns(own)
    finally:
        os.close(own)


def netns_exists(path: str) -> bool:
    """Whether `path` is a network namespace this thread can enter."""
    try:
        target = open_netns(path)
    except NetnsGone:
        return False
    try:
        with switched(target, path):
            return True
    except NetnsGone:
        return False
    finally:
        os.close(target)


# --- named namespaces (/run/netns/NAME) --------------------------------------------------------
# Services that pybridge runs beside a network (the DHCP server, cni_bridge/dhcp) live in a
# namespace of their own, named so that an operator finds them with `ip netns`. `ip netns add`
# does the bind mount that keeps an empty namespace alive; it is the tool operators use too.
NAMED_DIR = "/run/netns"


def named_path(name: str) -> str:
    return os.path.join(NAMED_DIR, name)


def create_named(name: str) -> None:
    """Create /run/netns/NAME (OSError with `ip`'s message if that fails)."""
    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if proc.returncode != 0:
        raise OSError(f"ip netns add {name}: {proc.stderr.strip()}")


def delete_named(name: str) -> bool:
    """Remove /run/netns/NAME (its links go with it once no process holds it); False if absent."""
    if not os.path.exists(named_path(name)):
        return False
    proc = subprocess.run(["ip", "netns", "delete", name], capture_output=True, text=True)
    if proc.returncode != 0 and os.path.exists(named_path(name)):
        raise OSError(f"ip netns delete {name}: {proc.stderr.strip()}")
    return True


def run_in_named(name: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run `argv` (no shell) inside the named namespace and wait for it: for daemons that fork
    into the background themselves and report start-up errors through their exit status."""
    return subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
