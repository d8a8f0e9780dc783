"""The FORWARD allowance a test makes for the Go reference `bridge` plugin on a Docker host.

Why: where dockerd runs, the filter FORWARD policy is DROP and br_netfilter is loaded, so traffic
between two containers of a bridge (and DNAT'd traffic into one) is dropped unless a rule accepts
it. pybridge inserts its own accepts (cni_bridge/firewall/forward.py); the Go bridge does not, and
an operator who uses it there adds them by hand. Tests that run the Go bridge do the same, for
their bridge only, and remove them afterwards. Nothing is added where the chain does not exist.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.host import run

__all__ = ["forward_allowance"]

_TOOLS = {"ip": "iptables", "ip6": "ip6tables"}


def _forward_chain_exists(family: str) -> bool:
    """Asked through nft: `iptables -S` would create the filter table where there is none."""
    return bool(shutil.which("nft")) and run(["nft", "list", "chain", family, "filter", "FORWARD"],
                                            check=False).returncode == 0


def _rule(op: str, direction: str, bridge: str) -> list[str]:
    return [op, "FORWARD", direction, bridge, "-m", "comment", "--comment", f"{bridge} test allowance",
            "-j", "ACCEPT"]


@contextmanager
def forward_allowance(bridge: str) -> Iterator[None]:
    """Accept forwarding into and out of `bridge` (both families) while the block runs."""
    added: list[tuple[str, str]] = []
    try:
        for family, tool in _TOOLS.items():
            if shutil.which(tool) and _forward_chain_exists(family):
                for direction in ("-i", "-o"):
                    run([tool, "-w", *_rule("-I", direction, bridge)])
                    added.append((tool, direction))
        yield
    finally:
        for tool, direction in added:
            run([tool, "-w", *_rule("-D", direction, bridge)], check=False)
