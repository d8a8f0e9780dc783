"""Parsing of the host-local style `ipam` section: defaults and every rejected shape (error 7)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cni_bridge.errors import INVALID_CONFIG, PluginError
from cni_bridge.ipam.config import DEFAULT_DATA_DIR, parse_ipam_config
from cni_bridge.ipam.plugin import ipam_config
from tests.support.ipam_config import ip


def test_host_local_defaults() -> None:
    cfg = parse_ipam_config({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]]})
    v4, v6 = cfg.ranges[0][0], cfg.ranges[1][0]
    assert (v4.range_start, v4.range_end, v4.gateway) == (ip("10.1.0.1"), ip("10.1.0.254"), ip("10.1.0.1"))
    assert (v6.range_start, v6.gateway) == (ip("fd00:1::1"), ip("fd00:1::1"))
    assert v6.range_end == ip("fd00:1::ffff:ffff:ffff:ffff")
    assert cfg.data_dir == DEFAULT_DATA_DIR == Path("/var/lib/cni/pybridge")
    assert cfg.routes == () and cfg.dns == {}


def test_explicit_values_routes_dns_and_host_bits() -> None:
    cfg = parse_ipam_config({
        "ranges": [[{"subnet": "10.1.0.7/24", "rangeStart": "10.1.0.100", "rangeEnd": "10.1.0.110",
                     "gateway": "10.1.0.254"}]],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.0.254"}],
        "dataDir": "/tmp/x", "dns": {"nameservers": ["10.1.0.254"]}})
    r = cfg.ranges[0][0]
    assert str(r.subnet) == "10.1.0.0/24" and r.size == 11 and r.gateway == ip("10.1.0.254")
    assert [str(x.dst) for x in cfg.routes] == ["0.0.0.0/0", "192.168.0.0/16"]
    assert cfg.routes[1].gw == ip("10.1.0.254") and cfg.routes[0].gw is None
    assert cfg.data_dir == Path("/tmp/x") and cfg.dns == {"nameservers": ["10.1.0.254"]}


def test_legacy_top_level_range_is_prepended() -> None:
    cfg = parse_ipam_config({"subnet": "10.2.0.0/24", "gateway": "10.2.0.254",
                             "ranges": [[{"subnet": "fd00:2::/64"}]]})
    assert [str(rs[0].subnet) for rs in cfg.ranges] == ["10.2.0.0/24", "fd00:2::/64"]
    assert cfg.ranges[0][0].gateway == ip("10.2.0.254")


def test_runtime_ip_ranges_capability_is_prepended() -> None:
    cfg = ipam_config({"ipam": {"ranges": [[{"subnet": "10.3.0.0/24"}]]},
                       "runtimeConfig": {"ipRanges": [[{"subnet": "10.4.0.0/24"}]]}})
    assert [str(rs[0].subnet) for rs in cfg.ranges] == ["10.4.0.0/24", "10.3.0.0/24"]


@pytest.mark.parametrize("ipam, words", [
    ({}, "no address ranges"),
    ({"ranges": "10.0.0.0/24"}, "list of range sets"),
    ({"ranges": [[]]}, "non-empty list"),
    ({"ranges": [[{"rangeStart": "10.0.0.1"}]]}, "no 'subnet'"),
    ({"ranges": [[{"subnet": "10.0.0.0"}]]}, "CIDR"),
    ({"ranges": [[{"subnet": "10.0.0.300/24"}]]}, "not a valid CIDR"),
    ({"ranges": [[{"subnet": "10.0.0.0/31"}]]}, "too small"),
    ({"ranges": [[{"subnet": "fd00::/127"}]]}, "too small"),
    ({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "banana"}]]}, "not an IP address"),
    ({"ranges": [[{"subnet": "10.0.0.0/24", "gateway": 5}]]}, "must be an IP address string"),
    ({"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}]]}, "outside subnet"),
    ({"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.1.9"}]]}, "outside subnet"),
    ({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.0"}]]}, "network or broadcast"),
    ({"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.255"}]]}, "network or broadcast"),
    ({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.8"}]]},
     "after rangeEnd"),
    ({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}, "mixes IPv4 and IPv6"),
    ({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.0/25"}]]}, "overlaps"),
    ({"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.100"}],
                 [{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.100"}]]}, "overlaps"),
    ({"ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"gw": "10.0.0.1"}]}, "'dst'"),
    ({"ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"dst": "::/0", "gw": "10.0.0.1"}]},
     "different IP versions"),
    ({"ranges": [[{"subnet": "10.0.0.0/24"}]], "dataDir": "relative/dir"}, "absolute path"),
    ({"ranges": [[{"subnet": "10.0.0.0/24"}]], "dns": ["8.8.8.8"]}, "ipam.dns"),
])
def test_bad_config_is_error_7_with_a_clear_message(ipam: dict, words: str) -> None:
    with pytest.raises(PluginError) as exc:
        parse_ipam_config(ipam)
    assert exc.value.code == INVALID_CONFIG
    assert words in str(exc.value)


def test_non_overlapping_ranges_in_one_set_are_fine() -> None:
    cfg = parse_ipam_config({"ranges": [[
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.19"},
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.20", "rangeEnd": "10.0.0.29"}]]})
    assert cfg.set_of(ip("10.0.0.25")) == 0 and cfg.set_of(ip("10.0.0.30")) is None
