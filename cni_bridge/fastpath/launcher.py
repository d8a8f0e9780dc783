"""Write lean `pybridge` / `pybridge-ipam` executables for a CNI bin directory.

Why not a console script: its interpreter runs `site`, which in an editable install imports
pathlib & co. for the editable finder (~16 ms per exec here, more than the whole fast path). The
launchers start the venv's real interpreter with `-I -S` (isolated: no PYTHONPATH, no user site,
no cwd on sys.path; no site) and put only the directory holding `cni_bridge` on sys.path. The
in-process fallback runs `site.main()` itself before importing pyroute2. The scripts pip installs
(`scripts/pybridge`) do the same from wherever pip put them; bench/entry_points.py measures both.

    python -m cni_bridge.fastpath.launcher /opt/cni/bin [--python /path/to/venv/bin/python]
"""

from __future__ import annotations

import argparse
import os
import sys

import cni_bridge

TEMPLATE = """#!{python} -IS
# pybridge CNI launcher (written by cni_bridge.fastpath.launcher; regenerate, do not edit)
import sys
sys.path.insert(0, {root!r})
from cni_bridge.fastpath.client import main
main({plugin!r})
"""

PROGRAMS = ("pybridge", "pybridge-ipam")


def package_root() -> str:
    """The directory that contains the `cni_bridge` package (site-packages or the source tree)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(cni_bridge.__file__)))


def write_launchers(bin_dir: str, python: str | None = None) -> list[str]:
    """(Re)write both launchers atomically; returns their paths."""
    python = python or sys.executable
    if not os.path.isabs(python):
        raise ValueError("the interpreter path must be absolute (a shebang needs it)")
    os.makedirs(bin_dir, exist_ok=True)
    written = []
    for name in PROGRAMS:
        path = os.path.join(bin_dir, name)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(TEMPLATE.format(python=python, root=package_root(), plugin=name))
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cni_bridge.fastpath.launcher", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bin_dir", help="CNI plugin directory, e.g. /opt/cni/bin")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter of the environment pybridge is installed in (default: this one)")
    args = parser.parse_args(argv)
    for path in write_launchers(args.bin_dir, args.python):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
