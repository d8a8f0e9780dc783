"""Result conversion between the canonical (1.1.0) shape and older result versions."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

from cni_bridge import validate
from cni_bridge.cni.protocol import version_tuple
from cni_bridge.errors import config_error


def convert(result: dict[str, Any], version: str) -> dict[str, Any]:
    """0.3.x/0.4.0 results carry `ips[].version`; 1.x results do not. 1.1.0-only route and
    interface fields are dropped for older versions."""
    out = copy.deepcopy(result)
    out["cniVersion"] = version
    legacy = version_tuple(version) < (1, 0, 0)
    for ip in out.get("ips", []):
        if legacy:
            ip["version"] = str(ipaddress.ip_interface(ip["address"]).version)
        else:
            ip.pop("version", None)
    if version_tuple(version) < (1, 1, 0):
        for route in out.get("routes", []):
            for key in ("mtu", "advmss", "priority", "table", "scope"):
                route.pop(key, None)
        for interface in out.get("interfaces", []):
            for key in ("mtu", "socketPath", "pciID"):
                interface.pop(key, None)
    if not out.get("dns"):
        out.pop("dns", None)
    return out


def merge_prev(prev: dict[str, Any] | None, ours: dict[str, Any]) -> dict[str, Any]:
    """When chained after another interface plugin, keep its interfaces/ips/routes in front of ours."""
    if not prev:
        return ours
    base = len(prev.get("interfaces") or [])
    merged = {"interfaces": list(prev.get("interfaces") or []) + ours.get("interfaces", []),
              "ips": [dict(ip) for ip in prev.get("ips") or []],
              "routes": list(prev.get("routes") or []) + ours.get("routes", []),
              "dns": ours.get("dns") or validate.dns(prev.get("dns") or None)}
    for ip in ours.get("ips", []):
        ip = dict(ip)
        if "interface" in ip:
            ip["interface"] += base
        # An address prevResult already reported that we configured on our interface (chained
        # ipvlan without ipam) moves to our interface instead of being listed twice.
        same = [i for i, old in enumerate(merged["ips"]) if old.get("address") == ip.get("address")]
        if same:
            merged["ips"][same[0]] = ip
        else:
            merged["ips"].append(ip)
    merged["routes"] = [r for i, r in enumerate(merged["routes"]) if r not in merged["routes"][:i]]
    return merged


def _objects(result: dict[str, Any], key: str, what: str) -> list[dict[str, Any]]:
    value = result.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise config_error(f"{what}: {key} must be a list of objects")
    return value


def check_result(result: Any, what: str = "prevResult") -> dict[str, Any]:
    """A result another plugin wrote (prevResult): the shape every version shares, checked
    before any field is used, so junk is error 7 and never a crash half-way through ADD."""
    from cni_bridge.attachment import Addressing  # lazy: pybridge-ipam's in-process exec never needs it
    if not isinstance(result, dict):
        raise config_error(f"{what} must be a JSON object")
    interfaces = _objects(result, "interfaces", what)
    for i, entry in enumerate(interfaces):
        if not isinstance(entry.get("name"), str) or not entry["name"]:
            raise config_error(f"{what}: interfaces[{i}].name must be a non-empty string")
        for key in ("mac", "sandbox", "socketPath", "pciID"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise config_error(f"{what}: interfaces[{i}].{key} must be a string")
        if entry.get("mtu") is not None and (type(entry["mtu"]) is not int or entry["mtu"] < 0):
            raise config_error(f"{what}: interfaces[{i}].mtu must be a non-negative integer")
    for i, ip in enumerate(_objects(result, "ips", what)):
        index = ip.get("interface")
        if index is not None and (type(index) is not int or not 0 <= index < len(interfaces)):
            raise config_error(f"{what}: ips[{i}].interface must index interfaces, got {index!r:.40}")
    _objects(result, "routes", what)
    Addressing.from_result(result)  # addresses, gateways, routes and dns parse
    return result
