"""The CNI config key `isolate` (issue 16): default off (as the Go bridge); two networks with
`isolate: true` cannot reach each other, nor each other's gateway address, while their own
gateway and a network without the key stay reachable; the network's last DEL removes it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cni_bridge.firewall.isolation import TABLE
from tests.support.cnitool import CniTool
from tests.support.host import run
from tests.support.netns import Netns
from tests.support.runtime_checks import PYBRIDGE, TestNetwork, network_factory
from tests.support.session import unique_name

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def networks(tmp_path: Path) -> Iterator[Callable[..., TestNetwork]]:
    yield from network_factory(tmp_path)


def isolated_bridges() -> str:
    proc = run(["nft", "list", "set", "inet", TABLE, "bridges"], check=False)
    return proc.stdout if proc.returncode == 0 else ""


def test_isolate_key(cni: CniTool, netns: Callable[..., Netns], networks: Callable[..., TestNetwork]) -> None:
    one = networks(impl=PYBRIDGE, extra={"isolate": True})
    two = networks(impl=PYBRIDGE, extra={"isolate": True})
    plain = networks(impl=PYBRIDGE)
    a, b, c = netns(), netns(), netns()
    ids = {ns.name: unique_name("ctr") for ns in (a, b, c)}
    addr = {}
    for ns, net in ((a, one), (b, two), (c, plain)):
        res = cni.add(net.conflist, ns.path, container_id=ids[ns.name])
        addr[ns.name] = res.result["ips"][0]["address"].split("/")[0]
    assert one.bridge in isolated_bridges() and plain.bridge not in isolated_bridges()
    assert not a.ping(addr[b.name], count=1) and not b.ping(addr[a.name], count=1)
    assert not a.ping(two.gateway, count=1)
    assert a.ping(one.gateway) and b.ping(two.gateway)
    assert a.ping(addr[c.name]) and c.ping(addr[b.name])  # not isolated: reaches and is reached
    for ns, net in ((a, one), (b, two), (c, plain)):
        cni.delete(net.conflist, ns.path, container_id=ids[ns.name])
    assert one.bridge not in isolated_bridges() and two.bridge not in isolated_bridges()
