"""pip's console scripts reach the fast-path client the way the launchers do (issue 14 item 19).

The launchers install.sh writes start `python -I -S` and call cni_bridge.fastpath.client.main;
the console scripts pip writes from pyproject [project.scripts] run pip's wrapper (`site`,
`import re`: unavoidable for any entry point) and then import the named entry point. That entry
point must cost no more imports than the launcher path: every import is paid on every exec
(bench/entry_points.py measures both). No timings are asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from cni_bridge.fastpath.launcher import write_launchers
from tests.support import importtime

ROOT = Path(__file__).resolve().parents[2]
STDIN = b'{"cniVersion": "1.0.0"}'


def console_scripts() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


@pytest.mark.parametrize("plugin", ["pybridge", "pybridge-ipam"])
def test_console_script_entry_imports_no_more_than_the_launcher(fastpath_daemon, tmp_path, plugin):
    path, run_dir = fastpath_daemon
    write_launchers(str(tmp_path / "bin"), sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "PYBRIDGE_"))}
    env.update(CNI_COMMAND="VERSION", PYBRIDGE_RUN_DIR=run_dir, PYBRIDGE_FASTPATH_SOCKET=path,
               PYBRIDGE_FASTPATH_DEBUG="1")
    module, function = console_scripts()[plugin].split(":")
    # What pip's wrapper does after `site` and `import re`, started like a launcher so that the
    # two reports differ only by the entry point.
    entry = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from {module} import {function}; sys.exit({function}())"
    runs = {"launcher": [str(tmp_path / "bin" / plugin)], "console script": ["-c", entry]}
    imported = {}
    for name, args in runs.items():
        proc = subprocess.run([sys.executable, "-I", "-S", "-X", "importtime", *args], env=env, input=STDIN,
                              capture_output=True)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["cniVersion"] == "1.0.0"
        assert b"served by daemon" in proc.stderr, f"{name}: {proc.stderr[-400:]!r}"
        imported[name] = importtime.modules(proc.stderr) - importtime.at_start("-I", "-S")
    assert imported["console script"] <= imported["launcher"], imported["console script"] - imported["launcher"]
