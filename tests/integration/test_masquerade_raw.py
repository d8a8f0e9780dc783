"""A network's first member creates its masquerade table as one raw nfnetlink batch
(kernel.nfobjects) instead of a libnftables script. The table must be the one the script
writes, object for object, so that later libnftables commands (`add element` on an
`auto-merge` interval set, listings by status and gc) behave the same: compared here through
`nft -j list table` (and nft's netlink view of every element) for tables made both ways, in a
namespace of the test's own, after a first member, a second member from other subnets (merged
by libnftables into the interval set) and the first member's removal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import pytest

from tests.support.netns import Netns

SCRIPT = r"""
import ipaddress, sys
from cni_bridge.firewall import masquerade as mq
nets = [ipaddress.ip_network(n) for n in sys.argv[1].split(",")]
enabled = sys.argv[2] == "1"
addrs = [ipaddress.ip_address(a) for a in sys.argv[3].split(",")]
nets2 = [ipaddress.ip_network(n) for n in sys.argv[4].split(",")]
raw_create = mq._create_raw
for name, raw in (("viascript", False), ("viaraw", True)):
    made = []
    mq._create_raw = (lambda *a: made.append(raw_create(*a)) or made[-1]) if raw else (lambda *a: False)
    first = mq.Masquerade(name, None, tuple(nets), enabled)
    mq.add_members(first, addrs, "vethfirst")
    assert made == ([True] if raw else []), made  # the raw batch was used (and accepted) once
    mq.add_members(mq.Masquerade(name, None, tuple(nets2), enabled), [nets2[0].network_address + 9], "vethsecond")
    assert not mq.remove_members(first, ["vethfirst"], addrs)
    print(first.table)
"""


def _normalised(ns: Netns, table: str) -> tuple[list, str]:
    """The table's objects (names and handles neutral, set elements sorted: a hash set lists
    them in its own order) and nft's netlink view of the sets' elements, sorted likewise."""
    objects = json.loads(ns.run("nft", "-j", "list", "table", "inet", table).stdout.replace(table, "T"))["nftables"]
    for obj in objects:
        for body in obj.values():
            if isinstance(body, dict):
                body.pop("handle", None)
                if isinstance(body.get("elem"), list):
                    body["elem"] = sorted(body["elem"], key=json.dumps)
    netlink = ns.run("nft", "--debug=netlink", "list", "table", "inet", table).stdout.replace(table, "T")
    return objects, "\n".join(sorted(line.strip() for line in netlink.splitlines()))


@pytest.mark.parametrize("subnets, masq, addrs, later", [
    ("10.1.2.0/24", "1", "10.1.2.5", "10.1.3.0/24,10.1.9.0/24"),
    ("10.1.2.0/24,fd00:1::/64", "1", "10.1.2.5,fd00:1::5", "fd00:2::/64"),
    ("10.1.2.0/24,10.1.3.0/24,10.1.2.0/25", "0", "10.1.2.5", "10.1.4.0/24"),
    ("255.255.255.0/24,ff00::/8", "1", "255.255.255.7", "10.1.4.0/24"),
])
def test_raw_first_member_table_is_the_scripts(netns: Callable[..., Netns], subnets: str, masq: str,
                                               addrs: str, later: str) -> None:
    ns = netns()
    tables = ns.run(sys.executable, "-c", SCRIPT, subnets, masq, addrs, later).stdout.split()
    assert len(tables) == 2
    via_script, via_raw = (_normalised(ns, t) for t in tables)
    assert via_raw == via_script
