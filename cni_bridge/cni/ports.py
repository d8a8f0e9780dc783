"""The CNI `portMappings` capability, natively (no Go portmap plugin needed in the chain).

A runtime that sees `"capabilities": {"portMappings": true}` in pybridge's config passes
`runtimeConfig.portMappings`, as the reference portmap plugin reads it:

    [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}, ...]

protocol defaults to tcp (tcp, udp, sctp); hostIP to every host address, on each family the
container has an address of. The DNAT is firewall/portmap.py, owned by the attachment
(network + host veth), so DEL and GC remove it without the runtimeConfig. Imported only by
requests that carry mappings or declare the capability: other ADDs never load it.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Sequence

from cni_bridge.attachment import Addressing, Attachment
from cni_bridge.config import NetworkSpec
from cni_bridge.errors import INTERNAL, PluginError, config_error, shown
from cni_bridge.firewall.portmap import PortMapping, check_mapping

CAPABILITY = "portMappings"


def requested(config: dict[str, Any]) -> list[dict[str, Any]]:
    """runtimeConfig.portMappings, as a list of objects (error 7 otherwise)."""
    runtime = config.get("runtimeConfig")
    value = runtime.get(CAPABILITY) if isinstance(runtime, dict) else None
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(i, dict) for i in value):
        raise config_error("runtimeConfig.portMappings must be a list of objects")
    return value


def declared(config: dict[str, Any]) -> bool:
    """The config declares the capability: DEL and GC then look for mappings to remove."""
    capabilities = config.get("capabilities")
    return isinstance(capabilities, dict) and capabilities.get(CAPABILITY) is True


def mappings(entries: Sequence[dict[str, Any]], addressing: Addressing) -> list[PortMapping]:
    by_version = {}
    for address in addressing.addresses():
        by_version.setdefault(address.version, address)
    out = []
    for i, entry in enumerate(entries):
        what = f"runtimeConfig.portMappings[{i}]"
        protocol = entry.get("protocol") or "tcp"
        if not isinstance(protocol, str):
            raise config_error(f"{what}: protocol must be a string, got {shown(protocol)}")
        host_port, container_port = entry.get("hostPort"), entry.get("containerPort")
        if isinstance(host_port, bool) or not isinstance(host_port, int) or not 1 <= host_port <= 65535:
            raise config_error(f"{what}: hostPort must be an integer from 1 to 65535, got {shown(host_port)}")
        raw_ip = entry.get("hostIP") or ""
        try:
            host_ip = ipaddress.ip_address(raw_ip) if raw_ip else None
        except (ValueError, TypeError):
            raise config_error(f"{what}: hostIP {shown(raw_ip)} is not an IP address") from None
        versions = [host_ip.version] if host_ip is not None else sorted(by_version)
        for version in versions:
            if version not in by_version:
                raise config_error(f"{what}: hostIP {raw_ip} is IPv{version}, the container has no IPv{version} address")
            out.append(check_mapping(PortMapping(protocol.lower(), host_port, by_version[version], container_port,
                                                 host_ip)))
    return out


def publish(spec: NetworkSpec, att: Attachment, result: dict[str, Any], entries: Sequence[dict[str, Any]]) -> None:
    """ADD: publish the requested mappings for the attachment (all or none)."""
    if spec.mode != "bridge":
        raise config_error(f"portMappings need mode bridge (this network is mode {spec.mode}); "
                           "chain the portmap plugin for other modes")
    from cni_bridge import modes  # lazy: the bridge mode is loaded already on this path
    addressing = Addressing.from_result(result)
    wanted = mappings(entries, addressing)
    if wanted:
        modes.driver("bridge").publish(spec, att.host_ifname, list(addressing.subnets()), wanted)


def unpublish(spec: NetworkSpec, att: Attachment, entries: Sequence[dict[str, Any]] = ()) -> None:
    """DEL: idempotent; needs neither the runtimeConfig nor the namespace. With the
    runtimeConfig's mappings (`entries`) they are removed by key (flat cost), else by listing."""
    if spec.mode == "bridge":
        from cni_bridge import modes  # lazy
        modes.driver("bridge").unpublish(spec, att.host_ifname, _keys(entries))


def _keys(entries: Sequence[dict[str, Any]]) -> list[PortMapping]:
    """The mappings a DEL's runtimeConfig names, on both families (container addresses are
    not known at DEL and not part of the key); [] when they are malformed (then: listing)."""
    placeholder = Addressing.from_result({"ips": [{"address": "0.0.0.1/32"}, {"address": "::1/128"}]})
    try:
        return mappings(entries, placeholder)
    except PluginError:
        return []


def check(spec: NetworkSpec, att: Attachment, prev: dict[str, Any], entries: Sequence[dict[str, Any]]) -> None:
    """CHECK: every requested mapping is published for this attachment."""
    from cni_bridge import modes  # lazy
    wanted = mappings(entries, Addressing.from_result(prev))
    have = set(modes.driver("bridge").published(spec, att.host_ifname))
    missing = [m for m in wanted if m not in have]
    if missing:
        raise PluginError(INTERNAL, "published port missing: " + ", ".join(m.describe() for m in missing))


def gc(spec: NetworkSpec, valid: set[tuple[str, str]]) -> None:
    """GC: drop the mappings of attachments of this network that are not valid any more."""
    from cni_bridge.firewall import portmap  # lazy
    keep = {portmap.owner_tag(spec.name, Attachment(cid, ifname, None).host_ifname) for cid, ifname in valid}
    portmap.unpublish_stale(spec.name + "/", keep)
