"""The libnetwork plugin contract of the pybridge Docker driver, through Flask's test client.

Every endpoint, the error contract (always JSON {"Err": ...}, never HTML; unknown paths 404) and
IPAM pool/address semantics: no kernel work, the state and leases live under tmp. A real network
and endpoint life cycle on this host and the served process (socket mode, several worker
processes sharing state through files, SIGKILL + restart, start-up recovery of half-done work):
tests/integration/test_docker_contract.py.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import pytest

from cni_bridge.docker.app import HANDLERS, create_app
from cni_bridge.docker.context import Driver
from cni_bridge.state import pool_key
from tests.support.plugin_client import GATEWAY_OPTS, Plugin


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
      "Options": {"com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostPort": 8080}]}}, "e1 is not known"),
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
