"""The CNI fast-path daemon as a separate process, for tests that go through the warm path."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path


@contextlib.contextmanager
def fastpath_daemon(base: Path, extra_env: Mapping[str, str] | None = None) -> Iterator[tuple[str, str, subprocess.Popen]]:
    """Start `python -m cni_bridge.fastpath.server` with a private run dir under `base` (its
    locks) and its log in `base/fastpath.log` (a pipe nobody reads would block a chatty daemon);
    yield (socket path, run dir, process). Callers set PYBRIDGE_FASTPATH_SOCKET and
    PYBRIDGE_RUN_DIR to these (else the daemon declines). Stopped with SIGTERM at the end."""
    run_dir = base / "run"
    run_dir.mkdir(parents=True)
    path = str(run_dir / "cni.sock")
    log = base / "fastpath.log"
    env = {**os.environ, "PYBRIDGE_RUN_DIR": str(run_dir), **(extra_env or {})}
    with open(log, "ab") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "cni_bridge.fastpath.server", "--socket", path],
                                env=env, stdout=subprocess.PIPE, stderr=log_file, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready"), log.read_text() or line
        yield path, str(run_dir), proc
    finally:
        proc.terminate()
        proc.wait(30)
