"""The libc calls Python has no binding for, through ctypes: setns(2) for netns.py, and two
process settings of the fast-path daemon (mallopt, prctl)."""

from __future__ import annotations

import ctypes
import os
import signal

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNET = 0x40000000
M_ARENA_MAX = -8
PR_SET_PDEATHSIG = 1


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling thread (only it) into the namespace open at `fd`."""
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives busy threads their own malloc arenas (up to 8 per CPU); with 32 workers that
    doubles the resident memory for nothing. Only for the stand-alone daemon process."""
    try:
        _libc.mallopt(M_ARENA_MAX, arenas)
    except AttributeError:  # not glibc
        pass


def die_with_parent() -> None:
    """SIGTERM this process when its parent dies (a subprocess preexec_fn)."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
