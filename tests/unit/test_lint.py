"""The walls between layers are checked by ruff, not by prose (pyproject.toml [tool.ruff]):
pyflakes, import order, and banned imports, so that only cni_bridge.kernel imports pyroute2 or
ctypes. Run with the tests so that nobody has to remember to run it (`ruff` is in the `test`
extra that tests/run.sh installs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def ruff(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True)


def test_ruff_check_is_clean() -> None:
    proc = ruff("check", "--no-cache", "cni_bridge", "tests", "bench")
    assert proc.returncode == 0, f"ruff check cni_bridge tests bench:\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("source", ["import pyroute2\n", "from pyroute2 import IPRoute\n",
                                    "import ctypes\n", "from ctypes import CDLL\n"])
def test_only_the_kernel_package_may_import_pyroute2_or_ctypes(source: str) -> None:
    """The rule itself: the same import is refused in a mode module and accepted in the kernel."""
    used = f"{source}\n_ = {source.split()[-1]}\n"
    outside = ruff("check", "--no-cache", "--stdin-filename", "cni_bridge/modes/example.py", "-", stdin=used)
    assert outside.returncode == 1 and "TID251" in outside.stdout, outside.stdout + outside.stderr
    inside = ruff("check", "--no-cache", "--stdin-filename", "cni_bridge/kernel/example.py", "-", stdin=used)
    assert inside.returncode == 0, inside.stdout + inside.stderr
