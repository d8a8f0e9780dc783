"""The `cni-bridge` management CLI as an operator runs it: the venv's console script (or
`python -m cni_bridge.cli` when the venv has none), in a subprocess with the test's environment.

Why here: the CLI tests (unit and integration) and the restart tests all drive the same command,
and `status` / `gc` need the same four source directories every time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support.paths import REPO

if TYPE_CHECKING:
    from tests.support.cnitool import CniTool

__all__ = ["CLI", "cli", "cli_sources"]

CLI = [sys.executable, "-m", "cni_bridge.cli"] if not (REPO / ".venv/bin/cni-bridge").exists() \
    else [str(REPO / ".venv/bin/cni-bridge")]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`cni-bridge ARGS` with `env` added to this process's environment; text output captured."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def cli_sources(cni: CniTool, tmp_path: Path) -> list[str]:
    """`status` / `gc` options reading the test's conf dir (`tmp/net.d`), `cni`'s dataDir and
    libcni cache, and a Docker state dir that does not exist (no Docker endpoints)."""
    return ["--conf-dir", str(tmp_path / "net.d"), "--data-dir", str(cni.data_dir),
            "--cni-cache-dir", str(cni.cache_dir), "--state-dir", str(tmp_path / "no-docker")]
