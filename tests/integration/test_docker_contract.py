"""The pybridge Docker driver's contract on this host's kernel: one real network / endpoint life
cycle (prefixed bridge, unique subnet), bad options that must leave nothing behind, start-up
recovery of half-done work, and the served process (socket mode, several worker processes sharing
state through files, SIGKILL + restart). The protocol itself: tests/unit/test_docker_contract.py.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.docker.app import create_app
from cni_bridge.docker.context import Driver
from cni_bridge.firewall import table_name
from tests.support import hostsnap
from tests.support.dockerd import driver_settings, plugin_call, socket_answers
from tests.support.host import run
from tests.support.paths import VENV_BIN
from tests.support.plugin_client import Plugin
from tests.support.session import unique_name
from tests.support.subnets import unique_subnet


def test_default_pool_skips_host_routes(tmp_path: Path) -> None:
    """A /24 of the default range that the host already routes is never handed out."""
    settings = driver_settings(tmp_path, str(unique_subnet(4, 23)))
    taken = list(settings.default_pool4.subnets(new_prefix=24))[0]
    dummy = unique_name("rt")
    run(["ip", "link", "add", dummy, "type", "veth", "peer", "name", dummy + "p"])
    try:
        run(["ip", "addr", "add", f"{taken.network_address + 9}/24", "dev", dummy])
        plugin = Plugin(create_app(settings).test_client(), settings)
        got = ipaddress.ip_network(plugin.ok("IpamDriver.RequestPool", {})["Pool"])
        assert got != taken and got.subnet_of(settings.default_pool4)
    finally:
        run(["ip", "link", "del", dummy], check=False)


# --- a real network on this host ----------------------------------------------------------------
def _network_body(nid: str, subnet: ipaddress.IPv4Network, generic: dict, **extra: Any) -> dict:
    return {"NetworkID": nid, "Options": {"com.docker.network.generic": generic,
                                          "com.docker.network.enable_ipv6": False, **extra},
            "IPv4Data": [{"AddressSpace": "pybridge-local", "Pool": str(subnet),
                          "Gateway": f"{subnet.network_address + 1}/{subnet.prefixlen}", "AuxAddresses": {}}],
            "IPv6Data": []}


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return run(["ip", *args], check=False)


def _nft_tables() -> str:
    return run(["nft", "list", "tables"]).stdout


def test_network_and_endpoint_life_cycle(plugin: Plugin) -> None:
    subnet = unique_subnet(4)
    bridge, nid, eid = unique_name("br"), unique_name("nid") + "0" * 20, unique_name("eid") + "1" * 20
    try:
        plugin.ok("NetworkDriver.CreateNetwork", _network_body(nid, subnet, {"bridge": bridge, "mtu": "1400"}))
        plugin.ok("NetworkDriver.CreateNetwork", _network_body(nid, subnet, {"bridge": bridge, "mtu": "1400"}))
        assert f"{subnet.network_address + 1}/24" in _ip("-br", "addr", "show", "dev", bridge).stdout
        address = f"{subnet.network_address + 2}/24"
        reply = plugin.ok("NetworkDriver.CreateEndpoint", {"NetworkID": nid, "EndpointID": eid,
                                                           "Interface": {"Address": address}, "Options": {}})
        mac = reply["Interface"]["MacAddress"]
        assert mac == "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.ip_address(address[:-3]).packed)
        info = plugin.ok("NetworkDriver.EndpointOperInfo", {"NetworkID": nid, "EndpointID": eid})["Value"]
        src, host_if = info["srcName"], info["hostIfname"]
        assert f"master {bridge}" in _ip("link", "show", "dev", host_if).stdout
        peer = _ip("link", "show", "dev", src).stdout
        assert mac in peer and "mtu 1400" in peer
        assert str(subnet.network_address + 2) in run(["nft", "list", "table", "inet", table_name(nid)]).stdout
        join = plugin.ok("NetworkDriver.Join", {"NetworkID": nid, "EndpointID": eid, "SandboxKey": "/var/run/x",
                                                "Options": {}})
        assert join == {"InterfaceName": {"SrcName": src, "DstPrefix": "eth"}, "Gateway": str(subnet.network_address + 1),
                        "DisableGatewayService": False}
        plugin.ok("NetworkDriver.Leave", {"NetworkID": nid, "EndpointID": eid})
        plugin.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})
        plugin.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})  # idempotent
        assert _ip("link", "show", "dev", host_if).returncode != 0
        assert table_name(nid) not in _nft_tables()
        plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": nid})
        assert _ip("link", "show", "dev", bridge).returncode != 0
        assert not list((plugin.settings.state_dir / "networks").iterdir())
        assert not list((plugin.settings.state_dir / "endpoints").iterdir())
    finally:
        plugin.call("NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})
        plugin.call("NetworkDriver.DeleteNetwork", {"NetworkID": nid})
        _ip("link", "del", bridge)


def test_internal_network_and_given_mac(plugin: Plugin) -> None:
    subnet = unique_subnet(4)
    bridge, nid, eid = unique_name("br"), unique_name("nid") + "2" * 20, unique_name("eid") + "3" * 20
    try:
        plugin.ok("NetworkDriver.CreateNetwork", _network_body(nid, subnet, {"bridge": bridge},
                                                               **{"com.docker.network.internal": True}))
        reply = plugin.ok("NetworkDriver.CreateEndpoint", {
            "NetworkID": nid, "EndpointID": eid,
            "Interface": {"Address": f"{subnet.network_address + 5}/24", "MacAddress": "02:aa:bb:cc:dd:ee"}})
        assert reply == {"Interface": {}}  # Docker chose the MAC: we must not echo one back
        join = plugin.ok("NetworkDriver.Join", {"NetworkID": nid, "EndpointID": eid, "SandboxKey": "/x"})
        assert "Gateway" not in join  # no default route out of an internal network
        assert table_name(nid) not in _nft_tables()  # and no masquerade
        info = plugin.ok("NetworkDriver.EndpointOperInfo", {"NetworkID": nid, "EndpointID": eid})["Value"]
        assert "02:aa:bb:cc:dd:ee" in _ip("link", "show", "dev", info["srcName"]).stdout
    finally:
        plugin.call("NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})
        plugin.call("NetworkDriver.DeleteNetwork", {"NetworkID": nid})
        _ip("link", "del", bridge)
    assert _ip("link", "show", "dev", bridge).returncode != 0


@pytest.mark.parametrize("generic, extra, message", [
    ({"bogus": "1"}, {}, "unknown option -o bogus"),
    ({"mtu": "12"}, {}, "mtu must be an integer from 68"),
    ({"mode": "warp"}, {}, "mode must be one of"),
    ({"ipMasq": "maybe"}, {}, "ipMasq must be a boolean"),
    ({"bridge": "x" * 16}, {}, "invalid bridge"),
    ({"bridge": "lo"}, {}, "lo already exists and is not a bridge"),
    ({"uplink": "pbnosuchnic0"}, {}, "uplink pbnosuchnic0 of network"),
    ({"mode": "macvlan", "master": "pbnosuchnic0"}, {}, "master"),
    ({"ipMasq": "true"}, {"com.docker.network.internal": True}, "cannot masquerade"),
    ({"bridge": "B1", "com.docker.network.bridge.name": "B2"}, {}, "contradicts"),
])
def test_bad_options_leave_nothing_behind(plugin: Plugin, generic: dict, extra: dict, message: str) -> None:
    subnet = unique_subnet(4)
    nid = unique_name("nid") + "4" * 20
    before = hostsnap.snapshot()
    err = plugin.err("NetworkDriver.CreateNetwork", _network_body(nid, subnet, generic, **extra))
    assert message in err
    # CreateNetwork never makes a veth: those are other sessions' containers coming and going
    hostsnap.assert_unchanged(before, hostsnap.snapshot(), sections=["links", "addresses", "routes", "nft"],
                              ignore=[r"^veth", r" dev veth"])
    assert _ip("link", "show", "dev", "pbr-" + nid[:11]).returncode != 0
    assert not list((plugin.settings.state_dir / "networks").iterdir())
    assert table_name(nid) not in _nft_tables()


def test_overlapping_bridge_networks_are_refused(plugin: Plugin) -> None:
    subnet = unique_subnet(4)
    first, second = unique_name("nid") + "5" * 20, unique_name("nid") + "6" * 20
    bridges = unique_name("br"), unique_name("br")
    try:
        plugin.ok("NetworkDriver.CreateNetwork", _network_body(first, subnet, {"bridge": bridges[0]}))
        err = plugin.err("NetworkDriver.CreateNetwork", _network_body(second, subnet, {"bridge": bridges[1]}))
        assert f"subnet {subnet} is already used" in err
        assert _ip("link", "show", "dev", bridges[1]).returncode != 0
    finally:
        plugin.call("NetworkDriver.DeleteNetwork", {"NetworkID": first})
        for bridge in bridges:
            _ip("link", "del", bridge)


def test_recover_cleans_half_created_endpoint(plugin: Plugin) -> None:
    """A driver killed inside CreateEndpoint leaves a "creating" record and maybe a veth pair."""
    from cni_bridge.attachment import Attachment
    from cni_bridge.docker.network import ENDPOINT_IFNAME, recover, src_name
    subnet = unique_subnet(4)
    bridge, nid, eid = unique_name("br"), unique_name("nid") + "7" * 20, unique_name("eid") + "8" * 20
    ctx = Driver(plugin.settings)
    try:
        plugin.ok("NetworkDriver.CreateNetwork", _network_body(nid, subnet, {"bridge": bridge}))
        att = Attachment(eid, ENDPOINT_IFNAME, None)
        run(["ip", "link", "add", att.host_ifname, "type", "veth", "peer", "name", src_name(att)])
        ctx.state.put("endpoints", eid, {"id": eid, "network": nid, "host_ifname": att.host_ifname,
                                         "src_name": src_name(att), "addresses": [], "status": "creating"})
        half_net = unique_name("nid") + "9" * 20
        ctx.state.put("networks", half_net, {"id": half_net, "status": "creating", "ipv4": [], "ipv6": [],
                                             "config": {"name": half_net, "bridge": "pbr-" + half_net[:11],
                                                        "isGateway": True}})
        run(["ip", "link", "add", "pbr-" + half_net[:11], "type", "bridge"])
        done = recover(ctx)
        assert len(done) == 2
        assert _ip("link", "show", "dev", att.host_ifname).returncode != 0
        assert _ip("link", "show", "dev", "pbr-" + half_net[:11]).returncode != 0
        assert ctx.state.get("endpoints", eid) is None and ctx.state.get("networks", half_net) is None
        assert ctx.state.get("networks", nid)["status"] == "ready"
        assert recover(ctx) == []
    finally:
        plugin.call("NetworkDriver.DeleteNetwork", {"NetworkID": nid})
        _ip("link", "del", bridge)


# --- the served process --------------------------------------------------------------------------
def test_served_socket_concurrency_and_crash(served_driver: Any) -> None:
    sock, settings, procs, start = served_driver
    master = start()
    assert oct(os.stat(sock).st_mode & 0o777) == "0o660" and os.stat(sock).st_uid == 0
    status, body = plugin_call(sock, "Plugin.Activate")
    assert status == 200 and body["Implements"] == ["NetworkDriver", "IpamDriver"]
    status, body = plugin_call(sock, "NetworkDriver.Nope", {})
    assert status == 404 and "Err" in body
    pool = plugin_call(sock, "IpamDriver.RequestPool", {"Pool": "10.77.8.0/24"})[1]["PoolID"]

    def grab(_: int) -> str:
        status, body = plugin_call(sock, "IpamDriver.RequestAddress", {"PoolID": pool})
        assert status == 200, body
        return body["Address"]
    with ThreadPoolExecutor(32) as pool_exec:
        addresses = list(pool_exec.map(grab, range(64)))
    assert len(set(addresses)) == 64  # four worker processes, one store, no duplicates
    def group() -> set[int]:
        return {int(p) for p in run(["pgrep", "-g", str(master.pid)]).stdout.split()}
    # master + 4 workers (gunicorn forks them one by one with short random pauses, so on a busy
    # host the 64 answers can come before the last fork: give it a few seconds)
    deadline = time.monotonic() + 15
    while len(group()) < 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(group()) >= 5

    os.killpg(master.pid, signal.SIGKILL)  # crash the whole driver
    master.wait()
    start()  # replaces the stale socket
    more = grab(0)
    assert more not in addresses  # the leases and the pool survived the crash
    status, body = plugin_call(sock, "IpamDriver.RequestPool", {"Pool": "10.77.8.0/24"})
    assert body["PoolID"] == pool
    for _ in range(2):
        plugin_call(sock, "IpamDriver.ReleasePool", {"PoolID": pool})
    assert not list(settings.ipam_data_dir.iterdir())


def test_serve_refuses_a_live_socket(served_driver: Any, tmp_path: Path) -> None:
    sock, settings, procs, start = served_driver
    start()
    second = subprocess.run([str(VENV_BIN / "cni-bridge"), "serve", "--socket", str(sock), "--state-dir",
                             str(tmp_path / "other"), "--cni-fastpath", "off"], capture_output=True, text=True, timeout=60)
    assert second.returncode == 1 and "already serving" in second.stderr
    assert socket_answers(sock)
