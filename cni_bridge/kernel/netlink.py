"""`Netlink`: one handle per network namespace, the API the modes, the Docker driver and the CLI
use for links, addresses, routes and sysctls. root() gives the host's, netns(path) a container's.

Each request family lives in its own module (links.py, addresses.py, routes.py, sysctl.py, tc.py)
on the sockets of handle.py; this module only assembles them and opens handles.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from cni_bridge.kernel.addresses import Addresses
from cni_bridge.kernel.fdb import Fdb
from cni_bridge.kernel.links import Link, LinkDetails, Links, VxlanDetails
from cni_bridge.kernel.netns import NetnsGone, open_netns, switched
from cni_bridge.kernel.nlsock import NetlinkError, netlink_error_text
from cni_bridge.kernel.routes import Routes
from cni_bridge.kernel.rtnl import Rtnl
from cni_bridge.kernel.sysctl import Sysctls
from cni_bridge.kernel.tc import Qdisc, Tc

__all__ = ["Link", "LinkDetails", "Netlink", "NetlinkError", "NetnsGone", "Qdisc", "VxlanDetails",
           "netlink_error_text", "netns", "root"]


class Netlink(Links, Addresses, Routes, Sysctls, Tc, Fdb):
    """Typed wrappers over the handful of rtnetlink calls the modes need, in one namespace."""


def root() -> Netlink:
    """A netlink handle in the caller's (host) namespace."""
    return Netlink(None, raw=Rtnl())


@contextlib.contextmanager
def netns(path: str) -> Iterator[Netlink]:
    """A netlink handle inside the namespace at `path`; raises NetnsGone if it is not there."""
    target = open_netns(path)
    try:
        with switched(target, path):
            handle = Netlink(None, ns_fd=target, raw=Rtnl())
        try:
            yield handle
        finally:
            handle.close()
    finally:
        os.close(target)
