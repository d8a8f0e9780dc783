"""Docker's port bindings (`-p`, `-P`, `--expose`) <-> firewall.portmap.PortMapping.

ProgramExternalConnectivity carries them in its Options, as libnetwork's types marshal them:

    com.docker.network.portmap               [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "",
                                               "HostPort": 8080, "HostPortEnd": 8080}, ...]
    com.docker.network.endpoint.exposedports [{"Proto": 6, "Port": 80}, ...]

Proto is the IP protocol number (tcp 6, udp 17, sctp 132). HostIP "" (or 0.0.0.0 / ::) means
every host address; "" publishes on both families the endpoint has, 0.0.0.0 on IPv4 only and
:: on IPv6 only (as the built-in bridge does). HostPort 0 means "pick one"; HostPortEnd above
HostPort, "pick one in this range" (`-p 8080-8090:80`); `-p 8080-8081:80-81` arrives as one
binding per port. EndpointOperInfo answers with the same shapes, host ports filled in.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Sequence

from cni_bridge.errors import config_error, shown
from cni_bridge.firewall.portmap import PROTOCOLS, PortMapping, check_mapping

PORTMAP = "com.docker.network.portmap"
EXPOSED = "com.docker.network.endpoint.exposedports"
_NAMES = {number: name for name, number in PROTOCOLS.items()}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _int(item: dict[str, Any], key: str, what: str) -> int:
    value = item.get(key) or 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise config_error(f"{what}: {key} must be a port number, got {shown(value)}")
    return value


def _protocol(item: dict[str, Any], what: str) -> str:
    number = item.get("Proto")
    if number not in _NAMES:
        raise config_error(f"{what}: protocol {shown(number)} cannot be published (tcp, udp and sctp can)")
    return _NAMES[number]


def _items(value: Any, what: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(i, dict) for i in value):
        raise config_error(f"{what} must be a list of objects")
    return value


def exposed(options: dict[str, Any]) -> list[dict[str, int]]:
    """The exposed ports, validated, in Docker's shape (reported back by EndpointOperInfo)."""
    out = []
    for item in _items(options.get(EXPOSED), EXPOSED):
        protocol = _protocol(item, EXPOSED)
        out.append({"Proto": PROTOCOLS[protocol], "Port": _int(item, "Port", EXPOSED)})
    return out


@dataclass(frozen=True)
class Binding:
    """One validated port binding of the request (before the endpoint's addresses are known)."""
    protocol: str
    port: int
    host_ip: IPAddress | None
    host_port: int
    host_end: int


def bindings(options: dict[str, Any]) -> list[Binding]:
    out = []
    for item in _items(options.get(PORTMAP), PORTMAP):
        protocol = _protocol(item, PORTMAP)
        port = _int(item, "Port", PORTMAP)
        host_port, host_end = _int(item, "HostPort", PORTMAP), _int(item, "HostPortEnd", PORTMAP)
        raw_ip = item.get("HostIP") or ""
        try:
            host_ip = ipaddress.ip_address(raw_ip) if raw_ip else None
        except (ValueError, TypeError):
            raise config_error(f"{PORTMAP}: HostIP {shown(raw_ip)} is not an IP address") from None
        if port == 0:
            raise config_error(f"{PORTMAP}: Port must be a port number from 1 to 65535, got 0")
        out.append(Binding(protocol, port, host_ip, host_port, host_end if host_end > host_port else 0))
    return out


def mappings(wanted: Sequence[Binding], addresses: Sequence[IPAddress]) -> list[PortMapping]:
    """The bindings of one endpoint as mappings to its addresses (one per family that a
    binding covers). A binding to a host address of a family the endpoint lacks is an error."""
    by_version = {a.version: a for a in reversed(list(addresses))}
    out = []
    for b in wanted:
        if b.host_ip is None:
            versions = [v for v in (4, 6) if v in by_version]
        else:
            versions = [b.host_ip.version]
        if not versions or any(v not in by_version for v in versions):
            raise config_error(f"cannot publish {b.port}/{b.protocol} on {b.host_ip or 'the host'}: the "
                               f"container has no IPv{versions[0] if versions else 4} address on this network")
        for version in versions:
            out.append(check_mapping(PortMapping(
                b.protocol, b.host_port, by_version[version], b.port,
                None if b.host_ip is None or b.host_ip.is_unspecified else b.host_ip, b.host_end)))
    return out


def encode(made: Sequence[PortMapping]) -> list[dict[str, Any]]:
    """Mappings in Docker's PortBinding shape (for the state record and EndpointOperInfo)."""
    return [{"Proto": PROTOCOLS[m.protocol], "IP": str(m.container_ip), "Port": m.container_port,
             "HostIP": str(m.host_ip) if m.host_ip else ("0.0.0.0" if m.version == 4 else "::"),
             "HostPort": m.host_port, "HostPortEnd": m.host_port} for m in made]


def decode(records: Sequence[dict[str, Any]]) -> list[PortMapping]:
    """`encode`'s output back into mappings (restoring them after a restart)."""
    out = []
    for item in records:
        host_ip = ipaddress.ip_address(item["HostIP"])
        out.append(PortMapping(_NAMES[item["Proto"]], item["HostPort"], ipaddress.ip_address(item["IP"]),
                               item["Port"], None if host_ip.is_unspecified else host_ip))
    return out
