"""Per-network runtime lock (flock): serialises the short sections that read-modify-write
shared host state of one network (its masquerade set, its bridge address). The kernel drops an
flock when its holder dies, so a crashed plugin never blocks the next one."""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator

RUN_DIR = os.environ.get("PYBRIDGE_RUN_DIR", "/run/cni-bridge")


@contextlib.contextmanager
def network_lock(network: str) -> Iterator[None]:
    """`network` must already be validated (it becomes a file name)."""
    lock_dir = os.path.join(RUN_DIR, "locks")
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(lock_dir, network + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
