"""Result conversion between the canonical (1.1.0) shape and older result versions."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

from cni_bridge.cni.protocol import version_tuple


def convert(result: dict[str, Any], version: str) -> dict[str, Any]:
    """0.3.x/0.4.0 results carry `ips[].version`; 1.x results do not. 1.1.0-only route fields are
    dropped for older versions."""
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
              "dns": ours.get("dns") or prev.get("dns") or {}}
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
