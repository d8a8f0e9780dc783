"""A masquerading network with two subnets never masquerades traffic between its own subnets,
whichever ADD came last (issue 14 item 9).

The exclusion list used to be the subnets of the attachment being added, written into the rule:
each ADD rewrote it, so after an ADD from subnet A, traffic from A to subnet B left the gateway
with the host's address. Now the rule is constant and excludes a set of all the network's
subnets. What a user checks: the source address the receiving container sees.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from cni_bridge.firewall import table_exists, table_name
from tests.support.cnitool import CniTool, bridge_conflist
from tests.support.host import run
from tests.support.session import unique_name
from tests.support.subnets import unique_subnet

RECEIVE = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
           "s.bind(('0.0.0.0', 4789)); s.settimeout(10); print('ready', flush=True); "
           "print(s.recvfrom(100)[1][0], flush=True)")


def source_seen_by(receiver, sender, address: str) -> str:
    """Send one UDP datagram from `sender` to `address` (in `receiver`); the source it arrived with."""
    proc = receiver.popen(sys.executable, "-c", RECEIVE)
    assert proc.stdout.readline().strip() == "ready"
    send = f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ({address!r}, 4789))"
    sender.run(sys.executable, "-c", send)
    out, _ = proc.communicate(timeout=15)
    return out.strip()


@pytest.fixture
def conf(cni: CniTool) -> Iterator[dict[str, Any]]:
    """A masquerading network whose requests bring their own subnet (runtimeConfig.ipRanges);
    its attachments are DELeted at the end (the table must go with them), then its bridge."""
    bridge = unique_name("br")
    conf = bridge_conflist(unique_name("net"), bridge=bridge, subnets=[], data_dir=cni.data_dir,
                           plugin_type="pybridge", ipam_type="pybridge-ipam", is_default_gateway=True, ip_masq=True)
    conf["plugins"][0]["capabilities"] = {"ipRanges": True}
    del conf["plugins"][0]["ipam"]["ranges"]
    try:
        yield conf
        assert all(r.ok for r in cni.cleanup()) and not table_exists(conf["name"])
    finally:
        run(["ip", "link", "delete", bridge], check=False)


def test_traffic_between_own_subnets_keeps_its_source(cni: CniTool, netns, conf: dict[str, Any]) -> None:
    first, second = unique_subnet(4, 24), unique_subnet(4, 24)

    def add(ns, subnet) -> str:
        ranges: dict[str, Any] = {"ipRanges": [[{"subnet": str(subnet)}]]}
        result = cni.add(conf, ns.path, container_id=unique_name("ctr"), capability_args=ranges).result
        return str(ipaddress.ip_interface(result["ips"][0]["address"]).ip)

    b, a = netns(), netns()
    address_b = add(b, second)
    address_a = add(a, first)  # the ADD that came last is from the other subnet
    assert source_seen_by(b, a, address_b) == address_a
    assert source_seen_by(a, b, address_a) == address_b
    table = run(["nft", "list", "table", "inet", table_name(conf["name"])]).stdout
    assert str(first) in table and str(second) in table  # both in the exclusion set


def test_rule_is_the_same_for_every_attachment(cni: CniTool, netns, conf: dict[str, Any]) -> None:
    """The rule text does not depend on which attachment came last: ADDs only add elements."""
    first, second = unique_subnet(4, 24), unique_subnet(4, 24)
    rules = []
    for subnet in (first, second, first):
        ns = netns()
        cni.add(conf, ns.path, container_id=unique_name("ctr"), capability_args={"ipRanges": [[{"subnet": str(subnet)}]]})
        listing = subprocess.run(["nft", "list", "chain", "inet", table_name(conf["name"]), "postrouting"],
                                 capture_output=True, text=True, check=True).stdout
        rules.append([line.strip() for line in listing.splitlines() if "masquerade" in line])
    assert rules[0] == rules[1] == rules[2] and len(rules[0]) == 2
