"""Published ports (`docker run -p`) on pybridge networks, through a real dockerd (issue 16).

Each reach path a user relies on: from another machine (an "outside" namespace behind a veth on
dockerd's side), from the host itself (its own address and 127.0.0.1), and from a container of
the same network through the host's address (hairpin). The container's web server says which
client address it saw (tests/support/web.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.support import dockerd as support
from tests.support.docker_scenario import Net, Scenario, bridge_of, nft_tables
from tests.support.session import unique_name
from tests.support.subnets import unique_subnet
from tests.support.web import from_container, from_host, from_ns, get, start_web, wait_listening

pytestmark = pytest.mark.docker

PORTS_TABLE = "pybridge_ports"


def _published(dk: Scenario) -> str:
    return dk.engine.host_run("nft", "list", "table", "inet", PORTS_TABLE, check=False).stdout


def _assert_no_ports_left(dk: Scenario) -> None:
    assert PORTS_TABLE not in nft_tables(dk.engine)


def _run_refused(dk: Scenario, net: Net, *publish: str) -> str:
    """`docker run` with `publish` options that the driver must refuse: dockerd's error."""
    name = unique_name("c")
    dk.containers.append(name)
    proc = dk.docker("run", "-d", "--name", name, "--network", net.name, *publish, support.IMAGE, "sleep", "60",
                     check=False)
    assert proc.returncode != 0, proc.stdout
    return proc.stderr


# --- tests ---------------------------------------------------------------------------------------
def test_publish_reach_paths_and_client_address(dk: Scenario) -> None:
    """`-p 18080:80`: from outside (the container sees the outside address), from the host by
    its own address, by 127.0.0.1, by the gateway, from another container of the network and
    from the container itself through the host's address (hairpin)."""
    outside, _, subnet = dk.outside()
    host_ip, outside_ip = str(subnet.network_address + 1), str(subnet.network_address + 2)
    net = dk.network()
    web = start_web(dk, net, "-p", "18080:80")
    other = dk.run(net)
    assert get(from_ns(outside), host_ip, 18080) == outside_ip
    assert get(from_host(dk), host_ip, 18080) == host_ip
    assert get(from_host(dk), "127.0.0.1", 18080) is not None
    assert get(from_host(dk), str(net.subnet.network_address + 1), 18080) is not None
    assert get(from_container(dk, other), host_ip, 18080) is not None
    assert get(from_container(dk, web), host_ip, 18080) is not None
    # one rule per path, whatever the number of ports: the mapping is a map element
    assert "tcp . 18080" in _published(dk)
    dk.remove_all_and_check(net)
    _assert_no_ports_left(dk)


def test_publish_forms(dk: Scenario) -> None:
    """127.0.0.1 binding, a range, a host-port range for one port, udp, sctp, and -P / `-p 80`
    (a host port chosen by pybridge from the ephemeral range)."""
    outside, _, subnet = dk.outside()
    host_ip = str(subnet.network_address + 1)
    net = dk.network()
    loopback = start_web(dk, net, "-p", "127.0.0.1:18081:80")
    assert get(from_host(dk), "127.0.0.1", 18081) is not None
    assert get(from_ns(outside), host_ip, 18081) is None  # bound to 127.0.0.1 only
    ranged = dk.run(net, "-p", "18090-18091:80-81", "-p", "18100-18105:82", "-p", "18110:5353/udp",
                    "-p", "18111:7/sctp")
    table = _published(dk)
    for element in ("tcp . 18090", "tcp . 18091", "udp . 18110", "sctp . 18111"):
        assert element in table, table
    assert any(f"tcp . {p} " in table for p in range(18100, 18106)), table
    anyport = start_web(dk, net, "-p", "80", "--expose", "81")
    picked = _endpoint_ports(dk, anyport, net)
    assert len(picked) == 1 and picked[0]["Port"] == 80
    low, high = (int(x) for x in dk.engine.host_run("cat", "/proc/sys/net/ipv4/ip_local_port_range").stdout.split())
    assert low <= picked[0]["HostPort"] <= high
    assert get(from_ns(outside), host_ip, picked[0]["HostPort"]) is not None
    dk.docker("rm", "-f", loopback, ranged, anyport)
    dk.containers.clear()
    _assert_no_ports_left(dk)
    dk.remove_all_and_check(net)


def test_publish_on_ipv6_network(dk: Scenario) -> None:
    """`--ipv6`: `-p 18160:80` is published on both families; `-p [::]:18161:80` on IPv6 only.
    An IPv6 client outside is seen with its own address."""
    outside, host_if, subnet = dk.outside()
    v6_outside = unique_subnet(6)
    host6, out6 = v6_outside.network_address + 1, v6_outside.network_address + 2
    dk.engine.host_run("ip", "-6", "addr", "add", f"{host6}/64", "dev", host_if, "nodad")
    outside.ip("-6", "addr", "add", f"{out6}/64", "dev", "ext0", "nodad")
    net = dk.network("--ipv6", "--subnet", str(unique_subnet(6)))
    start_web(dk, net, "-p", "18160:80", "-p", "[::]:18161:80")
    assert get(from_ns(outside), str(host6), 18160) == str(out6)
    assert get(from_ns(outside), str(subnet.network_address + 1), 18160) == str(subnet.network_address + 2)
    assert get(from_ns(outside), str(host6), 18161) == str(out6)
    assert get(from_ns(outside), str(subnet.network_address + 1), 18161) is None  # IPv6 only
    error = _run_refused(dk, net, "-p", "[::1]:18162:80")  # no route_localnet for IPv6: refused, with the reason
    assert "[::1]" in error and "route_localnet" in error, error
    assert "18162" not in _published(dk)
    dk.remove_all_and_check(net)
    _assert_no_ports_left(dk)


def test_udp_published(dk: Scenario) -> None:
    """A datagram from outside to the published UDP port reaches the container's port, with the
    outside source address (tcpdump on the bridge; busybox nc has no UDP)."""
    outside, _, subnet = dk.outside()
    net = dk.network()
    c = dk.run(net, "-p", "18120:5353/udp")
    address = dk.address(c, net)
    dump = subprocess.Popen([*dk.engine.nsenter(), "tcpdump", "-n", "-l", "-i", bridge_of(dk, net), "-c", "1",
                             "udp and dst port 5353"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(0.5)  # tcpdump attaches; datagrams are resent below until one is seen
        send = ("import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); "
                f"s.sendto(b'hello', ('{subnet.network_address + 1}', 18120))")
        deadline = time.monotonic() + 15
        while dump.poll() is None:
            assert time.monotonic() < deadline, "the datagram did not reach the bridge"
            outside.run(sys.executable, "-c", send)
            time.sleep(0.3)
        out = dump.stdout.read()
    finally:
        dump.kill()
        dump.wait()
    assert f"{subnet.network_address + 2}." in out and f"> {address}.5353" in out, out
    dk.remove_all_and_check(net)


def test_conflicting_host_port_is_refused(dk: Scenario) -> None:
    """A host port held by a container of another pybridge network: a clear error, and the
    second container publishes nothing (not even its other, free ports)."""
    outside, _, subnet = dk.outside()
    net1, net2 = dk.network(), dk.network()
    start_web(dk, net1, "-p", "18130:80")
    error = _run_refused(dk, net2, "-p", "18131:80", "-p", "18130:80")
    assert "18130/tcp" in error and "already published" in error, error
    assert "18131" not in _published(dk)
    assert get(from_ns(outside), str(subnet.network_address + 1), 18130) is not None  # the first still works
    dk.docker("rm", "-f", *dk.containers)
    dk.containers.clear()
    dk.remove_network(net2)
    dk.remove_all_and_check(net1)
    _assert_no_ports_left(dk)


def test_same_host_port_on_different_host_addresses(dk: Scenario) -> None:
    """`-p 127.0.0.1:18176:80` on one container and `-p <host address>:18176:80` on another, as
    Docker allows: each answers for its address. `-p 18176:80` (every address) on a third is
    refused, and that container publishes nothing (not even its free port)."""
    outside, _, subnet = dk.outside()
    host_ip, outside_ip = str(subnet.network_address + 1), str(subnet.network_address + 2)
    net1, net2 = dk.network(), dk.network()
    start_web(dk, net1, "-p", "127.0.0.1:18176:80")
    start_web(dk, net2, "-p", f"{host_ip}:18176:80")
    assert get(from_ns(outside), host_ip, 18176) == outside_ip  # the second, real client address
    assert get(from_host(dk), host_ip, 18176) == host_ip  # the second
    assert get(from_host(dk), "127.0.0.1", 18176) == str(net1.subnet.network_address + 1)  # the first
    error = _run_refused(dk, net1, "-p", "18177:80", "-p", "18176:80")
    assert "18176/tcp" in error and "already published" in error and "single host addresses" in error, error
    assert "18177" not in _published(dk)
    assert get(from_ns(outside), host_ip, 18176) == outside_ip
    dk.docker("rm", "-f", *dk.containers)
    dk.containers.clear()
    _assert_no_ports_left(dk)
    dk.remove_network(net2)
    dk.remove_all_and_check(net1)


def test_stop_disconnect_and_restart_of_the_driver(dk: Scenario) -> None:
    """Stop revokes the ports, start programs them again; a driver restart keeps them working
    and restores them when the packet filter lost them; disconnect removes them."""
    outside, _, subnet = dk.outside()
    host_ip = str(subnet.network_address + 1)
    net = dk.network()
    web = start_web(dk, net, "-p", "18140:80")
    dk.docker("stop", "-t", "1", web)
    assert "18140" not in _published(dk)
    dk.docker("start", web)
    wait_listening(dk, web)
    assert get(from_ns(outside), host_ip, 18140) is not None
    dk.driver.kill()
    try:
        assert get(from_ns(outside), host_ip, 18140) is not None  # the data plane needs no driver
        dk.engine.host_run("nft", "delete", "table", "inet", PORTS_TABLE)  # a firewall reload
    finally:
        dk.driver.start()
    assert "already" not in dk.driver.log_tail()
    assert get(from_ns(outside), host_ip, 18140) is not None  # restored at start-up
    dk.docker("network", "disconnect", net.name, web)
    _assert_no_ports_left(dk)
    dk.remove_all_and_check(net)


def _endpoint_ports(dk: Scenario, container: str, net: Net) -> list[dict]:
    """What the driver reports for the endpoint (EndpointOperInfo), as dockerd would get it."""
    eid = dk.docker("inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{net.name}").EndpointID}}}}',
                    container).stdout.strip()
    status, body = support.plugin_call(dk.driver.socket, "NetworkDriver.EndpointOperInfo",
                                       {"NetworkID": net.id, "EndpointID": eid})
    assert status == 200, body
    return body["Value"].get("com.docker.network.portmap", [])


def test_docker_port_output(dk: Scenario) -> None:
    """Documents what dockerd 20.10 shows for a remote driver's ports (see docs/docker.md):
    the driver reports them, `docker port` does not display a remote driver's answer."""
    net = dk.network()
    c = dk.run(net, "-p", "18150:80")
    reported = _endpoint_ports(dk, c, net)
    assert [(p["Port"], p["HostPort"], p["Proto"]) for p in reported] == [(80, 18150, 6)]
    shown = dk.docker("port", c).stdout
    inspect = json.loads(dk.docker("inspect", "-f", "{{json .NetworkSettings.Ports}}", c).stdout)
    print(f"docker port: {shown!r}; NetworkSettings.Ports: {inspect}")
    dk.remove_all_and_check(net)


@pytest.mark.slow
def test_time_docker_run_p_to_first_connection(dk: Scenario, capsys: pytest.CaptureFixture[str]) -> None:
    """Reported, not asserted: `docker run -d -p` until the first TCP connection from outside
    through the published port succeeds, pybridge against the built-in bridge driver."""
    outside, _, subnet = dk.outside()
    host_ip = subnet.network_address + 1
    ours = dk.network()
    builtin = dk.network(driver="bridge", ipam=False, bridge=False)
    server = ("sh", "-c", "while true; do echo hello | nc -l -p 80; done")
    results: dict[str, list[float]] = {}
    for i, net in enumerate([ours, builtin] * 5):
        port = 18200 + i
        started = time.monotonic()
        name = dk.run(net, "-p", f"{port}:80", cmd=server)
        while "hello" not in outside.run("sh", "-c", f"/bin/busybox nc -w 2 {host_ip} {port} </dev/null",
                                         check=False).stdout:
            assert time.monotonic() - started < 30, "the published port never answered"
        results.setdefault("pybridge" if net is ours else "bridge", []).append(time.monotonic() - started)
        dk.docker("rm", "-f", name)
        dk.containers.remove(name)
    with capsys.disabled():
        for label, times in results.items():
            times.sort()
            print(f"\n  docker run -p -> first connection, {label}: median {times[len(times) // 2] * 1000:.0f} ms "
                  f"(runs: {', '.join(f'{t * 1000:.0f}' for t in times)})")
