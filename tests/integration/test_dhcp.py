"""DHCP per network (`dhcp: true`, issue 19): a real dnsmasq in `pbdhcp-<network>` answers a
real busybox udhcpc with exactly the IPAM's address of its MAC, and nobody else."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from cni_bridge.dhcp import dnsmasq
from cni_bridge.dhcp.files import netns_name, network_dir, veth_name
from cni_bridge.ipam.store import LeaseStore
from tests.support import dhcp as client
from tests.support.cnitool import CniTool
from tests.support.session import unique_name
from tests.support.subnets import unique_subnet

pytestmark = pytest.mark.usefixtures("netns")
MTU, NAMESERVER = client.MTU, client.NAMESERVER


@pytest.fixture
def network(cni: CniTool, tmp_path: Path):
    """A dhcp network's config; whatever the test leaves (attachments, server, bridge) goes."""
    with client.dhcp_network(cni) as conf:
        yield conf


@pytest.fixture
def probes(tmp_path: Path):
    """Host ends of the test's client veths, deleted at the end."""
    made: list[str] = []
    yield made
    for name in made:
        subprocess.run(["ip", "link", "del", name], capture_output=True)


def attach(cni: CniTool, conf: dict[str, Any], ns: Any) -> tuple[str, str]:
    """ADD a container: (its address with prefix, its MAC)."""
    result = cni.add(conf, ns.path).result
    ip = result["ips"][0]
    return ip["address"], result["interfaces"][ip["interface"]]["mac"]


def ask(netns: Any, probes: list[str], bridge: str, mac: str, script: Path) -> dict[str, str] | None:
    """A fresh namespace with a veth of MAC `mac` on `bridge` asks for a lease."""
    ns = netns()
    host_end = unique_name("dc")
    probes.append(host_end)
    client.plug(ns, bridge, host_end, mac)
    return client.lease(ns, script)


def server_pid(name: str) -> int | None:
    pids = dnsmasq.pids(network_dir(name))
    assert len(pids) <= 1
    return pids[0] if pids else None


def test_lease_is_the_ipam_address_and_unknown_macs_get_nothing(cni, netns, network, probes, tmp_path):
    conf, script = network, client.write_script(tmp_path)
    name, bridge = conf["name"], conf["plugins"][0]["bridge"]
    a_ns, b_ns = netns(), netns()
    a_addr, a_mac = attach(cni, conf, a_ns)
    pid = server_pid(name)
    assert pid is not None and os.path.exists(f"/run/netns/{netns_name(name)}")
    gateway = str(ipaddress.ip_interface(a_addr).network.network_address + 1)

    got = ask(netns, probes, bridge, a_mac, script)
    assert got is not None, (network_dir(name) / "dnsmasq.log").read_text()
    assert f"{got['ip']}/{got['mask']}" == a_addr
    assert got["router"] == gateway and got["mtu"] == str(MTU) and got["dns"].strip() == NAMESERVER
    assert "198.51.100.0/24 " + gateway in got["staticroutes"]
    assert ask(netns, probes, bridge, "02:00:00:00:00:01", script) is None  # unknown MAC

    b_addr, b_mac = attach(cni, conf, b_ns)      # an ADD: new entry, same process
    assert server_pid(name) == pid
    cni.check(conf, b_ns.path)                   # CHECK looks at the entry and the process
    got = ask(netns, probes, bridge, b_mac, script)
    assert got is not None and f"{got['ip']}/{got['mask']}" == b_addr

    cni.delete(conf, a_ns.path)                  # a DEL: entry gone, same process
    assert server_pid(name) == pid
    assert ask(netns, probes, bridge, a_mac, script) is None

    cni.delete(conf, b_ns.path)                  # the last DEL: the server goes with it
    assert server_pid(name) is None
    assert not os.path.exists(f"/run/netns/{netns_name(name)}")
    assert subprocess.run(["ip", "link", "show", veth_name(name)], capture_output=True).returncode != 0
    assert not network_dir(name).exists()
    assert LeaseStore(cni.data_dir, name).all_leases() == []  # the server's own address too


def test_server_comes_back_after_a_reboot(cni, netns, network, probes, tmp_path):
    """Reboot simulation: dnsmasq killed, its namespace, the bridge and the run directory gone,
    the lease store kept. The runtime re-creates the pod: the server is back with its entry."""
    run_dir = tmp_path / "run"
    cni.extra_env.update(PYBRIDGE_RUN_DIR=str(run_dir), PYBRIDGE_FASTPATH_SOCKET="off")
    conf, script = network, client.write_script(tmp_path)
    name, bridge = conf["name"], conf["plugins"][0]["bridge"]
    pod = netns()
    cid = unique_name("ctr")
    result = cni.add(conf, pod.path, container_id=cid).result
    address = result["ips"][0]["address"]
    directory = run_dir / "dhcp" / name
    pids = dnsmasq.pids(directory)
    assert len(pids) == 1

    os.kill(pids[0], signal.SIGKILL)             # the reboot
    pod.delete()
    subprocess.run(["ip", "netns", "delete", netns_name(name)], check=True)
    subprocess.run(["ip", "link", "del", bridge], check=True)
    shutil.rmtree(run_dir)

    pod = netns()
    again = cni.add(conf, pod.path, container_id=cid).result
    assert again["ips"][0]["address"] == address
    mac = again["interfaces"][again["ips"][0]["interface"]]["mac"]
    assert len(dnsmasq.pids(directory)) == 1
    got = ask(netns, probes, bridge, mac, script)
    assert got is not None and f"{got['ip']}/{got['mask']}" == address
    cni.delete(conf, pod.path, container_id=cid)
    assert dnsmasq.pids(directory) == [] and not directory.exists()
    assert LeaseStore(cni.data_dir, name).all_leases() == []


# --- the Docker driver (its handlers, as libnetwork calls them) -----------------------------------
@dataclass
class DockerNet:
    nid: str
    bridge: str
    gateway: str
    addresses: dict[str, str]   # endpoint id -> address/prefix
    macs: dict[str, str]


Call = Callable[[str, Any], tuple[int, Any]]


def ok(call: Call, method: str, body: Any) -> Any:
    status, payload = call(method, body)
    assert status == 200 and "Err" not in (payload or {}), (method, payload)
    return payload


@contextlib.contextmanager
def docker_dhcp_network(call: Call, endpoints: int = 2) -> Iterator[DockerNet]:
    """What dockerd sends for `docker network create -d pybridge --ipam-driver pybridge -o
    dhcp=true` and `endpoints` containers on it; everything is released at the end."""
    from tests.support.plugin_client import GATEWAY_OPTS
    subnet = unique_subnet(4)
    bridge, nid = unique_name("br"), unique_name("nid") + "0" * 20
    pool = ok(call, "IpamDriver.RequestPool", {"AddressSpace": "pybridge-local", "Pool": str(subnet),
                                               "SubPool": "", "Options": {}, "V6": False})["PoolID"]
    gateway = ok(call, "IpamDriver.RequestAddress", {"PoolID": pool, "Address": "", "Options": GATEWAY_OPTS})["Address"]
    net = DockerNet(nid, bridge, gateway.split("/")[0], {}, {})
    try:
        ok(call, "NetworkDriver.CreateNetwork", {
            "NetworkID": nid, "Options": {"com.docker.network.generic": {"bridge": bridge, "dhcp": "true"},
                                          "com.docker.network.enable_ipv6": False},
            "IPv4Data": [{"AddressSpace": "pybridge-local", "Pool": str(subnet), "Gateway": gateway,
                          "AuxAddresses": {}}], "IPv6Data": []})
        for n in range(endpoints):
            eid = unique_name("eid") + str(n) * 20
            net.addresses[eid] = ok(call, "IpamDriver.RequestAddress", {"PoolID": pool, "Address": "",
                                                                        "Options": {}})["Address"]
            reply = ok(call, "NetworkDriver.CreateEndpoint", {"NetworkID": nid, "EndpointID": eid, "Options": {},
                                                              "Interface": {"Address": net.addresses[eid]}})
            net.macs[eid] = reply["Interface"]["MacAddress"]
        yield net
    finally:
        for eid in net.addresses:
            call("NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})
        call("NetworkDriver.DeleteNetwork", {"NetworkID": nid})
        for address in [*net.addresses.values(), gateway]:
            call("IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": address.split("/")[0]})
        call("IpamDriver.ReleasePool", {"PoolID": pool})
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    assert not network_dir(nid).exists()


def test_docker_network_with_dhcp(plugin, netns, probes, tmp_path):
    """Each endpoint's MAC gets its address from one server; a driver start after a reboot
    (dnsmasq and its namespace gone, the run directory wiped) brings the server back from the
    endpoint records; DeleteEndpoint of the last endpoint stops it and frees its address."""
    from cni_bridge.docker.context import Driver
    from cni_bridge.docker.network import recover
    script = client.write_script(tmp_path)
    foreign = unique_subnet(4)  # a pool of another IPAM driver: no address for the server
    assert "--ipam-driver pybridge" in plugin.err("NetworkDriver.CreateNetwork", {
        "NetworkID": unique_name("nid") + "9" * 20, "IPv6Data": [],
        "Options": {"com.docker.network.generic": {"dhcp": "true"}},
        "IPv4Data": [{"AddressSpace": "x", "Pool": str(foreign), "AuxAddresses": {},
                      "Gateway": f"{foreign.network_address + 1}/{foreign.prefixlen}"}]})
    with docker_dhcp_network(plugin.call) as net:
        first, second = net.addresses
        pid = server_pid(net.nid)
        assert pid is not None
        got = ask(netns, probes, net.bridge, net.macs[second], script)
        assert got is not None and f"{got['ip']}/{got['mask']}" == net.addresses[second]
        assert got["router"] == net.gateway

        os.kill(pid, signal.SIGKILL)       # a reboot: the server, its namespace and /run are gone
        subprocess.run(["ip", "netns", "delete", netns_name(net.nid)], check=True)
        shutil.rmtree(network_dir(net.nid))
        done = recover(Driver(plugin.settings))
        assert any("started the DHCP server" in line for line in done), done
        got = ask(netns, probes, net.bridge, net.macs[first], script)
        assert got is not None and f"{got['ip']}/{got['mask']}" == net.addresses[first]

        for eid in net.addresses:
            plugin.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": net.nid, "EndpointID": eid})
        assert server_pid(net.nid) is None and not os.path.exists(f"/run/netns/{netns_name(net.nid)}")
        assert "docker-dhcp" not in " ".join(plugin.leases().values())  # the server's address is free


def test_served_driver_restart_keeps_or_restarts_the_server(served_driver, netns, probes, tmp_path):
    """`cni-bridge serve` killed and started again: a running dnsmasq is kept (same pid, no
    restart for a driver restart); one that died meanwhile is started again at start-up."""
    from tests.support.dockerd import plugin_call
    sock, _, _, start = served_driver
    script = client.write_script(tmp_path)
    driver = start()
    with docker_dhcp_network(lambda method, body: plugin_call(sock, method, body), endpoints=1) as net:
        (eid,) = net.addresses
        pid = server_pid(net.nid)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        driver = start()
        assert server_pid(net.nid) == pid
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        os.kill(pid, signal.SIGKILL)
        start()
        assert server_pid(net.nid) not in (None, pid)
        got = ask(netns, probes, net.bridge, net.macs[eid], script)
        assert got is not None and f"{got['ip']}/{got['mask']}" == net.addresses[eid]


def test_status_shows_the_server_and_gc_reclaims_an_orphan(cni, netns, network, tmp_path):
    """The container vanished without a DEL (its host veth gone with its namespace): the server
    is an orphan; `cni-bridge gc --apply` stops it and frees its address with the lease."""
    import json

    from tests.support.cli import cli, cli_sources
    conf, name = network, network["name"]
    (tmp_path / "net.d").mkdir()
    (tmp_path / "net.d" / f"50-{name}.conflist").write_text(json.dumps(conf))
    pod = netns()
    attach(cni, conf, pod)
    pid = server_pid(name)
    status = cli("status", *cli_sources(cni, tmp_path), name)
    assert f"dhcp {name}: dnsmasq pid {pid}, netns {netns_name(name)}," in status.stdout, status.stdout
    assert "1 entries" in status.stdout and status.returncode == 0, status.stdout
    assert "nothing stale" in cli("gc", *cli_sources(cni, tmp_path), "--grace", "0", name).stdout

    pod.delete()                                  # the host veth goes with the namespace
    dry = cli("gc", *cli_sources(cni, tmp_path), "--grace", "0", name)
    assert f"would remove: network {name}: DHCP server netns {netns_name(name)}" in dry.stdout, dry.stdout
    applied = cli("gc", *cli_sources(cni, tmp_path), "--grace", "0", "--apply", name)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert server_pid(name) is None and not os.path.exists(f"/run/netns/{netns_name(name)}")
    assert not network_dir(name).exists()
    assert LeaseStore(cni.data_dir, name).all_leases() == []


def test_gc_frees_the_address_of_a_server_a_reboot_took(cni, netns, network, tmp_path):
    """After a reboot nobody attaches to the network again: `cni-bridge gc` frees the
    container's lease and the address the store still holds for the vanished server."""
    import json

    from tests.support.cli import cli, cli_sources
    run_dir = tmp_path / "run"
    cni.extra_env.update(PYBRIDGE_RUN_DIR=str(run_dir), PYBRIDGE_FASTPATH_SOCKET="off")
    conf, name = network, network["name"]
    (tmp_path / "net.d").mkdir()
    (tmp_path / "net.d" / f"50-{name}.conflist").write_text(json.dumps(conf))
    pod = netns()
    cni.add(conf, pod.path)
    store = LeaseStore(cni.data_dir, name)
    assert len(store.all_leases()) == 2           # the container's and the server's
    directory = run_dir / "dhcp" / name
    for pid in dnsmasq.pids(directory):           # the reboot
        os.kill(pid, signal.SIGKILL)
    pod.delete()
    subprocess.run(["ip", "netns", "delete", netns_name(name)], check=True)
    shutil.rmtree(run_dir)

    env = {"PYBRIDGE_RUN_DIR": str(run_dir)}
    status = cli("status", *cli_sources(cni, tmp_path), "--grace", "0", name, env=env)
    assert status.returncode == 1 and "(the network's DHCP server is gone)" in status.stdout, status.stdout
    applied = cli("gc", *cli_sources(cni, tmp_path), "--grace", "0", "--apply", name, env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "lease" in applied.stdout and "of the DHCP server" in applied.stdout, applied.stdout
    assert store.all_leases() == []
