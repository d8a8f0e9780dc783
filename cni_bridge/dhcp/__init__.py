"""DHCP per network (`dhcp: true`): a dnsmasq in its own namespace on the network's bridge,
serving each attachment's MAC its IPAM address, and nothing to unknown MACs.

The attachment code calls `add_host` when a port joins (CNI ADD, Docker CreateEndpoint, a VM
port) and `remove_host` when it leaves; `for_cni` / `for_docker` build the network's side from
what each front end knows. Files: files.py (what is on disk), dnsmasq.py (the process),
server.py (namespace, veth, address, life cycle).
"""

from __future__ import annotations

from typing import Any, Mapping

from cni_bridge.attachment import Addressing
from cni_bridge.config import NetworkSpec
from cni_bridge.dhcp.files import NetworkInfo
from cni_bridge.dhcp.server import AddressSource, add_host, check_host, hosts, remove_host, restore, stop
from cni_bridge.ipam.backend import location

__all__ = ["AddressSource", "NetworkInfo", "add_host", "check_host", "for_cni", "for_docker", "hosts", "ipv4_of",
           "network_info", "remove_host", "restore", "stop"]


def ipv4_of(addressing: Addressing):
    """The attachment's first IPv4 address (DHCPv4 serves one), or None."""
    return next((ip for ip in addressing.ips if ip.address.version == 4), None)


def network_info(spec: NetworkSpec, addressing: Addressing) -> NetworkInfo | None:
    """The network's side as one attachment's addressing shows it (subnet, gateway, routes,
    DNS, else the network's `dns`) plus the spec's bridge and MTU; None without an IPv4 address."""
    ip = ipv4_of(addressing)
    if ip is None:
        return None
    routes = [(str(r.dst), str(r.gw) if r.gw else None) for r in addressing.routes if r.dst.version == 4]
    return NetworkInfo(spec.name, spec.bridge, str(ip.address.network),
                       str(ip.gateway) if ip.gateway else None, spec.mtu, routes,
                       dict(addressing.dns or spec.dns or {}))


def for_cni(config: Mapping[str, Any]) -> AddressSource:
    """The server's address comes from the network's pybridge-ipam store (the CNI config)."""
    from cni_bridge.cni import ipam_client  # lazy: the CNI front end's IPAM helpers
    from cni_bridge.errors import config_error
    if not ipam_client.in_process(dict(config)):
        raise config_error("dhcp needs ipam type pybridge-ipam (the DHCP server leases its own address there)")
    plugin = ipam_client.file_ipam()
    return AddressSource(location(plugin.store_spec(config)), str(config["name"]), plugin.ipam_config(config))


def for_docker(pool: Mapping[str, Any], config) -> AddressSource:
    """A Docker network's server address comes from its pybridge IPAM pool (`config`: the
    pool's IpamConfig, docker/ipam.py)."""
    return AddressSource(location(config.store), pool["store"], config, docker=True)

