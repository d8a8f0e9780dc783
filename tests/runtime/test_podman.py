"""pybridge under podman 4.3 with the CNI backend: the runtime most users will put it under.

podman drives plugins through libcni: VERSION, ADD (CNI_ARGS with K8S-style keys) and DEL with
prevResult; it never calls CHECK. We prove: the network is listed and inspectable, a container gets
its address, default route and connectivity (gateway, a second container), and when containers go
away (`--rm`, `rm -f`) every lease, host veth, masquerade element and libcni cache entry goes too.
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.host import run
from tests.support.images import busybox_available
from tests.support.podman import IMAGE, Podman, busybox_podman, podman_missing
from tests.support.runtime_checks import TestNetwork, bridge_ports, masq_table, network_factory, nft_table_text
from tests.support.session import unique_name
from tests.support.topology import Uplink

pytestmark = [pytest.mark.podman, pytest.mark.timeout(300)]

LIBCNI_CACHE = Path("/var/lib/cni/results")


@pytest.fixture(scope="module")
def podman_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    """One private podman (storage, config, network dir) with the busybox image imported."""
    reason = podman_missing() or busybox_available()
    if reason:
        pytest.skip(reason)
    with busybox_podman(tmp_path_factory.mktemp("podman")) as pm:
        yield pm


@pytest.fixture
def networks(tmp_path: Path) -> Iterator[Callable[..., TestNetwork]]:
    yield from network_factory(tmp_path)


@pytest.fixture
def podman(podman_session: Podman, networks: Callable[..., TestNetwork]) -> Iterator[Podman]:
    """The session podman; containers a test leaves are force-removed (CNI DEL) before its
    networks' bridges go, and its conflists are removed from the network dir."""
    before = {p.name for p in podman_session.net_dir.iterdir()}
    yield podman_session
    podman_session.remove_all_containers()
    for p in podman_session.net_dir.iterdir():
        if p.name not in before:
            p.unlink()


def pybridge_net(networks: Callable[..., TestNetwork], podman: Podman) -> TestNetwork:
    net = networks(ip_masq=True, is_default_gateway=True)
    podman.add_network(net.conflist)
    return net


def assert_released(net: TestNetwork) -> None:
    """Nothing of any container is left on the host for this network."""
    assert net.state_files() == [], "leases left behind"
    assert bridge_ports(net.bridge) == [], "host veths left on the bridge"
    assert nft_table_text(net.name) == "", f"masquerade table {masq_table(net.name)} left behind"
    cached = [p.name for p in LIBCNI_CACHE.glob(f"{net.name}-*")] if LIBCNI_CACHE.is_dir() else []
    assert cached == [], "libcni result cache entries left behind"


def test_network_listed_and_inspected(podman: Podman, networks: Callable[..., TestNetwork]) -> None:
    net = pybridge_net(networks, podman)
    listed = podman.json("network", "ls", "--format", "json")
    mine = [n for n in listed if n.get("name") == net.name]
    assert len(mine) == 1, listed
    assert mine[0]["driver"] == "pybridge"
    inspected = podman.json("network", "inspect", net.name)
    assert inspected[0]["name"] == net.name and inspected[0]["driver"] == "pybridge"
    names = podman.run("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert net.name in names


def test_run_rm_gets_address_route_and_gateway(podman: Podman, networks: Callable[..., TestNetwork]) -> None:
    net = pybridge_net(networks, podman)
    script = ("ip -o -4 addr show dev eth0; echo ROUTES; ip -4 route; "
              f"ping -c 1 -W 2 {net.gateway} >/dev/null && echo GATEWAY-OK")
    out = podman.run("run", "--rm", "--network", net.name, IMAGE, "sh", "-c", script).stdout
    addr = re.search(r"inet (\S+)", out)
    assert addr, out
    iface = ipaddress.ip_interface(addr.group(1))
    assert iface.network == net.subnet and iface.ip != ipaddress.ip_address(net.gateway)
    assert f"default via {net.gateway} dev eth0" in out
    assert "GATEWAY-OK" in out, out
    assert_released(net)  # `run --rm` returns after podman's cleanup (CNI DEL) is done


def test_two_containers_talk_and_rm_releases_all(podman: Podman, networks: Callable[..., TestNetwork]) -> None:
    net = pybridge_net(networks, podman)
    names = [unique_name("pc"), unique_name("pc")]
    ips = []
    for name in names:
        podman.run("run", "-d", "--rm", "--name", name, "--network", net.name, IMAGE, "sleep", "300")
        info = podman.json("inspect", name)[0]
        ip = info["NetworkSettings"]["Networks"][net.name]["IPAddress"]
        assert ipaddress.ip_address(ip) in net.subnet
        ips.append(ip)
    assert len(set(ips)) == 2
    # host side while they run: two leases, two veths on the bridge, both masqueraded
    assert len(net.leases()) == 2
    assert len(bridge_ports(net.bridge)) == 2
    table = nft_table_text(net.name)
    assert all(ip in table for ip in ips), table
    # connectivity: container -> gateway, container -> container (both directions)
    podman.run("exec", names[0], "ping", "-c", "1", "-W", "2", net.gateway)
    podman.run("exec", names[0], "ping", "-c", "1", "-W", "2", ips[1])
    podman.run("exec", names[1], "ping", "-c", "1", "-W", "2", ips[0])
    # podman network inspect (CNI backend) lists the containers attached
    inspect = podman.run("network", "inspect", net.name).stdout
    assert json.loads(inspect)[0]["name"] == net.name

    podman.run("rm", "--force", "--time", "0", names[0])
    assert len(net.leases()) == 1 and len(bridge_ports(net.bridge)) == 1
    assert ips[0] not in nft_table_text(net.name) and ips[1] in nft_table_text(net.name)
    podman.run("rm", "--force", "--time", "0", names[1])
    assert_released(net)


def test_stop_then_rm_releases(podman: Podman, networks: Callable[..., TestNetwork]) -> None:
    """stop tears the network down (DEL) while the container still exists; rm finds nothing left."""
    net = pybridge_net(networks, podman)
    name = unique_name("pc")
    podman.run("run", "-d", "--name", name, "--network", net.name, IMAGE, "sleep", "300")
    assert len(net.leases()) == 1
    podman.run("stop", "--time", "0", name)
    assert net.leases() == [] and bridge_ports(net.bridge) == []
    podman.run("rm", name)
    assert_released(net)


def test_publish_port_natively(podman: Podman, networks: Callable[..., TestNetwork], uplink: Uplink) -> None:
    """`podman run -p` on a pybridge conflist with `capabilities: {portMappings: true}` and no
    portmap plugin in the chain (issue 16): reachable from an outside namespace and from the
    host's 127.0.0.1; `rm` removes the mapping."""
    net = networks(ip_masq=True, is_default_gateway=True, extra={"capabilities": {"portMappings": True}})
    podman.add_network(net.conflist)
    name, port = unique_name("pc"), random.randrange(20000, 30000)
    podman.run("run", "-d", "--name", name, "--network", net.name, "-p", f"{port}:80", IMAGE,
               "sh", "-c", "while true; do echo hello | nc -l -p 80; done")
    client = ("import socket,sys,time\nfor _ in range(40):\n    try:\n"
              "        print(socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).recv(20).decode()); break\n"
              "    except OSError:\n        time.sleep(0.25)\n")
    assert "hello" in uplink.outside.run(sys.executable, "-c", client, str(uplink.host_ip), str(port)).stdout
    assert "hello" in run([sys.executable, "-c", client, "127.0.0.1", str(port)]).stdout
    assert f"tcp . {port} " in run(["nft", "list", "table", "inet", "pybridge_ports"]).stdout
    podman.run("rm", "--force", "--time", "0", name)
    table = run(["nft", "list", "table", "inet", "pybridge_ports"], check=False).stdout
    assert f"tcp . {port} " not in table
    assert_released(net)
