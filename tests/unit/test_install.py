"""Issue 9: install.sh documents itself and refuses bad usage (no root needed). Installing into
temporary directories for real: tests/integration/test_install.py."""

from __future__ import annotations

import subprocess

from tests.support.paths import INSTALL_SH as INSTALL


def test_help() -> None:
    proc = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for word in ("--uninstall", "--purge", "PYBRIDGE_VENV", "CNI_BIN_DIR", "CNI_CONF_DIR", "PYBRIDGE_NO_START",
                 "Exit codes"):
        assert word in proc.stdout
    assert subprocess.run(["bash", str(INSTALL), "--bogus"], capture_output=True).returncode == 2
