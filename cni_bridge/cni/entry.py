"""Console-script entry points `pybridge` and `pybridge-ipam`, and the in-process fallback.

The request goes to the warm daemon (cni_bridge.fastpath.client.main, which the lean launchers
call directly); otherwise, and only if the daemon never accepted it, the work is done here with
the same `handler.handle` the daemon uses, so both paths print the same bytes. The heavy core
(pyroute2) is imported only in that in-process case.

Started with `python -I -S` (the launchers written by `cni_bridge.fastpath.launcher`), site
packages are set up only when the in-process path needs them: `site` costs ~2-15 ms per exec.
"""

from __future__ import annotations

import os
import sys

from cni_bridge.fastpath.client import Reply


def in_process(plugin: str, stdin: bytes) -> Reply:
    """Do the work in this process (no daemon, or it declined)."""
    if sys.flags.no_site:
        import site
        site.main()
    from cni_bridge.cni.handler import handle
    response = handle(plugin, dict(os.environ), stdin)
    return Reply(response.stdout, response.log, response.exit_code, "in-process")


def _run(plugin: str) -> None:
    from cni_bridge.fastpath import client
    client.main(plugin)


def main() -> None:
    _run("pybridge")


def ipam_main() -> None:
    _run("pybridge-ipam")
