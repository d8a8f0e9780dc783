"""DHCP per network (`dhcp: true`, issue 19): a real dnsmasq in `pbdhcp-<network>` answers a
real busybox udhcpc with exactly the IPAM's address of its MAC, and nobody else."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

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
def test_docker_network_with_dhcp(plugin, netns, probes, tmp_path):
    """`docker network create -d pybridge --ipam-driver pybridge -o dhcp=true`: each endpoint's
    MAC gets its address; a driver restart after a reboot (dnsmasq and its namespace gone, the
    run directory wiped) brings the server back from the endpoint records."""
    from cni_bridge.docker.context import Driver
    from cni_bridge.docker.network import recover
    from tests.support.plugin_client import GATEWAY_OPTS
    script = client.write_script(tmp_path)
    subnet = unique_subnet(4)
    bridge, nid = unique_name("br"), unique_name("nid") + "0" * 20
    eids = [unique_name("eid") + "1" * 20, unique_name("eid") + "2" * 20]
    pool = plugin.ok("IpamDriver.RequestPool", {"AddressSpace": "pybridge-local", "Pool": str(subnet),
                                                "SubPool": "", "Options": {}, "V6": False})
    pid_ = pool["PoolID"]
    gateway = plugin.ok("IpamDriver.RequestAddress", {"PoolID": pid_, "Address": "", "Options": GATEWAY_OPTS})
    body = {"NetworkID": nid, "Options": {"com.docker.network.generic": {"bridge": bridge, "dhcp": "true"},
                                          "com.docker.network.enable_ipv6": False},
            "IPv4Data": [{"AddressSpace": "pybridge-local", "Pool": str(subnet), "Gateway": gateway["Address"],
                          "AuxAddresses": {}}], "IPv6Data": []}
    addresses: dict[str, str] = {}
    foreign = unique_subnet(4)  # a pool of another IPAM driver: no address for the server
    refused = dict(body, IPv4Data=[{"AddressSpace": "x", "Pool": str(foreign), "AuxAddresses": {},
                                    "Gateway": f"{foreign.network_address + 1}/{foreign.prefixlen}"}])
    assert "--ipam-driver pybridge" in plugin.err("NetworkDriver.CreateNetwork", refused)
    try:
        plugin.ok("NetworkDriver.CreateNetwork", body)
        macs = {}
        for eid in eids:
            addresses[eid] = plugin.ok("IpamDriver.RequestAddress", {"PoolID": pid_, "Address": "",
                                                                     "Options": {}})["Address"]
            reply = plugin.ok("NetworkDriver.CreateEndpoint", {"NetworkID": nid, "EndpointID": eid, "Options": {},
                                                               "Interface": {"Address": addresses[eid]}})
            macs[eid] = reply["Interface"]["MacAddress"]
            if eid == eids[0]:
                pid = server_pid(nid)
                assert pid is not None
        assert server_pid(nid) == pid  # the second endpoint: same process
        got = ask(netns, probes, bridge, macs[eids[1]], script)
        assert got is not None and f"{got['ip']}/{got['mask']}" == addresses[eids[1]]
        assert got["router"] == gateway["Address"].split("/")[0]

        os.kill(pid, signal.SIGKILL)       # a reboot: the server, its namespace and /run are gone
        subprocess.run(["ip", "netns", "delete", netns_name(nid)], check=True)
        shutil.rmtree(network_dir(nid))
        done = recover(Driver(plugin.settings))
        assert any("started the DHCP server" in line for line in done), done
        got = ask(netns, probes, bridge, macs[eids[0]], script)
        assert got is not None and f"{got['ip']}/{got['mask']}" == addresses[eids[0]]

        for eid in eids:
            plugin.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})
        assert server_pid(nid) is None and not os.path.exists(f"/run/netns/{netns_name(nid)}")
        assert "docker-dhcp" not in " ".join(plugin.leases().values())  # the server's address is free
    finally:
        for eid in eids:
            plugin.call("NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})
        plugin.call("NetworkDriver.DeleteNetwork", {"NetworkID": nid})
        for address in [*addresses.values(), gateway["Address"]]:
            plugin.call("IpamDriver.ReleaseAddress", {"PoolID": pid_, "Address": address.split("/")[0]})
        plugin.call("IpamDriver.ReleasePool", {"PoolID": pid_})
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    assert not network_dir(nid).exists()


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
