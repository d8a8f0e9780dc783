"""The sockets of one network namespace, which links.py, addresses.py, routes.py and sysctl.py
build their requests on: the raw rtnetlink socket of the hot path (rtnl.py) and, opened on
first use, a pyroute2 IPRoute for the rare or complex requests."""

from __future__ import annotations

from typing import Self

from pyroute2 import IPRoute

from cni_bridge.kernel.netns import switched
from cni_bridge.kernel.rtnl import Rtnl


class Handle:
    """Both sockets are bound to the namespace of the thread that creates them: `raw` at once,
    `ipr` on first use (in `ns_fd`'s namespace when given, else the caller's)."""

    def __init__(self, ipr: IPRoute | None, ns_fd: int | None = None, raw: Rtnl | None = None) -> None:
        self._ipr = ipr
        self.ns_fd = ns_fd
        # The hot per-ADD requests go through `raw` (kernel/rtnl.py, ~20x cheaper than
        # pyroute2 0.9); everything else uses pyroute2, opened on first use.
        self.raw = raw if raw is not None else Rtnl()  # bound to the calling thread's ns

    @property
    def ipr(self) -> IPRoute:
        """pyroute2 handle in this handle's namespace, created on first use (~1 ms)."""
        if self._ipr is None:
            if self.ns_fd is None:
                self._ipr = IPRoute()
            else:
                with switched(self.ns_fd):
                    self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
        if self.raw is not None:
            self.raw.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
