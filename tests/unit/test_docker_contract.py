"""The libnetwork plugin contract of the pybridge Docker driver, through Flask's test client.

Every endpoint, the error contract (always JSON {"Err": ...}, never HTML; unknown paths 404),
IPAM pool/address semantics, and one real network/endpoint life cycle on this host (prefixed
bridge, unique subnet). Also the served process: socket mode, several worker processes sharing
state through files, SIGKILL + restart, and start-up recovery of half-done work.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.docker.app import HANDLERS, create_app
from cni_bridge.docker.context import Driver, Settings
from cni_bridge.firewall import table_name
from cni_bridge.ipam.lease import parse_lease_name
from cni_bridge.state import pool_key
from tests.support import hostsnap
from tests.support.dockerd import VENV_BIN, driver_settings, plugin_call, socket_answers
from tests.support.netns import run, unique_name, unique_subnet

DOCKER_CT = "application/vnd.docker.plugins.v1.2+json"
GATEWAY_OPTS = {"RequestAddressType": "com.docker.network.gateway"}


class Plugin:
    """Calls like libnetwork's plugin client: POST, Docker's content type, JSON body."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client, self.settings = client, settings

    def raw(self, method: str, data: bytes | str, content_type: str = DOCKER_CT) -> tuple[int, Any, str]:
        resp = self.client.post(f"/{method}", data=data, content_type=content_type)
        return resp.status_code, json.loads(resp.get_data(as_text=True)), resp.content_type

    def call(self, method: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        status, payload, _ = self.raw(method, "" if body is None else json.dumps(body))
        return status, payload

    def ok(self, method: str, body: Any = None) -> dict[str, Any]:
        status, payload = self.call(method, body)
        assert status == 200 and "Err" not in payload, payload
        return payload

    def err(self, method: str, body: Any = None) -> str:
        status, payload = self.call(method, body)
        assert status == 500 and set(payload) == {"Err"}, payload
        return payload["Err"]

    def leases(self) -> dict[str, str]:
        out = {}
        for path in self.settings.ipam_data_dir.rglob("*"):
            if parse_lease_name(path.name) is not None:
                out[path.name] = json.loads(path.read_text())["container_id"]
        return out


@pytest.fixture
def plugin(tmp_path: Path) -> Plugin:
    settings = driver_settings(tmp_path)
    return Plugin(create_app(settings).test_client(), settings)


# --- protocol ------------------------------------------------------------------------------------
def test_activate(plugin: Plugin) -> None:
    status, payload, ctype = plugin.raw("Plugin.Activate", b"")
    assert status == 200 and payload == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert "json" in ctype


def test_capabilities(plugin: Plugin) -> None:
    assert plugin.ok("NetworkDriver.GetCapabilities") == {"Scope": "local", "ConnectivityScope": "local"}
    assert plugin.ok("IpamDriver.GetCapabilities", None) == {"RequiresMACAddress": False,
                                                              "RequiresRequestReplay": False}
    spaces = plugin.ok("IpamDriver.GetDefaultAddressSpaces")
    assert spaces == {"LocalDefaultAddressSpace": "pybridge-local", "GlobalDefaultAddressSpace": "pybridge-global"}


@pytest.mark.parametrize("method", sorted(HANDLERS))
@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe", b'"text"'])
def test_malformed_body_is_json_error(plugin: Plugin, method: str, body: bytes) -> None:
    status, payload, ctype = plugin.raw(method, body)
    assert status == 500 and set(payload) == {"Err"} and "malformed request body" in payload["Err"]
    assert "json" in ctype


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "application/octet-stream", ""])
def test_any_content_type_is_accepted(plugin: Plugin, content_type: str) -> None:
    status, payload, _ = plugin.raw("NetworkDriver.GetCapabilities", b"{}", content_type)
    assert status == 200 and payload["Scope"] == "local"


@pytest.mark.parametrize("method, body, message", [
    ("NetworkDriver.CreateNetwork", {}, "NetworkID is required"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": "../etc"}, "invalid NetworkID"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": 5}, "NetworkID must be a string"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": "n1", "Options": []}, "Options must be an object"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": "n1", "IPv4Data": [{"Pool": "10.0.0.0/33"}]}, "not a subnet"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": "n1", "IPv4Data": [{"Pool": "10.0.0.0/24",
                                                                      "Gateway": "10.9.0.1/24"}]}, "not in pool"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": "n1", "IPv4Data": {"Pool": "x"}}, "must be a list of objects"),
    ("NetworkDriver.DeleteNetwork", {}, "NetworkID is required"),
    ("NetworkDriver.CreateEndpoint", {"NetworkID": "n1"}, "EndpointID is required"),
    ("NetworkDriver.CreateEndpoint", {"NetworkID": "n1", "EndpointID": "e1"}, "not known to the pybridge driver"),
    ("NetworkDriver.CreateEndpoint", {"NetworkID": "n1", "EndpointID": "e1", "Interface": {"Address": "bad"}},
     "not an address/prefix"),
    ("NetworkDriver.CreateEndpoint", {"NetworkID": "n1", "EndpointID": "e1",
                                      "Interface": {"MacAddress": "01:00:5e:00:00:01"}}, "invalid MAC"),
    ("NetworkDriver.DeleteEndpoint", {"NetworkID": "n1"}, "EndpointID is required"),
    ("NetworkDriver.EndpointOperInfo", {"NetworkID": "n1", "EndpointID": "e1"}, "not known"),
    ("NetworkDriver.Join", {"NetworkID": "n1", "EndpointID": "e1", "SandboxKey": "/x"}, "not known"),
    ("NetworkDriver.Join", {"EndpointID": "e1"}, "NetworkID is required"),
    ("NetworkDriver.Leave", {"NetworkID": "n1", "EndpointID": "e1"}, "not known"),
    ("NetworkDriver.ProgramExternalConnectivity", {"NetworkID": "n1", "EndpointID": "e1",
      "Options": {"com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostPort": 8080}]}}, "does not publish ports"),
    ("NetworkDriver.RevokeExternalConnectivity", {}, "NetworkID is required"),
    ("IpamDriver.RequestPool", {"Pool": "10.0.0.0/24", "V6": True}, "is not an IPv6 subnet"),
    ("IpamDriver.RequestPool", {"SubPool": "10.0.0.0/25"}, "needs Pool"),
    ("IpamDriver.RequestPool", {"Pool": "10.0.0.0/24", "SubPool": "10.0.1.0/25"}, "is not inside"),
    ("IpamDriver.RequestPool", {"Pool": "10.0.0.0/31"}, "too small"),
    ("IpamDriver.RequestPool", {"Pool": "10.0.0.0/24", "Options": {"color": "red"}}, "unknown --ipam-opt color"),
    ("IpamDriver.RequestPool", {"Pool": "10.0.0.0/24", "Options": {"network": "a/b"}}, "invalid network name"),
    ("IpamDriver.RequestPool", {"Pool": "10.0.0.0/24", "Options": {"dataDir": "rel"}}, "absolute path"),
    ("IpamDriver.RequestPool", {"V6": "yes"}, "V6 must be a boolean"),
    ("IpamDriver.RequestAddress", {}, "PoolID is required"),
    ("IpamDriver.RequestAddress", {"PoolID": "pybridge-local/10.9.9.0/24"}, "unknown pool"),
    ("IpamDriver.ReleaseAddress", {"PoolID": "nope"}, "unknown pool"),
    ("IpamDriver.ReleasePool", {}, "PoolID is required"),
])
def test_bad_requests_have_clear_errors(plugin: Plugin, method: str, body: dict, message: str) -> None:
    assert message in plugin.err(method, body)


def test_unknown_path_and_method(plugin: Plugin) -> None:
    resp = plugin.client.post("/NetworkDriver.Teleport", data="{}")
    assert resp.status_code == 404 and "unknown plugin method" in resp.get_json()["Err"]
    resp = plugin.client.get("/Plugin.Activate")
    assert resp.status_code == 405 and "Err" in resp.get_json()
    resp = plugin.client.post("/")
    assert resp.status_code == 404 and resp.is_json


def test_bug_in_a_handler_is_still_json(plugin: Plugin, monkeypatch: pytest.MonkeyPatch) -> None:
    from cni_bridge.docker import app as app_module

    def broken(ctx: Driver, body: Any) -> dict:
        raise ZeroDivisionError("boom")
    monkeypatch.setitem(app_module.HANDLERS, "NetworkDriver.DiscoverNew", broken)
    client = create_app(plugin.settings).test_client()
    resp = client.post("/NetworkDriver.DiscoverNew", data="{}")
    assert resp.status_code == 500 and "ZeroDivisionError: boom" in resp.get_json()["Err"]


def test_trivial_endpoints(plugin: Plugin) -> None:
    assert plugin.ok("NetworkDriver.DiscoverNew", {"DiscoveryType": 1, "DiscoveryData": {}}) == {}
    assert plugin.ok("NetworkDriver.DiscoverDelete", {"DiscoveryType": 1, "DiscoveryData": {}}) == {}
    assert plugin.ok("NetworkDriver.AllocateNetwork", {"NetworkID": "n1", "Options": {}}) == {"Options": {}}
    assert plugin.ok("NetworkDriver.FreeNetwork", {"NetworkID": "n1"}) == {}
    assert plugin.ok("NetworkDriver.ProgramExternalConnectivity", {"NetworkID": "n1", "EndpointID": "e1",
                                                                   "Options": {}}) == {}
    assert plugin.ok("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": "n1", "EndpointID": "e1"}) == {}
    assert plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": "never-made"}) == {}
    assert plugin.ok("IpamDriver.ReleasePool", {"PoolID": "pybridge-local/10.9.9.0/24"}) == {}


# --- IPAM ----------------------------------------------------------------------------------------
def test_pool_is_reference_counted(plugin: Plugin) -> None:
    request = {"AddressSpace": "pybridge-local", "Pool": "10.77.3.0/24", "SubPool": "", "Options": {}, "V6": False}
    first = plugin.ok("IpamDriver.RequestPool", request)
    second = plugin.ok("IpamDriver.RequestPool", request)
    assert first == second == {"PoolID": "pybridge-local/10.77.3.0/24", "Pool": "10.77.3.0/24", "Data": {}}
    assert "overlaps pool 10.77.3.0/24" in plugin.err("IpamDriver.RequestPool", {**request, "Pool": "10.77.0.0/16"})
    assert "other options" in plugin.err("IpamDriver.RequestPool", {**request, "Options": {"network": "x"}})
    pools = plugin.settings.state_dir / "pools"
    plugin.ok("IpamDriver.ReleasePool", {"PoolID": first["PoolID"]})
    assert (pools / f"{pool_key(first['PoolID'])}.json").exists()
    plugin.ok("IpamDriver.ReleasePool", {"PoolID": first["PoolID"]})
    assert not list(pools.iterdir())


def test_default_pools_do_not_overlap(plugin: Plugin) -> None:
    base = plugin.settings.default_pool4
    got = [ipaddress.ip_network(plugin.ok("IpamDriver.RequestPool", {"AddressSpace": "pybridge-local"})["Pool"])
           for _ in range(3)]
    assert all(p.prefixlen == 24 and p.subnet_of(base) for p in got)
    assert len(set(got)) == 3
    v6 = ipaddress.ip_network(plugin.ok("IpamDriver.RequestPool", {"V6": True})["Pool"])
    assert v6.prefixlen == 64 and v6.subnet_of(plugin.settings.default_pool6)
    plugin.ok("IpamDriver.RequestPool", {})  # the fourth /24 of the /22 is the last one
    assert "no free /24 left" in plugin.err("IpamDriver.RequestPool", {})


@pytest.mark.requires_root
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


def test_addresses_gateway_static_release(plugin: Plugin) -> None:
    pool = plugin.ok("IpamDriver.RequestPool", {"Pool": "10.77.4.0/24"})["PoolID"]
    gateway = plugin.ok("IpamDriver.RequestAddress", {"PoolID": pool, "Options": GATEWAY_OPTS})
    assert gateway == {"Address": "10.77.4.1/24", "Data": {}}
    first = plugin.ok("IpamDriver.RequestAddress", {"PoolID": pool})["Address"]
    assert first == "10.77.4.2/24"
    static = plugin.ok("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "10.77.4.50"})["Address"]
    assert static == "10.77.4.50/24"
    assert "already in use" in plugin.err("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "10.77.4.50"})
    assert "gateway" in plugin.err("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "10.77.4.1"})
    assert "not in pool" in plugin.err("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "10.78.0.1"})
    leases = plugin.leases()
    assert set(leases) == {"10.77.4.1", "10.77.4.2", "10.77.4.50"}
    assert all(owner.startswith("docker-") for owner in leases.values())
    assert len(set(leases.values())) == 3  # one generated owner per address
    plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": "10.77.4.50"})
    plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": "10.77.4.50"})  # idempotent
    assert set(plugin.leases()) == {"10.77.4.1", "10.77.4.2"}
    # round robin: the next dynamic address is not the one just freed
    assert plugin.ok("IpamDriver.RequestAddress", {"PoolID": pool})["Address"] == "10.77.4.3/24"
    # the last ReleasePool frees what dockerd did not release (a crash) and the store directory
    plugin.ok("IpamDriver.ReleasePool", {"PoolID": pool})
    assert plugin.leases() == {} and not any(plugin.settings.ipam_data_dir.iterdir())


def test_custom_gateway_and_ip_range(plugin: Plugin) -> None:
    pool = plugin.ok("IpamDriver.RequestPool", {"Pool": "10.77.5.0/24", "SubPool": "10.77.5.128/25"})["PoolID"]
    assert pool == "pybridge-local/10.77.5.0/24/10.77.5.128/25"
    gateway = plugin.ok("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "10.77.5.254",
                                                       "Options": GATEWAY_OPTS})["Address"]
    assert gateway == "10.77.5.254/24"
    dynamic = ipaddress.ip_interface(plugin.ok("IpamDriver.RequestAddress", {"PoolID": pool})["Address"])
    assert dynamic.ip in ipaddress.ip_network("10.77.5.128/25")
    static = plugin.ok("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "10.77.5.1"})["Address"]
    assert static == "10.77.5.1/24"  # --ip outside --ip-range but inside --subnet, as with Docker's IPAM
    plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": "10.77.5.254"})
    assert "10.77.5.254" not in plugin.leases()
    plugin.ok("IpamDriver.ReleasePool", {"PoolID": pool})
    assert plugin.leases() == {}


def test_shared_store_with_cni(plugin: Plugin) -> None:
    """--ipam-opt network=NAME uses the store of CNI network NAME: no address is handed out twice."""
    from cni_bridge.ipam.config import parse_ipam_config
    from cni_bridge.ipam.store import LeaseStore
    name = "shared-" + os.urandom(3).hex()
    config = parse_ipam_config({"ranges": [[{"subnet": "10.77.6.0/29"}]],
                                "dataDir": str(plugin.settings.ipam_data_dir)})
    store = LeaseStore(plugin.settings.ipam_data_dir, name)
    cni_lease = store.allocate("cnicontainer1", "eth0", config)[0].address
    pool = plugin.ok("IpamDriver.RequestPool", {"Pool": "10.77.6.0/29", "Options": {"network": name}})["PoolID"]
    plugin.ok("IpamDriver.RequestAddress", {"PoolID": pool, "Options": GATEWAY_OPTS})
    docker = {plugin.ok("IpamDriver.RequestAddress", {"PoolID": pool})["Address"].split("/")[0] for _ in range(4)}
    assert str(cni_lease) not in docker and "10.77.6.1" not in docker
    assert "no free address" in plugin.err("IpamDriver.RequestAddress", {"PoolID": pool})
    plugin.ok("IpamDriver.ReleasePool", {"PoolID": pool})
    assert [lease.address for lease in store.all_leases()] == [cni_lease]  # the CNI lease is untouched
    store.release("cnicontainer1", "eth0")


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


@pytest.mark.requires_root
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


@pytest.mark.requires_root
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


@pytest.mark.requires_root
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


@pytest.mark.requires_root
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


@pytest.mark.requires_root
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
@pytest.mark.requires_root
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


@pytest.mark.requires_root
def test_serve_refuses_a_live_socket(served_driver: Any, tmp_path: Path) -> None:
    sock, settings, procs, start = served_driver
    start()
    second = subprocess.run([str(VENV_BIN / "cni-bridge"), "serve", "--socket", str(sock), "--state-dir",
                             str(tmp_path / "other"), "--cni-fastpath", "off"], capture_output=True, text=True, timeout=60)
    assert second.returncode == 1 and "already serving" in second.stderr
    assert socket_answers(sock)
