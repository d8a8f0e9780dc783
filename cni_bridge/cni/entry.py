"""Console-script entry points `pybridge` and `pybridge-ipam`.

Imports only the standard library at module level: the heavy core (pyroute2) is imported only
when the work is done in this process.
"""

from __future__ import annotations

import os
import sys


def _run(plugin: str) -> None:
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print(f"{plugin}: a CNI plugin (see https://www.cni.dev). It is run by container runtimes with\n"
              "CNI_COMMAND=ADD|DEL|CHECK|VERSION|GC|STATUS and the network configuration on stdin.\n"
              "Configuration keys are documented in the pybridge README.")
        sys.exit(0)
    env = dict(os.environ)
    from cni_bridge.cni.handler import handle
    response = handle(plugin, env, stdin)
    sys.stdout.buffer.write(response.stdout)
    sys.stdout.flush()
    if response.log:
        print(response.log, file=sys.stderr)
    sys.exit(response.exit_code)


def main() -> None:
    _run("pybridge")


def ipam_main() -> None:
    _run("pybridge-ipam")
