"""cni_bridge/dhcp/files.py and the `dhcp` key: names, the rendered dnsmasq files, validation."""

from __future__ import annotations

import pytest

from cni_bridge.config import parse_network
from cni_bridge.dhcp.files import NetworkInfo, ServerAddress, netns_name, render_hosts, render_opts, veth_name
from cni_bridge.docker.options import network_config
from cni_bridge.errors import PluginError
from cni_bridge.ipam.lease import Lease


def test_names_fit_the_kernel_and_the_file_system() -> None:
    assert netns_name("mynet") == "pbdhcp-mynet"
    long = "n" * 256
    assert netns_name(long).startswith("pbdhcp-h") and len(netns_name(long)) == 32
    assert netns_name(long) != netns_name("m" * 256)
    assert veth_name(long).startswith("pbd") and len(veth_name(long)) == 14
    assert veth_name("a") != veth_name("b")


def test_hosts_file_is_mac_comma_address_per_entry() -> None:
    entries = {"vethb": {"mac": "02:AA:00:00:00:02", "address": "10.0.0.3"},
               "tapa": {"mac": "02:aa:00:00:00:01", "address": "10.0.0.2"}}
    assert render_hosts(entries) == "02:aa:00:00:00:01,10.0.0.2\n02:aa:00:00:00:02,10.0.0.3\n"


def test_options_carry_gateway_routes_dns_and_mtu() -> None:
    info = NetworkInfo("n", "br", "10.0.0.0/24", "10.0.0.1", 1400,
                       [("192.0.2.0/24", None), ("198.51.100.0/24", "10.0.0.9"), ("fd00::/64", None)],
                       {"nameservers": ["10.0.0.53", "fd00::53"], "domain": "example.test",
                        "search": ["a.test", "b.test"]})
    assert render_opts(info).splitlines() == [
        "option:router,10.0.0.1",
        # RFC 3442: a client that gets option 121 ignores the router option: the default is repeated
        "option:classless-static-route,192.0.2.0/24,10.0.0.1,198.51.100.0/24,10.0.0.9,0.0.0.0/0,10.0.0.1",
        "option:dns-server,10.0.0.53",
        "option:domain-name,example.test",
        "option:domain-search,a.test,b.test",
        "option:mtu,1400",
    ]
    assert render_opts(NetworkInfo("n", "br", "10.0.0.0/24")) == ""


def test_network_record_round_trips() -> None:
    info = NetworkInfo("n", "br", "10.0.0.0/24", "10.0.0.1", None, [("192.0.2.0/24", None)], {},
                       ServerAddress("10.0.0.2/24", "/var/lib/x", "n", ("pbdhcp-ab", "dhcp")))
    assert NetworkInfo.from_json(info.to_json()) == info


def test_dhcp_key_is_for_bridge_networks() -> None:
    assert parse_network({"name": "n", "dhcp": True}).dhcp
    assert not parse_network({"name": "n"}).dhcp
    with pytest.raises(PluginError, match="dhcp is for bridge networks"):
        parse_network({"name": "n", "mode": "macvlan", "dhcp": True})
    with pytest.raises(PluginError, match="dhcp must be a boolean"):
        parse_network({"name": "n", "dhcp": "yes"})
    assert parse_network(network_config("a" * 64, {"com.docker.network.generic": {"dhcp": "true"}})).dhcp


def test_the_servers_lease_is_not_a_runtimes_to_collect() -> None:
    import ipaddress
    lease = Lease(ipaddress.ip_address("10.0.0.2"), ipaddress.ip_network("10.0.0.0/24"), None,
                  "pbdhcp-0123456789abcdef01234567", "dhcp", 0.0, 0)
    assert lease.held_by_dhcp and not lease.held_by_docker
