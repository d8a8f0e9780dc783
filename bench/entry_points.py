#!/usr/bin/env python3
"""pip's console scripts vs the launchers install.sh writes: time per exec'd call through a warm
daemon, and what each imports.

    sudo .venv/bin/python bench/entry_points.py [--calls 200] [--scripts DIR] [--json OUT]

Both `pybridge` flavours answer CNI VERSION `--calls` times (interleaved, one exec each) through
one private fast-path daemon; VERSION is served like an ADD (forwarded, answered by the daemon),
so the difference between the two is the exec'd start-up alone. The console script is the one
pip wrote next to this interpreter (`.venv/bin/pybridge`, from pyproject [project.scripts]), or
in `--scripts DIR` (e.g. the bin of a venv with a plain, not editable, `pip install .`);
the launcher is written here with `python -m cni_bridge.fastpath.launcher`. A console script
always pays what pip's wrapper does before the entry point (`site`, with an editable install's
finder, and `import re`): the bare-interpreter rows show that share.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cni_bridge.fastpath.launcher import write_launchers  # noqa: E402
from tests.support.daemon import fastpath_daemon  # noqa: E402

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


def shebang(script: Path) -> list[str]:
    """The interpreter and its flags from a script's first line."""
    with open(script, "rb") as f:
        return f.readline()[2:].decode().split()


def imported(script: Path, env: dict[str, str]) -> set[str]:
    """Modules one exec of `script` imports: its shebang's interpreter and flags + -X importtime."""
    interpreter = shebang(script)
    proc = subprocess.run([*interpreter, "-X", "importtime", str(script)], input=STDIN, env=env,
                          capture_output=True)
    return set(IMPORT_LINE.findall(proc.stderr.decode(errors="replace")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="VERSION calls per entry point (default 200)")
    parser.add_argument("--scripts", type=Path, default=Path(sysconfig.get_path("scripts")),
                        help="where pip put the console scripts (default: next to this interpreter)")
    parser.add_argument("--json", type=Path, default=None, help="also write the samples here")
    args = parser.parse_args(argv)
    console = {name: args.scripts / name for name in ("pybridge", "pybridge-ipam")}
    missing = [str(p) for p in console.values() if not p.exists()]
    if missing:
        raise SystemExit(f"no console scripts at {', '.join(missing)}: pip install -e . first")
    with tempfile.TemporaryDirectory(prefix="pbbentry-") as tmp:
        bin_dir = Path(tmp) / "bin"
        write_launchers(str(bin_dir), sys.executable)
        with fastpath_daemon(Path(tmp) / "daemon") as (path, run_dir, _):
            env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "PYBRIDGE_"))}
            env.update(CNI_COMMAND="VERSION", PYBRIDGE_RUN_DIR=run_dir, PYBRIDGE_FASTPATH_SOCKET=path,
                       PYBRIDGE_FASTPATH_DEBUG="1")
            flavours = {
                "launcher (install.sh)": bin_dir / "pybridge",
                "console script (pip)": console["pybridge"],
                "launcher, pybridge-ipam": bin_dir / "pybridge-ipam",
                "console script, pybridge-ipam": console["pybridge-ipam"],
            }
            pip_python = shebang(console["pybridge"])[0]
            bare = {"interpreter -I -S, nothing imported": [sys.executable, "-I", "-S", "-c", "pass"],
                    "console scripts' interpreter, site + import re (pip's wrapper alone)":
                        [pip_python, "-c", "import re"]}
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
            modules = {name: sorted(imported(script, env) - baseline) for name, script in flavours.items()}
    med = {name: statistics.median(xs) for name, xs in samples.items()}
    print(f"median ms per exec'd VERSION served by the daemon ({args.calls} calls each, interleaved)")
    for name in samples:
        extra = f"  {len(modules[name])} modules beyond a bare -I -S start" if name in modules else ""
        print(f"  {name:70s} {med[name]:7.2f} ms{extra}")
    ratio = med["console script (pip)"] / med["launcher (install.sh)"]
    ratio_ipam = med["console script, pybridge-ipam"] / med["launcher, pybridge-ipam"]
    print(f"console script / launcher: pybridge ×{ratio:.2f}, pybridge-ipam ×{ratio_ipam:.2f}")
    entry_only = set(modules["console script (pip)"]) - set(modules["launcher (install.sh)"])
    print(f"modules the console script imports and the launcher does not: {len(entry_only)}")
    print("  " + " ".join(sorted(entry_only)))
    if args.json:
        out: dict[str, Any] = {"calls": args.calls, "median_ms": med, "ratio": ratio, "ratio_ipam": ratio_ipam,
                               "modules": modules, "samples_ms": samples}
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
