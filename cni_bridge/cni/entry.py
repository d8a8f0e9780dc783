"""The exec'd plugin's in-process path: what `pybridge` / `pybridge-ipam` do when the fast-path
daemon is absent or declined (cni_bridge.fastpath.client imports this module only then).

The work is done with the same `handler.handle` the daemon uses, so both paths print the same
bytes. Started with `python -I -S` (the launchers written by `cni_bridge.fastpath.launcher`),
site packages are set up here, before the handler needs pyroute2: `site` costs ~2-15 ms per
exec, which the forwarded path never pays.
"""

from __future__ import annotations

import os
import site
import sys

from cni_bridge.cni.handler import Response, handle


def in_process(plugin: str, stdin: bytes) -> Response:
    """Do the work in this process (no daemon, or it declined)."""
    if sys.flags.no_site:
        site.main()
    return handle(plugin, dict(os.environ), stdin)
