"""Where the checkout and its virtualenv are: every test runs the code of this working tree."""

from __future__ import annotations

from pathlib import Path

__all__ = ["INSTALL_SH", "REPO", "VENV_BIN"]

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"   # made by .ci/setup.sh: pybridge, pybridge-ipam, cni-bridge
INSTALL_SH = REPO / "install.sh"
