"""flock-based locks shared by every process and thread that changes pybridge state.

The kernel drops an flock when its holder dies, so a crashed plugin never blocks the next one.
Every wait is bounded: after its timeout the caller gets CNI error 11 ("try again") instead of a
runtime that hangs behind a stuck holder (SIGSTOP, hung storage).

A lock file may be removed while the lock is held (`flocked(..., remove=True)`, or a store that
deletes its own directory): whoever was waiting on the old file notices after getting the lock
that its file is no longer the one at the path, and takes the lock again on the new file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Callable, Iterator

from cni_bridge.errors import TRY_AGAIN, PluginError

RUN_DIR = os.environ.get("PYBRIDGE_RUN_DIR", "/run/cni-bridge")
NETWORK_LOCK_TIMEOUT = 30.0      # held for short read-modify-write sections of one network
# Held for a whole ADD or DEL of one attachment, which may wait for a delegated IPAM plugin
# (cni.ipam_client.EXEC_TIMEOUT) and for the network and store locks.
ATTACHMENT_LOCK_TIMEOUT = 150.0


def acquire(path: Path | str, timeout: float, *, make_parent: Callable[[], None] | None = None) -> int:
    """An fd holding an exclusive flock on the file now at `path`; error 11 after `timeout` s.

    Polls with LOCK_NB (a blocking flock cannot time out). After locking, the fd must still be
    the file at `path`: one removed (or replaced) meanwhile by its previous holder is dropped and
    the lock taken again. `make_parent` recreates a parent directory that was removed. Symlinks
    are not followed. Each call opens its own file description, so threads exclude each other.
    """
    deadline = time.monotonic() + timeout
    delay = 0.0002
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except FileNotFoundError:
            if make_parent is None:
                raise
            make_parent()
            continue
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise PluginError(TRY_AGAIN, f"busy: could not lock {path} within {timeout:g}s",
                                          "another operation holds it; try again") from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.01)
            if _is_current(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # removed by its previous holder while we waited: lock the new file


def _is_current(fd: int, path: Path | str) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino)


def remove_held(fd: int, path: Path | str) -> None:
    """Unlink the lock file whose lock `fd` holds (the next taker then creates a new one)."""
    if _is_current(fd, path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def flocked(path: Path | str, timeout: float, *, remove: bool = False,
            make_parent: Callable[[], None] | None = None) -> Iterator[int]:
    """Hold the lock on `path` for the `with` body (see `acquire`); `remove`: unlink the lock
    file before releasing it, for locks that exist only while someone holds them."""
    fd = acquire(path, timeout, make_parent=make_parent)
    try:
        yield fd
    finally:
        try:
            if remove:
                remove_held(fd, path)
        finally:
            os.close(fd)  # closing the only descriptor releases the lock


def _lock_dir() -> str:
    lock_dir = os.path.join(RUN_DIR, "locks")
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    return lock_dir


def lock_path(name: str) -> str:
    """A lock file of the run directory, for locks of other modules (`name`: a safe file name)."""
    return os.path.join(_lock_dir(), name)


@contextlib.contextmanager
def network_lock(network: str, timeout: float = NETWORK_LOCK_TIMEOUT) -> Iterator[None]:
    """Serialises the short sections that read-modify-write shared host state of one network
    (its masquerade set, its bridge address). `network` must already be validated."""
    with flocked(os.path.join(_lock_dir(), network + ".lock"), timeout):
        yield


@contextlib.contextmanager
def attachment_lock(network: str, container_id: str, ifname: str,
                    timeout: float = ATTACHMENT_LOCK_TIMEOUT) -> Iterator[None]:
    """One ADD or DEL at a time per (network, container id, ifname): a runtime's DEL (or a
    retried ADD) waits until an ADD still running for the same attachment (in the daemon, after
    the runtime killed its exec'd client) has finished or undone itself, instead of racing it.
    The file exists only while held (no file per attachment piles up)."""
    import hashlib  # here: the stand-alone pybridge-ipam imports this module but never this lock
    key = hashlib.sha256(f"{network}\0{container_id}\0{ifname}".encode()).hexdigest()[:32]
    lock_dir = _lock_dir()
    with flocked(os.path.join(lock_dir, f"attachment.{key}.lock"), timeout, remove=True,
                 make_parent=lambda: os.makedirs(lock_dir, mode=0o700, exist_ok=True)):
        yield
