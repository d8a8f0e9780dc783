"""Property-based fuzzing of the Docker driver's JSON handlers (the Flask app, test client).

Every answer is JSON: 200 with the method's payload, or an error status with exactly
{"Err": "<non-empty text>"} -- never an HTML page, a traceback, or the driver's "internal error"
text (a Python exception in a handler). A refused request writes nothing to the driver's state or
lease directories (checked per request), and a batch leaves the host as it found it.

Requests that succeed are undone at once (DeleteNetwork, DeleteEndpoint, ReleaseAddress,
ReleasePool). Mutated bodies only ever name this pytest run's objects: a real network, endpoint and
pool made by the fixture, prefixed names, unique subnets; pools and gateways are junk or inside
the run's subnets (a valid 10.0.0.0/8 pool would put a route on the host).
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cni_bridge.docker.app import HANDLERS, create_app
from tests.support.dockerd import driver_settings
from tests.support.fuzzing import (
    BAD_ADDRESSES,
    DATA_DIR_JUNK,
    IPAM_HINTS,
    assert_no_traceback,
    files_unchanged_if,
    fuzz,
    host_unchanged,
    key_junk,
    mutations,
    stdin_bytes,
)
from tests.support.host import run as sh
from tests.support.session import session, unique_name
from tests.support.subnets import unique_subnet

METHODS = sorted(HANDLERS)
BODY_KEYS = ("EndpointID", "PoolID", "Pool", "SubPool", "V6", "Options", "Interface", "Address",
             "IPv4Data", "IPv6Data", "SandboxKey", "AddressSpace")  # no NetworkID: see test_arbitrary_bodies
BAD_POOLS = ["10.0.0.0/33", "300.1.1.1/24", "abc", "", 5, None, "fd00::/129", "10.1.2.3", "10.0.0.0/31",
             "1.2.3.4/24/1", [], {}]
BAD_IDS = ["", "../etc", "a/b", "x" * 200, "a b", ".hidden", 5, None, [], {}]


@dataclasses.dataclass
class Driver:
    client: Any
    state_dir: Path
    lease_dir: Path
    network: str      # a real network (bridge, gateway address, masquerade) made by the fixture
    endpoint: str     # ... with one endpoint
    pool_id: str      # an IPAM pool of the driver
    bases: dict[str, dict[str, Any]]
    junk: dict[str, list[Any]]
    outcomes: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def post(self, method: str, body: Any) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        resp = self.client.post(f"/{method}", data=data, content_type="application/vnd.docker.plugins.v1.2+json")
        text = resp.get_data(as_text=True)
        assert "json" in resp.content_type, (resp.status_code, resp.content_type, text[:200])
        return resp.status_code, json.loads(text)

    def ok(self, method: str, body: Any) -> dict[str, Any]:
        status, payload = self.post(method, body)
        assert status == 200, payload
        return payload


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Driver]:
    settings = driver_settings(tmp_path_factory.mktemp("fuzz-docker"))
    client = create_app(settings).test_client()
    subnet, spare, pool, pool2 = unique_subnet(4), unique_subnet(4), unique_subnet(4), unique_subnet(4)
    bridge, spare_bridge = unique_name("fzdbr"), unique_name("fzdbr")
    nid, eid = unique_name("fzn") + "0" * 20, unique_name("fze") + "1" * 20
    gw = f"{subnet.network_address + 1}/{subnet.prefixlen}"
    network = {"NetworkID": nid, "Options": {"com.docker.network.generic": {"bridge": bridge, "mtu": "1400"},
                                             "com.docker.network.enable_ipv6": False},
               "IPv4Data": [{"AddressSpace": "pybridge-local", "Pool": str(subnet), "Gateway": gw,
                             "AuxAddresses": {}}], "IPv6Data": []}
    d = Driver(client, settings.state_dir, settings.ipam_data_dir, nid, eid, "", {}, {})
    d.ok("NetworkDriver.CreateNetwork", network)
    try:
        d.ok("NetworkDriver.CreateEndpoint", {"NetworkID": nid, "EndpointID": eid,
                                              "Interface": {"Address": f"{subnet.network_address + 5}/24"}})
        d.pool_id = d.ok("IpamDriver.RequestPool", {"AddressSpace": "pybridge-local", "Pool": str(pool),
                                                    "Options": {}, "V6": False})["PoolID"]
        spare_nid, spare_eid = unique_name("fzm") + "2" * 20, unique_name("fzx") + "3" * 20
        ref = {"NetworkID": nid, "EndpointID": eid}
        d.bases = {
            "Plugin.Activate": {},
            "NetworkDriver.CreateNetwork": {
                **network, "NetworkID": spare_nid,
                "Options": {"com.docker.network.generic": {"bridge": spare_bridge, "mtu": "1400", "ipMasq": "false"},
                            "com.docker.network.enable_ipv6": False, "com.docker.network.internal": False},
                "IPv4Data": [{"AddressSpace": "pybridge-local", "Pool": str(spare),
                              "Gateway": f"{spare.network_address + 1}/24", "AuxAddresses": {}}]},
            "NetworkDriver.DeleteNetwork": {"NetworkID": spare_nid},
            "NetworkDriver.CreateEndpoint": {"NetworkID": nid, "EndpointID": spare_eid, "Options": {},
                                             "Interface": {"Address": f"{subnet.network_address + 9}/24",
                                                           "AddressIPv6": "", "MacAddress": ""}},
            "NetworkDriver.DeleteEndpoint": {"NetworkID": nid, "EndpointID": spare_eid},
            "NetworkDriver.EndpointOperInfo": ref,
            "NetworkDriver.Join": {**ref, "SandboxKey": "/var/run/docker/netns/x", "Options": {}},
            "NetworkDriver.Leave": ref,
            "NetworkDriver.ProgramExternalConnectivity": {**ref, "Options": {}},
            "NetworkDriver.RevokeExternalConnectivity": ref,
            "NetworkDriver.AllocateNetwork": {"NetworkID": spare_nid, "Options": {}},
            "NetworkDriver.FreeNetwork": {"NetworkID": spare_nid},
            "NetworkDriver.DiscoverNew": {"DiscoveryType": 1, "DiscoveryData": {}},
            "NetworkDriver.DiscoverDelete": {"DiscoveryType": 1, "DiscoveryData": {}},
            "NetworkDriver.GetCapabilities": {},
            "IpamDriver.GetCapabilities": {},
            "IpamDriver.GetDefaultAddressSpaces": {},
            "IpamDriver.RequestPool": {"AddressSpace": "pybridge-local", "Pool": str(pool2), "SubPool": "",
                                       "Options": {"network": unique_name("fzs")}, "V6": False},
            "IpamDriver.ReleasePool": {"PoolID": f"pybridge-local/{spare}"},
            "IpamDriver.RequestAddress": {"PoolID": d.pool_id, "Address": "", "Options": {}},
            "IpamDriver.ReleaseAddress": {"PoolID": d.pool_id, "Address": str(pool.network_address + 50)},
        }
        assert set(d.bases) == set(HANDLERS)
        d.junk = {**key_junk(session().prefix), "Pool": BAD_POOLS, "SubPool": BAD_POOLS + [str(pool2)],
                  "NetworkID": BAD_IDS, "EndpointID": BAD_IDS, "PoolID": BAD_IDS, "dataDir": DATA_DIR_JUNK,
                  "Gateway": BAD_ADDRESSES, "Address": BAD_ADDRESSES + [str(pool.network_address + 1)],
                  "AddressIPv6": BAD_ADDRESSES, "MacAddress": ["01:00:5e:00:00:01", "zz", 5, "02:00:00:00:00:05"],
                  "V6": [True, "yes", 1, None], "RequestAddressType": ["com.docker.network.gateway", 5, "x"],
                  "com.docker.network.portmap": [[{"Proto": 6, "Port": 80}], [], None],
                  "com.docker.network.internal": [True, "true", "x", 1]}
        yield d
    finally:
        d.post("NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})
        d.post("NetworkDriver.DeleteNetwork", {"NetworkID": nid})
        if d.pool_id:
            d.post("IpamDriver.ReleasePool", {"PoolID": d.pool_id})
        for name in (bridge, spare_bridge):
            sh(["ip", "link", "del", name], check=False)


def judge(status: int, payload: Any) -> None:
    """The libnetwork error contract."""
    if status == 200:
        assert isinstance(payload, dict) and "Err" not in payload, payload
        return
    assert status in (404, 405, 500), (status, payload)
    assert isinstance(payload, dict) and set(payload) == {"Err"}, payload
    assert isinstance(payload["Err"], str) and payload["Err"].strip(), payload
    assert "internal error in the pybridge driver" not in payload["Err"], f"driver bug: {payload['Err']}"
    assert_no_traceback(payload["Err"])


def undo(d: Driver, method: str, body: Any, payload: dict[str, Any]) -> None:
    """Take back what an accepted request made, so that the batch ends where it started."""
    if method == "IpamDriver.RequestPool":  # also accepted with an empty body or JSON null
        d.ok("IpamDriver.ReleasePool", {"PoolID": payload["PoolID"]})
    if not isinstance(body, dict):
        return
    if method == "NetworkDriver.CreateNetwork":
        d.ok("NetworkDriver.DeleteNetwork", {"NetworkID": body["NetworkID"]})
    elif method == "NetworkDriver.CreateEndpoint":
        d.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": d.network, "EndpointID": body["EndpointID"]})
    elif method == "IpamDriver.RequestAddress":
        address = str(ipaddress.ip_interface(payload["Address"]).ip)
        d.ok("IpamDriver.ReleaseAddress", {"PoolID": body["PoolID"], "Address": address})


def request(d: Driver, method: str, body: Any) -> tuple[int, Any]:
    out: list[int] = []
    with files_unchanged_if(lambda: out[0] != 200, d.state_dir, d.lease_dir):
        status, payload = d.post(method, body)
        out.append(status)
    judge(status, payload)
    d.outcomes[method, status] += 1
    if status == 200:
        undo(d, method, body, payload)
    return status, payload


def fixture_objects_intact(d: Driver) -> None:
    d.ok("NetworkDriver.EndpointOperInfo", {"NetworkID": d.network, "EndpointID": d.endpoint})
    address = d.ok("IpamDriver.RequestAddress", {"PoolID": d.pool_id})["Address"]  # the pool is still there
    d.ok("IpamDriver.ReleaseAddress", {"PoolID": d.pool_id, "Address": address.split("/")[0]})
    assert not list((d.state_dir / "endpoints").glob("*fzx*")), "a fuzzed endpoint was left in the state"


def test_arbitrary_bodies(driver: Driver) -> None:
    """Bytes, non-objects and junk objects to every method (and to unknown paths).
    CreateNetwork never gets a NetworkID from here: an accepted one would make a bridge whose
    name comes from the junk (the mutation test covers CreateNetwork with this run's names)."""

    @fuzz(800)
    @given(method=st.sampled_from(METHODS) | st.sampled_from(["NetworkDriver.Teleport", "", "Plugin.activate"]),
           body=stdin_bytes(BODY_KEYS))
    @example(method="IpamDriver.RequestPool", body=b"{}")
    def check(method: str, body: bytes) -> None:
        try:
            decoded = json.loads(body)
        except ValueError:
            decoded = None
        request(driver, method, decoded if isinstance(decoded, dict) else body)

    with host_unchanged(driver.state_dir, driver.lease_dir, ignore=IPAM_HINTS):
        check()
    fixture_objects_intact(driver)


def test_mutated_bodies(driver: Driver) -> None:
    """A valid body of each method with fields replaced by junk, deleted, or unknown ones added."""

    @fuzz(1400)
    @given(method=st.sampled_from(METHODS), data=st.data())
    @example(method="NetworkDriver.CreateNetwork", data=None)
    @example(method="NetworkDriver.CreateEndpoint", data=None)
    def check(method: str, data: Any) -> None:
        base = driver.bases[method]
        body = data.draw(mutations(base, driver.junk), label="body") if data is not None and base else base
        request(driver, method, body)

    driver.outcomes.clear()
    with host_unchanged(driver.state_dir, driver.lease_dir, ignore=IPAM_HINTS):
        check()
    fixture_objects_intact(driver)
    print(sorted(driver.outcomes.items()))
    for method in ("NetworkDriver.CreateNetwork", "NetworkDriver.CreateEndpoint", "IpamDriver.RequestPool",
                   "IpamDriver.RequestAddress", "NetworkDriver.Join"):  # the mutations reach both outcomes
        assert driver.outcomes[method, 200] and driver.outcomes[method, 500], (method, driver.outcomes)
