"""Issue 14 item 18: the Docker driver checks every field of every request (libnetwork's remote
driver and IPAM APIs) and never echoes more than a bounded piece of its input back in `Err`.

No root, no kernel: every request here is refused (or accepted) before any kernel work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.docker.app import ERR_LIMIT, HANDLERS, create_app
from cni_bridge.docker.context import Settings
from cni_bridge.docker.requests import REQUESTS
from cni_bridge.errors import ECHO_LIMIT, PluginError, shown

BIG = "x" * 1_000_000


@pytest.fixture
def client(tmp_path: Path) -> Any:
    return create_app(Settings(state_dir=tmp_path / "state", ipam_data_dir=tmp_path / "leases")).test_client()


def post(client: Any, method: str, body: Any) -> tuple[int, dict[str, Any]]:
    resp = client.post(f"/{method}", data=json.dumps(body))
    return resp.status_code, json.loads(resp.get_data(as_text=True))


def err(client: Any, method: str, body: Any) -> str:
    status, payload = post(client, method, body)
    assert status == 500 and set(payload) == {"Err"}, payload
    return payload["Err"]


# --- bounded echo ------------------------------------------------------------------------------
NID = "n" * 64
GENERIC = "com.docker.network.generic"


@pytest.mark.parametrize("method, body", [
    ("IpamDriver.RequestAddress", {"PoolID": BIG}),
    ("IpamDriver.ReleaseAddress", {"PoolID": BIG, "Address": "10.0.0.2"}),
    ("IpamDriver.RequestAddress", {"PoolID": "p", "Address": BIG}),
    ("IpamDriver.RequestPool", {"Pool": "10.0.0.0/24", "Options": {"dataDir": BIG}}),
    ("IpamDriver.RequestPool", {"Pool": "10.0.0.0/24", "Options": {BIG: "1"}}),
    ("IpamDriver.RequestPool", {"Pool": BIG}),
    ("IpamDriver.RequestPool", {"V6": BIG}),
    ("NetworkDriver.CreateNetwork", {"NetworkID": BIG}),
    ("NetworkDriver.CreateNetwork", {"NetworkID": NID, "Options": {GENERIC: {BIG: "1"}}}),
    ("NetworkDriver.CreateNetwork", {"NetworkID": NID, "Options": {GENERIC: {"mtu": BIG}}}),
    ("NetworkDriver.CreateNetwork", {"NetworkID": NID, "Options": {GENERIC: {"mode": BIG}}}),
    ("NetworkDriver.CreateNetwork", {"NetworkID": NID, "Options": {GENERIC: {"bridge": BIG}}}),
    ("NetworkDriver.CreateNetwork", {"NetworkID": NID, "Options": {GENERIC: {
        "bridge": "x" * 16, "com.docker.network.bridge.name": BIG}}}),
    ("NetworkDriver.CreateNetwork", {"NetworkID": NID, "Options": {GENERIC: {"bridge": "x" * 16},
                                                                   "com.docker.network.internal": BIG}}),
    ("NetworkDriver.CreateNetwork", {"NetworkID": NID, "Options": {GENERIC: {"bridge": "x" * 16}},
                                     "IPv4Data": [{"Pool": BIG}]}),
    ("NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": BIG}),
    ("NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": "e1", "Interface": {"Address": BIG}}),
    ("NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": "e1", "Interface": {"MacAddress": BIG}}),
    ("NetworkDriver.Join", {"NetworkID": NID, "EndpointID": BIG}),
])
def test_echoed_values_are_bounded(client: Any, method: str, body: dict[str, Any]) -> None:
    message = err(client, method, body)
    assert len(message) < 400, (len(message), message[:300])
    if "xxxx" in message:
        assert "x" * (ECHO_LIMIT + 1) not in message and "..." in message


def test_err_is_bounded_whatever_a_handler_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last guard: a message built without the helper still cannot carry megabytes."""
    from cni_bridge.docker import app as app_module

    def chatty(ctx: Any, body: Any) -> dict:
        raise PluginError(7, "echo: " + BIG)

    def buggy(ctx: Any, body: Any) -> dict:
        raise KeyError(BIG)
    monkeypatch.setitem(app_module.HANDLERS, "NetworkDriver.DiscoverNew", chatty)
    monkeypatch.setitem(app_module.HANDLERS, "NetworkDriver.DiscoverDelete", buggy)
    client = create_app(Settings(state_dir=tmp_path / "state", ipam_data_dir=tmp_path / "leases")).test_client()
    for method in ("NetworkDriver.DiscoverNew", "NetworkDriver.DiscoverDelete"):
        message = err(client, method, {})
        assert len(message) <= ERR_LIMIT + 3 and message.endswith("...")


def test_shown_cuts_with_an_ellipsis() -> None:
    assert shown("abc") == "'abc'" and shown("abc", quote=False) == "abc"
    assert shown("y" * 500) == "'" + "y" * ECHO_LIMIT + "...'"
    assert shown("y" * 500, quote=False) == "y" * ECHO_LIMIT + "..."
    assert len(shown(list(range(100_000)))) <= ECHO_LIMIT + 3
    assert len(shown({"k": "v" * 10_000})) <= ECHO_LIMIT + 3
    assert shown(5) == "5" and shown(None) == "None"


# --- every field of every request --------------------------------------------------------------
REF = {"NetworkID": NID, "EndpointID": "e" * 64}
# An invalid bridge name: should a check ever let a CreateNetwork through, it still fails before
# the kernel (a unit test must not make a bridge).
NO_BRIDGE = {"bridge": "x" * 16}


def network(options: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    return {"NetworkID": NID, "Options": {GENERIC: NO_BRIDGE, **(options or {})}, **fields}



@pytest.mark.parametrize("method, body, message", [
    # ProgramExternalConnectivity / RevokeExternalConnectivity: NetworkID, EndpointID, Options
    ("NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NID, "Options": {}}, "EndpointID is required"),
    ("NetworkDriver.ProgramExternalConnectivity", {**REF, "EndpointID": 5}, "EndpointID must be a string"),
    ("NetworkDriver.ProgramExternalConnectivity", {**REF, "NetworkID": ["x"]}, "NetworkID must be a string"),
    ("NetworkDriver.ProgramExternalConnectivity", {**REF, "Options": ["x"]}, "Options must be an object"),
    ("NetworkDriver.ProgramExternalConnectivity", {**REF, "Options": {"com.docker.network.portmap": "80"}},
     "com.docker.network.portmap must be a list of objects"),
    ("NetworkDriver.ProgramExternalConnectivity",
     {**REF, "Options": {"com.docker.network.endpoint.exposedports": 5}}, "exposedports must be a list of objects"),
    ("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": NID}, "EndpointID is required"),
    ("NetworkDriver.RevokeExternalConnectivity", {**REF, "EndpointID": []}, "EndpointID must be a string"),
    ("NetworkDriver.RevokeExternalConnectivity", {**REF, "EndpointID": "../x"}, "invalid EndpointID"),
    # CreateNetwork: Options booleans, IPAMData members
    ("NetworkDriver.CreateNetwork", network({"com.docker.network.internal": [1]}),
     "com.docker.network.internal must be a boolean"),
    ("NetworkDriver.CreateNetwork", network({"com.docker.network.internal": "yes"}),
     "com.docker.network.internal must be a boolean"),
    ("NetworkDriver.CreateNetwork", network({"com.docker.network.enable_ipv6": 5}),
     "com.docker.network.enable_ipv6 must be a boolean"),
    ("NetworkDriver.CreateNetwork", network({GENERIC: "mtu=1400"}), "com.docker.network.generic must be an object"),
    ("NetworkDriver.CreateNetwork", network(IPv4Data=[{"AddressSpace": 7, "Pool": "10.1.2.0/24"}]),
     "AddressSpace must be a string"),
    ("NetworkDriver.CreateNetwork", network(IPv4Data=[{"Pool": "10.1.2.0/24", "AuxAddresses": 5}]),
     "AuxAddresses must be an object"),
    ("NetworkDriver.CreateNetwork", network(IPv4Data=[{"Pool": "10.1.2.0/24", "AuxAddresses": {"h": 5}}]),
     "AuxAddresses['h'] must be a string"),
    ("NetworkDriver.CreateNetwork", network(IPv6Data=[{"AddressSpace": "s"}]), "Pool is required"),
    ("NetworkDriver.CreateNetwork", network(IPv6Data=["fd00::/64"]), "must be a list of objects"),
    # the other network and endpoint calls
    ("NetworkDriver.AllocateNetwork", {"NetworkID": 5}, "NetworkID must be a string"),
    ("NetworkDriver.AllocateNetwork", {"NetworkID": NID, "Options": {"a": 1}}, "Options['a'] must be a string"),
    ("NetworkDriver.FreeNetwork", {}, "NetworkID is required"),
    ("NetworkDriver.CreateEndpoint", {**REF, "Options": "x"}, "Options must be an object"),
    ("NetworkDriver.CreateEndpoint", {**REF, "Interface": ["10.0.0.2/24"]}, "Interface must be an object"),
    ("NetworkDriver.CreateEndpoint", {**REF, "Interface": {"AddressIPv6": "fd00::/64/1"}}, "not an address/prefix"),
    ("NetworkDriver.Join", {**REF, "Options": "x"}, "Options must be an object"),
    ("NetworkDriver.Join", {**REF, "SandboxKey": 5}, "SandboxKey must be a string"),
    ("NetworkDriver.Leave", {**REF, "EndpointID": 5}, "EndpointID must be a string"),
    ("NetworkDriver.EndpointOperInfo", {"NetworkID": NID}, "EndpointID is required"),
    ("NetworkDriver.DiscoverNew", {"DiscoveryType": "x", "DiscoveryData": {}}, "DiscoveryType must be an integer"),
    ("NetworkDriver.DiscoverDelete", {"DiscoveryType": True}, "DiscoveryType must be an integer"),
    # IPAM
    ("IpamDriver.RequestPool", {"AddressSpace": 5}, "AddressSpace must be a string"),
    ("IpamDriver.RequestPool", {"Pool": "10.0.0.0/24", "Options": {"network": 5}}, "must be a string"),
    ("IpamDriver.RequestAddress", {"PoolID": "p", "Options": {"RequestAddressType": 5}},
     "Options['RequestAddressType'] must be a string"),
    ("IpamDriver.RequestAddress", {"PoolID": "p", "Options": []}, "Options must be an object"),
    ("IpamDriver.ReleaseAddress", {"PoolID": "p", "Address": 5}, "Address must be a string"),
    ("IpamDriver.ReleasePool", {"PoolID": 5}, "PoolID must be a string"),
])
def test_every_field_is_checked(client: Any, method: str, body: dict[str, Any], message: str) -> None:
    assert message in err(client, method, body)


@pytest.mark.parametrize("method, body", [
    ("NetworkDriver.ProgramExternalConnectivity", {**REF, "Options": {}}),
    ("NetworkDriver.ProgramExternalConnectivity", {**REF, "Options": None}),
    ("NetworkDriver.ProgramExternalConnectivity", {**REF, "Options": {
        "com.docker.network.portmap": [], "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}],
        "com.docker.network.something.new": {"any": ["thing"]}}}),
    ("NetworkDriver.ProgramExternalConnectivity", {**REF, "Options": {"com.docker.network.portmap": None}}),
    ("NetworkDriver.RevokeExternalConnectivity", REF),
    ("NetworkDriver.AllocateNetwork", {"NetworkID": NID, "Options": {"k": "v"}, "IPv4Data": None}),
    ("NetworkDriver.FreeNetwork", {"NetworkID": NID}),
    ("NetworkDriver.DiscoverNew", {"DiscoveryType": 1, "DiscoveryData": {"Address": "x", "self": True}}),
    ("NetworkDriver.DiscoverDelete", {"DiscoveryType": 1, "DiscoveryData": None}),
    ("NetworkDriver.DeleteNetwork", {"NetworkID": NID, "Unknown": [1, 2]}),  # unknown fields are ignored
    ("IpamDriver.ReleasePool", {"PoolID": "pybridge-local/10.9.9.0/24"}),
])
def test_valid_requests_are_still_accepted(client: Any, method: str, body: dict[str, Any]) -> None:
    status, payload = post(client, method, body)
    assert status == 200 and "Err" not in payload, payload


@pytest.mark.parametrize("binding, message", [
    ({"Proto": 1, "Port": 80}, "protocol 1 cannot be published"),
    ({"Proto": 6, "Port": 70000}, "Port must be a port number"),
    ({"Proto": 6, "Port": 80, "HostPort": -1}, "HostPort must be a port number"),
    ({"Proto": 6, "Port": 80, "HostIP": "nonsense"}, "HostIP 'nonsense' is not an IP address"),
    ({"Proto": 17, "Port": 0}, "Port must be a port number from 1"),
])
def test_port_bindings_are_checked_before_anything(client: Any, binding: dict, message: str) -> None:
    """A bad binding is a clear error, before the endpoint is even looked up (issue 16)."""
    assert message in err(client, "NetworkDriver.ProgramExternalConnectivity",
                          {**REF, "Options": {"com.docker.network.portmap": [binding]}})


def test_publishing_for_an_unknown_endpoint_is_refused(client: Any) -> None:
    message = err(client, "NetworkDriver.ProgramExternalConnectivity",
                  {**REF, "Options": {"com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostPort": 8080}]}})
    assert "is not known to the pybridge driver" in message


def test_internal_flag_spellings(client: Any) -> None:
    """"true"/"false" strings (as -o gives them) and JSON booleans pass the check; the rest does not."""
    from cni_bridge.docker.options import flag
    assert flag({"k": True}, "k") and flag({"k": " TRUE "}, "k") and not flag({"k": "false"}, "k")
    assert not flag({}, "k") and not flag({"k": None}, "k")
    for bad in (1, [1], "yes", {}):
        with pytest.raises(PluginError):
            flag({"k": bad}, "k")


def test_every_handler_has_a_request_shape() -> None:
    assert set(REQUESTS) == set(HANDLERS)
