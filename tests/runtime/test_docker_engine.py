"""The pybridge Docker driver against a real Docker Engine (Debian's docker.io 20.10).

A private dockerd runs in its own network and mount namespaces (tests/support/dockerd.py) with the
FORWARD policy set to DROP as on Docker hosts; the driver (`.venv/bin/cni-bridge serve`) runs in
the same namespaces on pybridge.sock in the dockerd's private plugin directory (what it sees as
/run/docker/plugins). Containers use the local image localbusybox:1.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import time

import pytest

from cni_bridge.firewall import table_name
from tests.support import dockerd as support
from tests.support.docker_scenario import (
    Net,
    Scenario,
    bridge_of,
    leased,
    link_exists,
    link_names,
    nft_tables,
    state_mentions,
)
from tests.support.host import run
from tests.support.session import unique_name
from tests.support.subnets import unique_subnet

pytestmark = pytest.mark.docker


# --- tests ---------------------------------------------------------------------------------------
def test_network_lifecycle_two_containers(dk: Scenario) -> None:
    net = dk.network()
    assert net.subnet is not None
    gateway = str(net.subnet.network_address + 1)
    inspect = dk.docker("network", "inspect", "-f", "{{.Driver}} {{.IPAM.Driver}} {{range .IPAM.Config}}{{.Subnet}}{{end}}",
                        net.name).stdout.split()
    assert inspect == ["pybridge", "pybridge", str(net.subnet)]
    assert link_exists(dk.engine, net.bridge)
    assert f"{gateway}/{net.subnet.prefixlen}" in dk.engine.host_run("ip", "-br", "addr", "show", "dev",
                                                                      net.bridge).stdout
    a, b = dk.run(net), dk.run(net)
    addr_a, addr_b = dk.address(a, net), dk.address(b, net)
    assert ipaddress.ip_address(addr_a) in net.subnet and addr_a != addr_b
    routes = dk.exec(a, "ip", "route").stdout
    assert f"default via {gateway} dev eth0" in routes
    assert dk.ping(a, addr_b) and dk.ping(b, addr_a)
    assert dk.ping(a, gateway)
    # the leases are in the shared store, the masquerade set holds both containers
    assert {p.name for p in leased(dk.driver, net.subnet)} >= {addr_a, addr_b, gateway}
    members = dk.engine.host_run("nft", "list", "table", "inet", table_name(net.id)).stdout
    assert addr_a in members and addr_b in members
    dk.remove_all_and_check(net)


def test_default_pool_and_default_bridge(dk: Scenario) -> None:
    net = dk.network(subnet=False, bridge=False)
    subnet = ipaddress.ip_network(dk.docker("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
                                            net.name).stdout.strip())
    assert subnet.prefixlen == 24 and subnet.subnet_of(ipaddress.ip_network(dk.driver.default_pool))
    net.subnet = subnet
    second = dk.network(subnet=False, bridge=False)
    other = ipaddress.ip_network(dk.docker("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
                                           second.name).stdout.strip())
    assert not other.overlaps(subnet)
    c = dk.run(net)
    assert dk.ping(c, subnet.network_address + 1)
    assert link_exists(dk.engine, bridge_of(dk, net))
    dk.remove_all_and_check(net, bridge_of(dk, net))


def test_connect_disconnect(dk: Scenario) -> None:
    first, second = dk.network(), dk.network()
    c = dk.run(first)
    dk.docker("network", "connect", second.name, c)
    address = dk.address(c, second)
    assert ipaddress.ip_address(address) in second.subnet
    assert address in dk.exec(c, "ip", "addr", "show", "eth1").stdout
    assert dk.ping(c, second.subnet.network_address + 1)
    ports = dk.engine.host_run("ip", "-br", "link", "show", "master", second.bridge).stdout
    assert len(ports.splitlines()) == 1
    dk.docker("network", "disconnect", second.name, c)
    assert dk.exec(c, "ip", "link", "show", "eth1", check=False).returncode != 0
    assert dk.engine.host_run("ip", "-br", "link", "show", "master", second.bridge).stdout.strip() == ""
    assert [p.name for p in leased(dk.driver, second.subnet)] == [str(second.subnet.network_address + 1)]
    assert dk.ping(c, first.subnet.network_address + 1)


def test_masquerade_to_outside(dk: Scenario) -> None:
    """The outside namespace has no route to the container subnet: a reply can only come back
    if the host rewrote the source, and tcpdump there shows the host's address."""
    outside, _, subnet = dk.outside()
    host_ip, outside_ip = subnet.network_address + 1, subnet.network_address + 2
    net = dk.network()
    c = dk.run(net)
    container_ip = dk.address(c, net)
    dump = outside.popen("tcpdump", "-n", "-l", "-i", "ext0", "-c", "1", "icmp and icmp[icmptype] = icmp-echo")
    time.sleep(0.5)  # tcpdump attaches; no assertion depends on timing
    assert dk.ping(c, outside_ip)
    out, _ = dump.communicate(timeout=20)
    assert f"{host_ip} > {outside_ip}" in out, out
    assert container_ip not in out


def test_internal_network(dk: Scenario) -> None:
    outside, _, subnet = dk.outside()
    net = dk.network("--internal")
    a, b = dk.run(net), dk.run(net)
    assert "default" not in dk.exec(a, "ip", "route").stdout
    assert dk.ping(a, dk.address(b, net))  # bridged, through FORWARD policy DROP + br_netfilter
    assert not dk.ping(a, subnet.network_address + 2, count=1)
    assert table_name(net.id) not in nft_tables(dk.engine)


def test_internal_network_drops_forwarding_at_the_host(dk: Scenario) -> None:
    """A container that adds its own default route (NET_ADMIN) still cannot leave an internal
    network: the host drops what comes in on its bridge for elsewhere, and the reverse (issue 14
    item 17). The outside namespace has a route back, so only the host's drop stops it."""
    outside, _, subnet = dk.outside()
    net = dk.network("--internal")
    bridge = bridge_of(dk, net)
    outside.ip("route", "add", str(net.subnet), "via", str(subnet.network_address + 1))
    a, b = dk.run(net, "--cap-add", "NET_ADMIN"), dk.run(net)
    gateway = str(net.subnet.network_address + 1)
    dk.exec(a, "ip", "route", "add", "default", "via", gateway)
    assert dk.ping(a, dk.address(b, net)) and dk.ping(a, gateway)  # members and the gateway: yes
    assert not dk.ping(a, subnet.network_address + 2, count=1)      # anything forwarded: no
    assert not outside.ping(dk.address(a, net), timeout=1)
    assert f'"{bridge}"' in dk.engine.host_run("nft", "list", "set", "inet", "pybridge_internal", "internal").stdout
    dk.remove_all_and_check(net)
    assert "pybridge_internal" not in nft_tables(dk.engine)


def test_forward_rules_flushed_after_create_network_come_back(dk: Scenario) -> None:
    """A firewall reload (or a DROP policy set later) removes the FORWARD accept rules the
    network got at CreateNetwork: the next endpoint puts them back, so containers still talk."""
    net = dk.network()
    a = dk.run(net)
    tag = f"pybridge:{net.id}"
    for family in ("iptables", "ip6tables"):
        for rule in dk.engine.host_run(family, "-w", "-S", "FORWARD", check=False).stdout.splitlines():
            if tag in rule and rule.startswith("-A "):
                dk.engine.host_run(family, "-w", "-D", *shlex.split(rule)[1:])
    assert tag not in dk.engine.host_run("iptables", "-w", "-S", "FORWARD").stdout
    b = dk.run(net)
    assert tag in dk.engine.host_run("iptables", "-w", "-S", "FORWARD").stdout
    assert dk.ping(b, dk.address(a, net))


def test_dual_stack(dk: Scenario) -> None:
    v6 = unique_subnet(6)
    net = dk.network("--ipv6", "--subnet", str(v6))
    a, b = dk.run(net), dk.run(net)
    addr6_b = dk.address(b, net, "GlobalIPv6Address")
    assert ipaddress.ip_address(addr6_b) in v6
    assert "default via" in dk.exec(a, "ip", "-6", "route").stdout
    assert dk.ping(a, addr6_b)
    assert dk.ping(a, v6.network_address + 1)
    dk.remove_all_and_check(net)
    assert leased(dk.driver, v6) == []


def test_static_ip(dk: Scenario) -> None:
    net = dk.network()
    wanted = str(net.subnet.network_address + 77)
    c = dk.run(net, "--ip", wanted)
    assert dk.address(c, net) == wanted
    clash = dk.docker("run", "--rm", "--network", net.name, "--ip", wanted, support.IMAGE, "true", check=False)
    assert clash.returncode != 0 and "already in use" in clash.stderr
    assert dk.ping(c, net.subnet.network_address + 1)


@pytest.mark.parametrize("options, message", [
    (["-o", "bogus=1"], "unknown option -o bogus"),
    (["-o", "mtu=abc"], "mtu must be an integer"),
    (["-o", "mode=warp"], "mode must be one of"),
    (["-o", "vlanId=5"], "vlanId on a bridge network needs an uplink"),
    (["-o", "com.docker.network.bridge.name=lo"], "lo already exists and is not a bridge"),
    (["--internal", "-o", "ipMasq=true"], "--internal networks cannot masquerade"),
])
def test_bad_options_leave_nothing(dk: Scenario, options: list[str], message: str) -> None:
    subnet = unique_subnet(4)
    name = unique_name("bad")
    records = dk.driver.state_dir / "networks"
    before = (nft_tables(dk.engine), link_names(dk.engine), sorted(records.glob("*.json")))
    proc = dk.docker("network", "create", "-d", "pybridge", "--ipam-driver", "pybridge", "--subnet", str(subnet),
                     *options, name, check=False)
    if proc.returncode == 0:
        dk.networks.append(Net(name, proc.stdout.strip(), None, subnet))
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert "<html" not in proc.stderr.lower()
    assert (nft_tables(dk.engine), link_names(dk.engine), sorted(records.glob("*.json"))) == before
    assert leased(dk.driver, subnet) == [] and state_mentions(dk.driver, str(subnet)) == []


def test_macvlan_through_docker(dk: Scenario) -> None:
    from cni_bridge.modes import macvlan
    if not hasattr(macvlan, "create_endpoint"):
        pytest.skip("modes/macvlan.py has no Docker entry points (create_endpoint) yet")
    outside, master, subnet = dk.outside(host_address=False)
    name = unique_name("mv")
    nid = dk.docker("network", "create", "-d", "pybridge", "--ipam-driver", "pybridge", "--subnet", str(subnet),
                    "--gateway", str(subnet.network_address + 2), "-o", "mode=macvlan", "-o", f"master={master}",
                    name).stdout.strip()
    net = Net(name, nid, None, subnet)
    dk.networks.append(net)
    a, b = dk.run(net), dk.run(net)
    addr_a = dk.address(a, net)
    assert dk.ping(a, subnet.network_address + 2)         # the outside host, on the parent's segment
    assert dk.ping(b, addr_a)                               # macvlan bridge mode: siblings talk
    assert outside.ping(addr_a)                             # and the segment reaches the container
    pid = dk.docker("inspect", "-f", "{{.State.Pid}}", a).stdout.strip()
    details = run(["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-d", "link", "show", "eth0"]).stdout
    assert "macvlan mode bridge" in details
    dk.remove_all_and_check(net)
    assert "macvlan" not in dk.engine.host_run("ip", "-d", "link").stdout


def test_flat_uplink_attached_and_detached(dk: Scenario) -> None:
    """-o uplink=NIC: the NIC becomes a bridge port (containers share its segment); network rm
    releases it (never deletes it)."""
    outside, nic, subnet = dk.outside(host_address=False)
    net = Net(unique_name("net"), "", unique_name("br"), subnet)
    dk.networks.append(net)
    net.id = dk.docker("network", "create", "-d", "pybridge", "--ipam-driver", "pybridge", "--subnet", str(subnet),
                       "-o", f"com.docker.network.bridge.name={net.bridge}", "-o", f"uplink={nic}",
                       "-o", "ipMasq=false", net.name).stdout.strip()
    assert f"master {net.bridge}" in dk.engine.host_run("ip", "link", "show", "dev", nic).stdout
    c = dk.run(net)
    assert dk.ping(c, subnet.network_address + 2)  # the outside host, same layer-2 segment, no NAT
    assert outside.ping(dk.address(c, net))
    dk.remove_all_and_check(net)
    shown = dk.engine.host_run("ip", "link", "show", "dev", nic).stdout
    assert "master" not in shown


def test_driver_sigkill_and_restart(dk: Scenario) -> None:
    net = dk.network()
    gateway = net.subnet.network_address + 1
    a = dk.run(net)
    dk.driver.kill()
    try:
        assert dk.ping(a, gateway)  # the data plane does not depend on the driver process
    finally:
        dk.driver.start()
    b = dk.run(net)  # the restarted driver still knows the network
    assert dk.ping(b, dk.address(a, net))
    dk.remove_all_and_check(net)


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "sigkill"])
def test_dockerd_restart(dk: Scenario, crash: bool) -> None:
    if not dk.engine.ours:
        pytest.skip("the Docker Engine was not started by the tests; not restarting it")
    net = dk.network()
    gateway = net.subnet.network_address + 1
    a = dk.run(net, "--restart", "always")
    dk.engine.restart(crash=crash)
    deadline = time.monotonic() + 60
    while dk.docker("inspect", "-f", "{{.State.Running}}", a).stdout.strip() != "true":
        assert time.monotonic() < deadline, "container with --restart always did not come back"
        time.sleep(0.5)
    assert dk.ping(a, gateway)
    b = dk.run(net)
    assert dk.ping(b, dk.address(a, net))
    # one endpoint per running container: the ones of the old sandboxes were deleted
    assert len(list((dk.driver.state_dir / "endpoints").glob("*.json"))) == 2
    assert len(dk.engine.host_run("ip", "-br", "link", "show", "master", net.bridge).stdout.splitlines()) == 2
    dk.remove_all_and_check(net)


def test_parallel_container_starts(dk: Scenario) -> None:
    """dockerd calls the driver concurrently; several gunicorn workers share state via files."""
    from concurrent.futures import ThreadPoolExecutor
    net = dk.network()
    with ThreadPoolExecutor(8) as pool:
        names = list(pool.map(lambda _: dk.run(net), range(8)))
    addresses = [dk.address(c, net) for c in names]
    assert len(set(addresses)) == 8
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(lambda c: dk.ping(c, net.subnet.network_address + 1), names))
    assert dk.ping(names[0], addresses[-1])
    dk.remove_all_and_check(net)


def test_ipv6_with_default_pools(dk: Scenario) -> None:
    net = dk.network("--ipv6", subnet=False)
    subnets = dk.docker("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", net.name).stdout.split()
    pools = [ipaddress.ip_network(s) for s in subnets]
    assert sorted(p.version for p in pools) == [4, 6]
    v6 = next(p for p in pools if p.version == 6)
    assert v6.prefixlen == 64 and v6.subnet_of(ipaddress.ip_network("fd42:7062:7269::/48"))
    c = dk.run(net)
    assert dk.ping(c, v6.network_address + 1)
    net.subnet = next(p for p in pools if p.version == 4)
    dk.remove_all_and_check(net)
    assert leased(dk.driver, v6) == []


def test_driver_never_answers_html(dk: Scenario) -> None:
    status, body = support.plugin_call(dk.driver.socket, "NetworkDriver.Join", {"NetworkID": "x"})
    assert status == 500 and "EndpointID is required" in body["Err"]
    mode = os.stat(dk.driver.socket).st_mode & 0o777
    assert mode == 0o660


@pytest.mark.slow
def test_time_docker_run_to_first_ping(dk: Scenario, capsys: pytest.CaptureFixture[str]) -> None:
    """Reported, not asserted: `docker run` until the first reply from the gateway."""
    ours = dk.network()
    builtin = dk.network(driver="bridge", ipam=False, bridge=False)
    results: dict[str, list[float]] = {}
    for net in (ours, builtin, ours, builtin, ours, builtin, ours, builtin, ours, builtin):
        gateway = str(net.subnet.network_address + 1)
        started = time.monotonic()
        dk.docker("run", "--rm", "--network", net.name, support.IMAGE, "ping", "-c", "1", "-W", "5", gateway)
        results.setdefault("pybridge" if net is ours else "bridge", []).append(time.monotonic() - started)
    with capsys.disabled():
        for name, times in results.items():
            times.sort()
            print(f"\n  docker run -> first ping, {name}: median {times[len(times) // 2] * 1000:.0f} ms "
                  f"(runs: {', '.join(f'{t * 1000:.0f}' for t in times)})")
