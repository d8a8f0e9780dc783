"""Crash injection for the reliability tests: die by SIGKILL right after a chosen step.

Why: "a crash never leaves the host half-configured" can only be shown by crashing at every
step and checking that DEL (or GC) puts the host back exactly as it was. Off unless the
environment variable PYBRIDGE_CRASH_AFTER is set when this module is first imported; then
`step()` is one global lookup and a return.

    PYBRIDGE_CRASH_AFTER=3            after the 3rd step this process reports (1-based)
    PYBRIDGE_CRASH_AFTER=veth         after the first step named "veth"

Before dying the process writes `pybridge crashpoint: <n> <name>` to stderr, so a test can tell
which step it killed and when it has run out of steps (the operation then simply succeeds).
PYBRIDGE_CRASH_TRACE=1 lists every step reached on stderr without crashing.

The exec'd `pybridge` does its work in-process when the variable is set (it never forwards such
a request to the warm daemon, which reads only its own environment here), so it is the plugin
process that dies.
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "PYBRIDGE_CRASH_AFTER"
TRACE_ENV = "PYBRIDGE_CRASH_TRACE"

_target = os.environ.get(ENV) or None
_trace = os.environ.get(TRACE_ENV) == "1"
_enabled = _target is not None or _trace
_count = 0


def step(name: str) -> None:
    """Mark that step `name` has just completed (a no-op unless crash injection is on)."""
    if _enabled:
        _reached(name)


def _reached(name: str) -> None:
    global _count
    _count += 1
    if _trace:
        print(f"pybridge crashpoint trace: {_count} {name}", file=sys.stderr, flush=True)
    if _target is not None and (_target == name or _target == str(_count)):
        print(f"pybridge crashpoint: {_count} {name}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
