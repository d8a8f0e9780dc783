"""Every field of every request libnetwork sends, checked before a handler runs.

The shapes are libnetwork's Go structs (drivers/remote/api: CreateNetworkRequest,
CreateEndpointRequest, JoinRequest, ProgramExternalConnectivityRequest, ...; ipams/remote/api:
RequestPoolRequest, RequestAddressRequest, ...; driverapi.IPAMData). Why a table: a handler reads
only the fields it uses, so a wrongly typed field it ignores (an EndpointID of 5 in
RevokeExternalConnectivity, `--internal` sent as [1]) used to be accepted silently. Here each
known field is checked by the same `Body` accessor a handler would use (same error text);
unknown fields are ignored, as newer Docker versions add some.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from cni_bridge.docker import options as docker_options
from cni_bridge.docker.body import Body

Check = Callable[[Body, str], Any]
Fields = Mapping[str, Check]


def _required(check: Check) -> Check:
    def required(body: Body, key: str) -> Any:
        body.required_string(key)
        return check(body, key)
    return required


def _anything(body: Body, key: str) -> None:
    """Free-form by the API (DiscoveryData)."""


def _object(fields: Fields) -> Check:
    """A JSON object (or null) whose known members are checked in turn."""
    def check(body: Body, key: str) -> None:
        check_fields(body.sub(key), fields)
    return check


def _objects(fields: Fields) -> Check:
    """A list of objects (or null), each checked."""
    def check(body: Body, key: str) -> None:
        for i, item in enumerate(body.items(key)):
            check_fields(Body(f"{body.method} {key}[{i}]", item), fields)
    return check


def check_fields(body: Body, fields: Fields) -> Body:
    for key, check in fields.items():
        check(body, key)
    return body


NETWORK: Fields = {"NetworkID": Body.ident}
ENDPOINT: Fields = {**NETWORK, "EndpointID": Body.ident}
IPAM_DATA: Fields = {"AddressSpace": Body.string, "Pool": _required(Body.network), "Gateway": Body.interface,
                     "AuxAddresses": Body.strings}
CREATE_OPTIONS: Fields = {docker_options.GENERIC: Body.mapping, docker_options.ENABLE_IPV6: Body.flag,
                          docker_options.INTERNAL: Body.flag}
INTERFACE: Fields = {"Address": Body.interface, "AddressIPv6": Body.interface, "MacAddress": Body.string}
CONNECTIVITY_OPTIONS: Fields = {"com.docker.network.portmap": Body.items,
                                "com.docker.network.endpoint.exposedports": Body.items}
DISCOVERY: Fields = {"DiscoveryType": Body.integer, "DiscoveryData": _anything}

REQUESTS: dict[str, Fields] = {
    "Plugin.Activate": {},
    "NetworkDriver.GetCapabilities": {},
    "NetworkDriver.CreateNetwork": {**NETWORK, "Options": _object(CREATE_OPTIONS),
                                    "IPv4Data": _objects(IPAM_DATA), "IPv6Data": _objects(IPAM_DATA)},
    "NetworkDriver.AllocateNetwork": {**NETWORK, "Options": Body.strings,
                                      "IPv4Data": _objects(IPAM_DATA), "IPv6Data": _objects(IPAM_DATA)},
    "NetworkDriver.DeleteNetwork": NETWORK,
    "NetworkDriver.FreeNetwork": NETWORK,
    "NetworkDriver.CreateEndpoint": {**ENDPOINT, "Interface": _object(INTERFACE), "Options": Body.mapping},
    "NetworkDriver.DeleteEndpoint": ENDPOINT,
    "NetworkDriver.EndpointOperInfo": ENDPOINT,
    "NetworkDriver.Join": {**ENDPOINT, "SandboxKey": Body.string, "Options": Body.mapping},
    "NetworkDriver.Leave": ENDPOINT,
    "NetworkDriver.DiscoverNew": DISCOVERY,
    "NetworkDriver.DiscoverDelete": DISCOVERY,
    "NetworkDriver.ProgramExternalConnectivity": {**ENDPOINT, "Options": _object(CONNECTIVITY_OPTIONS)},
    "NetworkDriver.RevokeExternalConnectivity": ENDPOINT,
    "IpamDriver.GetCapabilities": {},
    "IpamDriver.GetDefaultAddressSpaces": {},
    "IpamDriver.RequestPool": {"AddressSpace": Body.string, "Pool": Body.network, "SubPool": Body.network,
                               "Options": Body.strings, "V6": Body.boolean},
    "IpamDriver.ReleasePool": {"PoolID": Body.required_string},
    "IpamDriver.RequestAddress": {"PoolID": Body.required_string, "Address": Body.address,
                                  "Options": Body.strings},
    "IpamDriver.ReleaseAddress": {"PoolID": Body.required_string, "Address": Body.address},
}


def checked(body: Body) -> Body:
    """`body` after every field libnetwork defines for its method passed its check."""
    return check_fields(body, REQUESTS.get(body.method, {}))
