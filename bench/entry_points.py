#!/usr/bin/env python3
"""The plugins pip installs vs the launchers install.sh writes: time per exec'd call through a
warm daemon, and what each imports.

    sudo .venv/bin/python bench/entry_points.py [--calls 200] [--json OUT]

The checkout is pip-installed (plain, not editable, no dependencies) into a scratch virtualenv;
its `pybridge` is the script from `scripts/` whose sh preamble execs that virtualenv's python with
`-I -S`. Against it: the launcher (`python -m cni_bridge.fastpath.launcher`), and the console
script pip would write for a [project.scripts] entry (`site`, then `import re`, then the client),
which is what the pip entry points were before. Each answers CNI VERSION `--calls` times
(interleaved, one exec each) through one private fast-path daemon; VERSION is served like an ADD
(forwarded, answered by the daemon), so the differences are the exec'd start-up alone. The
bare-interpreter rows show what `site` and sh cost by themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cni_bridge.fastpath.launcher import write_launchers  # noqa: E402
from tests.support.daemon import fastpath_daemon  # noqa: E402
from tests.support.install import pip_install_checkout  # noqa: E402

STDIN = b'{"cniVersion": "1.0.0"}'
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)", re.M)


def timed(argv: list[str], env: dict[str, str]) -> float:
    """Milliseconds for one exec; the call must succeed and be served by the daemon when the
    environment asks for the debug line."""
    started = time.perf_counter()
    proc = subprocess.run(argv, input=STDIN, env=env, capture_output=True)
    elapsed = (time.perf_counter() - started) * 1000
    if proc.returncode != 0 or json.loads(proc.stdout).get("cniVersion") != "1.0.0":
        raise RuntimeError(f"{argv[0]} failed: {proc.stdout[:300]!r} {proc.stderr[-300:]!r}")
    if b"pybridge fastpath: served by daemon" not in proc.stderr:
        raise RuntimeError(f"{argv[0]} was not served by the daemon: {proc.stderr[-300:]!r}")
    return elapsed


CONSOLE_SCRIPT = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from cni_bridge.fastpath.client import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main({plugin!r}))
"""


def imported(argv: list[str], env: dict[str, str]) -> set[str]:
    """Modules one run of the Python command `argv` imports (`-X importtime` added)."""
    proc = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], input=STDIN, env=env, capture_output=True)
    return set(IMPORT_LINE.findall(proc.stderr.decode(errors="replace")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="VERSION calls per entry point (default 200)")
    parser.add_argument("--json", type=Path, default=None, help="also write the samples here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pbbentry-") as tmp:
        venv_bin = pip_install_checkout(Path(tmp)) / "bin"
        bin_dir = Path(tmp) / "bin"
        write_launchers(str(bin_dir), sys.executable)
        console = Path(tmp) / "console-pybridge"
        console.write_text(CONSOLE_SCRIPT.format(python=venv_bin / "python", plugin="pybridge"))
        console.chmod(0o755)
        with fastpath_daemon(Path(tmp) / "daemon") as (path, run_dir, _):
            env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "PYBRIDGE_"))}
            env.update(CNI_COMMAND="VERSION", PYBRIDGE_RUN_DIR=run_dir, PYBRIDGE_FASTPATH_SOCKET=path,
                       PYBRIDGE_FASTPATH_DEBUG="1")
            flavours = {
                "launcher (install.sh)": bin_dir / "pybridge",
                "pip install: scripts/pybridge": venv_bin / "pybridge",
                "launcher, pybridge-ipam": bin_dir / "pybridge-ipam",
                "pip install: scripts/pybridge-ipam": venv_bin / "pybridge-ipam",
                "a console script (pip's wrapper), before": console,
            }
            python_of = {  # the Python command each flavour comes down to, for the import report
                "launcher (install.sh)": [sys.executable, "-I", "-S", str(bin_dir / "pybridge")],
                "pip install: scripts/pybridge": [str(venv_bin / "python"), "-I", "-S", str(venv_bin / "pybridge")],
                "a console script (pip's wrapper), before": [str(venv_bin / "python"), str(console)],
            }
            bare = {"interpreter -I -S, nothing imported": [sys.executable, "-I", "-S", "-c", "pass"],
                    "sh, then interpreter -I -S": ["sh", "-c", f"exec {venv_bin}/python -I -S -c pass"],
                    "interpreter with site + import re (pip's wrapper alone)":
                        [str(venv_bin / "python"), "-c", "import re"]}
            samples: dict[str, list[float]] = {name: [] for name in [*flavours, *bare]}
            for script in flavours.values():  # warm the page cache and the daemon
                timed([str(script)], env)
            for _ in range(args.calls):
                for name, script in flavours.items():
                    samples[name].append(timed([str(script)], env))
                for name, cmd in bare.items():
                    started = time.perf_counter()
                    subprocess.run(cmd, check=True)
                    samples[name].append((time.perf_counter() - started) * 1000)
            bare_start = subprocess.run([sys.executable, "-I", "-S", "-X", "importtime", "-c", "pass"],
                                        capture_output=True, text=True).stderr
            baseline = set(IMPORT_LINE.findall(bare_start))
            modules = {name: sorted(imported(cmd, env) - baseline) for name, cmd in python_of.items()}
    med = {name: statistics.median(xs) for name, xs in samples.items()}
    print(f"median ms per exec'd VERSION served by the daemon ({args.calls} calls each, interleaved)")
    for name in samples:
        extra = f"  {len(modules[name])} modules beyond a bare -I -S start" if name in modules else ""
        print(f"  {name:70s} {med[name]:7.2f} ms{extra}")
    ratio = med["pip install: scripts/pybridge"] / med["launcher (install.sh)"]
    ratio_ipam = med["pip install: scripts/pybridge-ipam"] / med["launcher, pybridge-ipam"]
    ratio_console = med["a console script (pip's wrapper), before"] / med["launcher (install.sh)"]
    print(f"pip-installed / launcher: pybridge ×{ratio:.2f}, pybridge-ipam ×{ratio_ipam:.2f}; "
          f"a console script / launcher ×{ratio_console:.2f}")
    extra = set(modules["pip install: scripts/pybridge"]) - set(modules["launcher (install.sh)"])
    print(f"modules the pip-installed script imports and the launcher does not: {len(extra)} {sorted(extra)}")
    if args.json:
        out: dict[str, Any] = {"calls": args.calls, "median_ms": med, "ratio": ratio, "ratio_ipam": ratio_ipam, "ratio_console": ratio_console,
                               "modules": modules, "samples_ms": samples}
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
