"""Running commands on the host and reading what it has, for the test infrastructure.

Why shell-outs: everything runs `ip`, `nft` and `iptables` with argument lists (never a shell):
no pyroute2 import cost, no fork-inside-asyncio surprises (pyroute2 0.9 `netns.create` forks),
and the same view an operator has. A failed command raises with its stdout and stderr.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["NETNS_DIR", "ip_json", "is_root", "run", "wait_for"]

NETNS_DIR = Path("/run/netns")   # where `ip netns` keeps named namespaces


def is_root() -> bool:
    return os.geteuid() == 0


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
    error: type[Exception] = RuntimeError,
) -> subprocess.CompletedProcess[str]:
    """subprocess.run with text I/O; a failure or a timeout raises `error` with a message that
    carries the command, its stdout and its stderr (stdin is empty unless `input` is given)."""
    try:
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False,
            env=None if env is None else dict(env), stdin=subprocess.DEVNULL if input is None else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise error(f"timed out after {exc.timeout}s: {shlex.join(argv)}\n"
                    f"stdout: {exc.stdout!r}\nstderr: {exc.stderr!r}") from None
    if check and proc.returncode != 0:
        raise error(
            f"command failed (exit {proc.returncode}): {shlex.join(argv)}\n"
            f"stdout: {proc.stdout.strip()[-3000:]}\nstderr: {proc.stderr.strip()[-3000:]}"
        )
    return proc


def ip_json(*args: str, netns: str | None = None) -> list[dict[str, Any]]:
    """`ip -j [-n NETNS] ARGS` parsed; a dump racing with link changes elsewhere is retried."""
    argv = ["ip", "-j"] + (["-n", netns] if netns else []) + list(args)
    for attempt in range(5):
        try:
            out = run(argv).stdout.strip()
            break
        except RuntimeError as exc:  # a dump racing with link changes elsewhere (EINTR): again
            if "Dump was interrupted" not in str(exc) or attempt == 4:
                raise
    return json.loads(out) if out else []


def stop_process(proc: subprocess.Popen, timeout: float, kill: Callable[[], object] | None = None) -> None:
    """SIGTERM, and SIGKILL (`kill()` instead, e.g. for a whole process group) if `proc` has not
    exited after `timeout` s; reaped either way. A daemon gets its chance to clean up first."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        (kill or proc.kill)()
        proc.wait()


def wait_for(pred: Callable[[], bool], timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Poll `pred` until true or `timeout`; for kernel state that settles asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
