"""Running install.sh without touching the host's real paths.

Every location install.sh writes to is an environment setting; `layout(root)` points all of them
into one temporary directory, so a test can install, inspect and uninstall as root while the
host's /opt/cni/bin, /etc/cni/net.d, /usr/local/bin and /var/lib stay as they were.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.paths import INSTALL_SH as INSTALL
from tests.support.paths import REPO


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


def pip_install_checkout(base: Path) -> Path:
    """The checkout as `pip install .` gives it to a user: copied under `base` (the source tree
    gets no build files), built into a wheel, installed without dependencies (the exec'd client
    needs none) into a new virtualenv `base/venv`, which is returned."""
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("cni_bridge", "scripts"):
        shutil.copytree(REPO / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    for step in (["wheel", "--wheel-dir", str(base / "wheels"), str(src)],
                 ["--python", str(venv / "bin" / "python"), "install", "--no-index",
                  "--find-links", str(base / "wheels"), "cni-bridge"]):
        proc = subprocess.run([sys.executable, "-m", "pip", *step, "--quiet", "--no-deps"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"pip {step[0]} failed: {proc.stderr[-2000:]}")
    return venv
