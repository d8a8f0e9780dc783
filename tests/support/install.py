"""Running install.sh without touching the host's real paths.

Every location install.sh writes to is an environment setting; `layout(root)` points all of them
into one temporary directory, so a test can install, inspect and uninstall as root while the
host's /opt/cni/bin, /etc/cni/net.d, /usr/local/bin and /var/lib stay as they were.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.paths import INSTALL_SH as INSTALL


def layout(root: Path) -> dict[str, str]:
    """install.sh settings that keep everything under `root` (the supervisor, not systemd)."""
    return {"PYBRIDGE_VENV": str(root / "venv"), "CNI_BIN_DIR": str(root / "bin"),
            "CNI_CONF_DIR": str(root / "net.d"), "PYBRIDGE_STATE_DIR": str(root / "state"),
            "PYBRIDGE_IPAM_DIR": str(root / "leases"), "PYBRIDGE_RUN_DIR": str(root / "run"),
            "PYBRIDGE_LOG": str(root / "log" / "cni-bridge.log"),
            "PYBRIDGE_CLI_DIR": str(root / "usr-local-bin"),
            "DOCKER_PLUGIN_DIR": str(root / "plugins"), "DOCKER_SPEC_DIR": str(root / "docker-plugins"),
            "PYBRIDGE_SERVICE": "supervise"}


def run_install(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`bash install.sh ARGS` with `env` on top of this process's environment."""
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})
