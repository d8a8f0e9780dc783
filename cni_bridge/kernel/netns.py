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
