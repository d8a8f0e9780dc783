"""install.sh and the paths it owns: the `cni-bridge` command on PATH, and a PYBRIDGE_VENV that is
not a virtualenv (never removed, whatever else is in it).

Everything is installed under tmp_path (tests/support/install.py: every install.sh location is a
setting), with PYBRIDGE_NO_START=1: these tests are about files, not about the running driver.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.install import layout, run_install


def _not_a_venv(path: Path) -> dict[str, bytes]:
    """A directory that looks like a venv to a careless check (an executable bin/python that
    reports some other interpreter) but has no pyvenv.cfg; returns its files' contents."""
    (path / "bin").mkdir(parents=True)
    python = path / "bin" / "python"
    python.write_text("#!/bin/sh\necho /usr/lib/not-the-installer-python\n")
    python.chmod(0o755)
    (path / "precious").write_text("data that is not pybridge's\n")
    return _contents(path)


def _contents(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_cni_bridge_is_linked_onto_path_and_unlinked_by_uninstall(tmp_path: Path) -> None:
    env = {**layout(tmp_path), "PYBRIDGE_NO_START": "1"}
    cli_dir = Path(env["PYBRIDGE_CLI_DIR"])
    proc = run_install(env)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    link = cli_dir / "cni-bridge"
    assert link.is_symlink() and os.readlink(link) == str(tmp_path / "venv" / "bin" / "cni-bridge")
    help_text = subprocess.run([str(link), "status", "--help"], capture_output=True, text=True, timeout=60)
    assert help_text.returncode == 0 and "usage: cni-bridge status" in help_text.stdout
    manifest = (tmp_path / "state" / "install.manifest").read_text().splitlines()
    assert f"link {link} {tmp_path / 'venv' / 'bin' / 'cni-bridge'}" in manifest

    proc = run_install(env, "--uninstall", "--purge")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not link.exists() and not link.is_symlink()
    assert not cli_dir.exists()  # install.sh made it, so uninstall removes it (empty)


def test_install_refuses_a_venv_dir_that_is_not_a_virtualenv(tmp_path: Path) -> None:
    """The "uses another interpreter: recreating it" branch used to rm -rf it."""
    env = {**layout(tmp_path), "PYBRIDGE_NO_START": "1", "PYBRIDGE_SKIP_CHECKS": "1"}
    venv = Path(env["PYBRIDGE_VENV"])
    before = _not_a_venv(venv)
    proc = run_install(env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "not a virtualenv" in proc.stderr
    assert _contents(venv) == before
    assert not (tmp_path / "bin").exists()  # refused before any step that follows


def test_uninstall_without_manifest_refuses_a_venv_dir_that_is_not_a_virtualenv(tmp_path: Path) -> None:
    """With no install manifest, --uninstall falls back to the default locations: PYBRIDGE_VENV
    is removed only when it is a virtualenv."""
    env = layout(tmp_path)
    venv = Path(env["PYBRIDGE_VENV"])
    before = _not_a_venv(venv)
    proc = run_install(env, "--uninstall")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "not a virtualenv" in proc.stderr
    assert _contents(venv) == before
