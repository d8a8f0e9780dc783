"""Console-script entry points `pybridge` and `pybridge-ipam`.

Imports only the standard library at module level. The request goes to the warm daemon
(cni_bridge.fastpath) when one listens; otherwise, and only if the daemon never accepted it, the
work is done here with the same `handler.handle` the daemon uses, so both paths print the same
bytes. The heavy core (pyroute2) is imported only in that in-process case.

Started with `python -I -S` (the launchers written by `cni_bridge.fastpath.launcher`), site
packages are set up only when the in-process path needs them: `site` costs ~2-15 ms per exec.
"""

from __future__ import annotations

import os
import sys

HELP = ("{plugin}: a CNI plugin (see https://www.cni.dev). It is run by container runtimes with\n"
        "CNI_COMMAND=ADD|DEL|CHECK|VERSION|GC|STATUS and the network configuration on stdin.\n"
        "Configuration keys are documented in the pybridge README.")


def in_process(plugin: str, stdin: bytes):
    """Do the work in this process (no daemon, or it declined)."""
    if sys.flags.no_site:
        import site
        site.main()
    from cni_bridge.cni.handler import handle
    from cni_bridge.fastpath.client import Reply
    response = handle(plugin, dict(os.environ), stdin)
    return Reply(response.stdout, response.log, response.exit_code, "in-process")


def _run(plugin: str) -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print(HELP.format(plugin=plugin))
        sys.exit(0)
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    from cni_bridge.fastpath import client
    # Crash injection (tests only) must kill this process, not the shared daemon.
    crash_test = "PYBRIDGE_CRASH_AFTER" in os.environ or "PYBRIDGE_CRASH_TRACE" in os.environ
    reply = None if crash_test else client.forward(plugin, os.environb, stdin, client.socket_path())
    if reply is None:
        reply = in_process(plugin, stdin)
    sys.stdout.buffer.write(reply.stdout)
    sys.stdout.flush()
    if reply.log:
        from cni_bridge.logsetup import emit  # stdlib only; also appends to $PYBRIDGE_LOG_FILE
        emit(reply.log)
    if os.environ.get(client.DEBUG_ENV) == "1":
        print(f"pybridge fastpath: served by {reply.served_by}", file=sys.stderr)
    sys.exit(reply.exit_code)


def main() -> None:
    _run("pybridge")


def ipam_main() -> None:
    _run("pybridge-ipam")
