"""The values that flow between front ends, IPAM and modes: addresses, routes, one attachment.

Results are kept in one canonical shape (CNI 1.1.0); the CNI front end converts to older result
versions on output, the Docker front end picks the fields it needs.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Mapping

from cni_bridge import validate
from cni_bridge.errors import config_error

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IFB_PREFIX = "pbifb"


@dataclass(frozen=True)
class IpConfig:
    address: IPInterface
    gateway: IPAddress | None = None


@dataclass(frozen=True)
class RouteConfig:
    dst: IPNetwork
    gw: IPAddress | None = None


@dataclass
class Addressing:
    """What IPAM handed out for one attachment (or what a prevResult says was configured)."""
    ips: list[IpConfig] = field(default_factory=list)
    routes: list[RouteConfig] = field(default_factory=list)
    dns: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> "Addressing":
        """Parse an IPAM result or a prevResult of any CNI version; bad input is error 7."""
        if not isinstance(result, Mapping):
            raise config_error("malformed IPAM result or prevResult", "expected a JSON object")
        try:
            ips = [IpConfig(ipaddress.ip_interface(_text(ip["address"], cidr=True)),
                            ipaddress.ip_address(_text(ip["gateway"])) if ip.get("gateway") is not None else None)
                   for ip in _objects(result, "ips")]
            routes = [RouteConfig(ipaddress.ip_network(_text(r["dst"], cidr=True), strict=False),
                                  ipaddress.ip_address(_text(r["gw"])) if r.get("gw") is not None else None)
                      for r in _objects(result, "routes")]
        except (KeyError, TypeError, ValueError) as exc:
            raise config_error("malformed IPAM result or prevResult", str(exc)) from None
        dns = validate.dns(result.get("dns") or None, "dns of the IPAM result or prevResult")
        return cls(ips, routes, dict(dns))

    def addresses(self) -> list[IPAddress]:
        return [ip.address.ip for ip in self.ips]

    def subnets(self) -> tuple[IPNetwork, ...]:
        return tuple(dict.fromkeys(ip.address.network for ip in self.ips))


def _text(value: Any, *, cidr: bool = False) -> str:
    """Addresses in results are strings, CIDRs where the spec says so, without a zone index:
    `ipaddress` would also take 5 (0.0.0.5), "10.0.0.2" (a /32) and "fe80::1%eth0"."""
    if not isinstance(value, str):
        raise TypeError(f"expected an address string, got {value!r:.60}")
    if "%" in value or (cidr and "/" not in value):
        raise ValueError(f"expected {'a CIDR' if cidr else 'an address'} without zone index, got {value!r:.60}")
    return value


def _objects(result: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = result.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise TypeError(f"{key} must be a list of objects")
    return value


@dataclass(frozen=True)
class Attachment:
    """One container interface: who (container id, ifname) and where (netns path, may be empty)."""
    container_id: str
    ifname: str
    netns: str | None
    mac: str | None = None

    @property
    def host_ifname(self) -> str:
        """Host-side veth name derived from container id + ifname, so DEL finds it without the netns."""
        return "veth" + self._digest()[:11]

    @property
    def ifb_ifname(self) -> str:
        """The ifb device that shapes what the container sends (shaping.py): `pbifb` + the first
        10 hex digits of the host veth's, so DEL finds it without the netns and gc can tell an
        ifb whose host veth is gone (15 bytes, the kernel's limit)."""
        return IFB_PREFIX + self._digest()[:10]

    def _digest(self) -> str:
        return hashlib.sha256(f"{self.container_id}\0{self.ifname}".encode()).hexdigest()


def interface_entry(name: str, mac: str, sandbox: str | None = None, mtu: int | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "mac": mac}
    if mtu:
        entry["mtu"] = mtu
    if sandbox:
        entry["sandbox"] = sandbox
    return entry


def build_result(interfaces: list[dict[str, Any]], container_index: int, addressing: Addressing) -> dict[str, Any]:
    """Canonical (1.1.0-shaped) result; `interface` of each ip points at the container interface."""
    result: dict[str, Any] = {"interfaces": interfaces, "ips": [], "routes": []}
    for ip in addressing.ips:
        entry: dict[str, Any] = {"interface": container_index, "address": str(ip.address)}
        if ip.gateway is not None:
            entry["gateway"] = str(ip.gateway)
        result["ips"].append(entry)
    for route in addressing.routes:
        r: dict[str, Any] = {"dst": str(route.dst)}
        if route.gw is not None:
            r["gw"] = str(route.gw)
        result["routes"].append(r)
    result["dns"] = addressing.dns or {}
    return result
