"""Isolation between pybridge Docker networks (issue 16): on by default, `-o isolate=false` to opt
out. Containers of two isolated networks cannot reach each other, nor the other network's
gateway address; their own gateway, the outside (masqueraded) and published ports stay
reachable; nothing of it is left once the networks are gone.
"""

from __future__ import annotations

import pytest

from tests.support.docker_scenario import Scenario, nft_tables

pytestmark = pytest.mark.docker

TABLE = "pybridge_isolation"


def test_networks_are_isolated_by_default(dk: Scenario) -> None:
    outside, _, subnet = dk.outside()
    net_a, net_b = dk.network(), dk.network()
    a, b = dk.run(net_a), dk.run(net_b)
    gw_a, gw_b = net_a.subnet.network_address + 1, net_b.subnet.network_address + 1
    assert not dk.ping(a, dk.address(b, net_b), count=1)
    assert not dk.ping(b, dk.address(a, net_a), count=1)
    assert not dk.ping(a, gw_b, count=1)  # the other network's gateway address
    assert dk.ping(a, gw_a) and dk.ping(b, gw_b)
    assert dk.ping(a, subnet.network_address + 2)  # the outside, masqueraded
    a2 = dk.run(net_a)
    assert dk.ping(a, dk.address(a2, net_a))  # inside a network: bridged as before
    dk.docker("rm", "-f", a, a2, b)
    dk.containers.clear()
    dk.remove_network(net_b)
    assert TABLE in nft_tables(dk.engine)
    dk.remove_all_and_check(net_a)
    assert TABLE not in nft_tables(dk.engine)


def test_internal_network_is_walled_off(dk: Scenario) -> None:
    """An --internal network is isolated too: its members reach each other only."""
    net, internal = dk.network(), dk.network("--internal")
    a, i1, i2 = dk.run(net), dk.run(internal), dk.run(internal)
    assert dk.ping(i1, dk.address(i2, internal))
    assert not dk.ping(a, dk.address(i1, internal), count=1)
    assert not dk.ping(a, internal.subnet.network_address + 1, count=1)
    assert not dk.ping(i1, net.subnet.network_address + 1, count=1)
    dk.remove_all_and_check(internal)
    dk.remove_all_and_check(net)


def test_opt_out_and_published_ports_cross_networks(dk: Scenario) -> None:
    """A network with `-o isolate=false` reaches and is reached by isolated ones; a published
    port of an isolated network is reachable from another isolated network through the host."""
    outside, _, subnet = dk.outside()
    host_ip = subnet.network_address + 1
    isolated, open_net = dk.network(), dk.network("-o", "isolate=false")
    web_net = dk.network()
    a, c = dk.run(isolated), dk.run(open_net)
    assert dk.ping(c, dk.address(a, isolated)) and dk.ping(a, dk.address(c, open_net))
    web = dk.run(web_net, "-p", "18170:80", cmd=("sh", "-c", "while true; do echo hello | nc -l -p 80; done"))
    assert not dk.ping(a, dk.address(web, web_net), count=1)
    got = dk.exec(a, "sh", "-c", f"/bin/busybox nc -w 4 {host_ip} 18170 </dev/null", check=False).stdout
    assert "hello" in got
    for net in (isolated, open_net, web_net):
        dk.remove_all_and_check(net)  # the first removes the containers
    assert TABLE not in nft_tables(dk.engine)
