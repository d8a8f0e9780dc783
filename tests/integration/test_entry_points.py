"""The plugins pip installs start as lean as the launchers install.sh writes (issue 14 item 19).

The launchers start `python -I -S` and call cni_bridge.fastpath.client.main. A console script
would first run `site` and pip's wrapper (`import re`): about twice the start-up of an exec'd
call. So `pybridge` and `pybridge-ipam` are scripts (pyproject [tool.setuptools] script-files,
`scripts/`) whose sh preamble starts the interpreter beside them with `-I -S`. Here the checkout is
pip-installed (not editable) into a fresh virtualenv, and its scripts are run as a runtime runs
them: by path, and through a symlink in another directory (a CNI bin dir). No timings are
asserted: bench/entry_points.py measures both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cni_bridge.fastpath.launcher import write_launchers
from tests.support import importtime
from tests.support.install import pip_install_checkout

STDIN = b'{"cniVersion": "1.0.0"}'
PLUGINS = ("pybridge", "pybridge-ipam")


@pytest.fixture(scope="module")
def pip_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pip_install_checkout(tmp_path_factory.mktemp("pipvenv"))


def daemon_env(fastpath_daemon: tuple[str, str]) -> dict[str, str]:
    path, run_dir = fastpath_daemon
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "PYBRIDGE_"))}
    env.update(CNI_COMMAND="VERSION", PYBRIDGE_RUN_DIR=run_dir, PYBRIDGE_FASTPATH_SOCKET=path,
               PYBRIDGE_FASTPATH_DEBUG="1")
    return env


@pytest.mark.parametrize("plugin", PLUGINS)
def test_pip_installed_plugin_starts_like_the_launcher(pip_venv: Path, fastpath_daemon, tmp_path: Path,
                                                       plugin: str) -> None:
    env = daemon_env(fastpath_daemon)
    script = pip_venv / "bin" / plugin
    cni_bin = tmp_path / "cni-bin"
    cni_bin.mkdir()
    (cni_bin / plugin).symlink_to(script)
    for argv in ([str(script)], [str(cni_bin / plugin)]):
        proc = subprocess.run(argv, env=env, input=STDIN, capture_output=True)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["cniVersion"] == "1.0.0"
        assert b"served by daemon" in proc.stderr, proc.stderr[-400:]
        assert f"{plugin} VERSION".encode() in proc.stderr, proc.stderr[-400:]

    # the sh preamble execs the virtualenv's own interpreter with the launchers' flags
    trace = subprocess.run(["sh", "-x", str(cni_bin / plugin)], env=env, input=STDIN, capture_output=True)
    assert trace.returncode == 0, trace.stderr
    execs = [ln for ln in trace.stderr.decode().splitlines() if ln.startswith("+ exec ")]
    assert execs == [f"+ exec {pip_venv}/bin/python -I -S {script}"], execs

    # what that interpreter then imports: nothing the launcher does not
    write_launchers(str(tmp_path / "launchers"), sys.executable)
    runs = {"launcher": [sys.executable, str(tmp_path / "launchers" / plugin)],
            "pip script": [str(pip_venv / "bin" / "python"), str(script)]}
    imported = {}
    for name, (python, path) in runs.items():
        proc = subprocess.run([python, "-I", "-S", "-X", "importtime", path], env=env, input=STDIN,
                              capture_output=True)
        assert proc.returncode == 0 and b"served by daemon" in proc.stderr, f"{name}: {proc.stderr[-400:]!r}"
        imported[name] = importtime.modules(proc.stderr) - importtime.at_start("-I", "-S")
    assert "site" not in imported["pip script"]
    assert imported["pip script"] <= imported["launcher"], imported["pip script"] - imported["launcher"]
