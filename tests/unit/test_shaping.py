"""Bandwidth shaping policy without the kernel: the Go plugin's numbers, which limits apply, the
ifb name, and gc's judgement of ifb devices (the kernel side: tests/integration/test_shaping.py)."""

from __future__ import annotations

import pytest

from cni_bridge import shaping
from cni_bridge.attachment import Attachment
from cni_bridge.config import parse_network
from cni_bridge.errors import PluginError
from cni_bridge.inventory.model import HostLink
from cni_bridge.inventory.stale import IFB, orphan_ifbs

LIMITS = {"ingressRate": 8_000_000, "ingressBurst": 256_000, "egressRate": 16_000_000, "egressBurst": 256_000}


def test_tbf_numbers_are_the_go_plugins() -> None:
    """bytes = bits // 8; limit = bucket + 25 ms at the rate (Go: latencyInMillis 25)."""
    assert shaping.tbf(8_000_000, 256_000) == shaping.Tbf(rate=1_000_000, burst=32_000, limit=57_000)
    assert shaping.tbf(1_000_007, 12_119) == shaping.Tbf(rate=125_000, burst=1_514, limit=4_639)


def test_network_bandwidth_parsed_with_docker_strings() -> None:
    spec = parse_network({"name": "n", "bandwidth": {k: str(v) for k, v in LIMITS.items()}})
    assert spec.bandwidth == shaping.Bandwidth(8_000_000, 256_000, 16_000_000, 256_000)


def test_runtime_config_replaces_the_network_object_as_a_whole() -> None:
    network = shaping.Bandwidth(8_000_000, 256_000, 16_000_000, 256_000)
    config = {"runtimeConfig": {"bandwidth": {"egressRate": 1_000_000, "egressBurst": 20_000}}}
    assert shaping.effective(network, config, None) == shaping.Bandwidth(0, 0, 1_000_000, 20_000)
    assert shaping.effective(network, {}, None) is network
    declared = {"capabilities": {"bandwidth": True}}
    assert shaping.effective(None, declared, None) == shaping.Bandwidth()  # DEL: look for an ifb
    assert not shaping.Bandwidth()  # ... but ADD shapes nothing
    assert shaping.effective(None, {}, None) is None


@pytest.mark.parametrize("mtu, burst, ok", [(None, 12_112, True), (None, 12_111, False), (9000, 12_112, False),
                                            (9000, 72_112, True)])
def test_burst_must_hold_one_full_size_frame(mtu: int | None, burst: int, ok: bool) -> None:
    value = {"ingressRate": 1_000_000, "ingressBurst": burst}
    if ok:
        assert shaping.parse(value, "bandwidth", mtu).ingress_burst == burst
    else:
        with pytest.raises(PluginError, match="smaller than one full-size frame") as exc:
            shaping.parse(value, "bandwidth", mtu)
        assert exc.value.code == 7


@pytest.mark.parametrize("value, message", [
    ({"ingressRate": True, "ingressBurst": 20_000}, "whole number"),
    ({"egressRate": 7, "egressBurst": 20_000}, "below 8 bits per second"),
    ({"egressRate": 1_000_000, "egressBurst": 2**35 * 8}, "4 GiB"),
    ({"egressRate": None, "egressBurst": 20_000}, "whole number"),
])
def test_bad_values_are_error_7(value: dict, message: str) -> None:
    with pytest.raises(PluginError, match=message) as exc:
        shaping.parse(value, "runtimeConfig.bandwidth", None)
    assert exc.value.code == 7


def test_link_modes_refuse_limits_but_not_the_capability() -> None:
    with pytest.raises(PluginError, match="need mode bridge"):
        parse_network({"name": "n", "mode": "macvlan", "bandwidth": LIMITS})
    assert parse_network({"name": "n", "mode": "macvlan", "bandwidth": {}}).bandwidth == shaping.Bandwidth()


def test_ifb_name_follows_the_host_veth() -> None:
    att = Attachment("c" * 64, "eth0", None)
    assert att.ifb_ifname == "pbifb" + att.host_ifname[4:14] and len(att.ifb_ifname) == 15


def _link(name: str, index: int, kind: str) -> HostLink:
    return HostLink(name, index, kind, "02:00:00:00:00:01", True)


def test_gc_finds_ifbs_whose_host_veth_is_gone() -> None:
    live, gone = Attachment("live", "eth0", None), Attachment("gone", "eth0", None)
    links = {link.name: link for link in (
        _link(live.host_ifname, 1, "veth"), _link(live.ifb_ifname, 2, "ifb"), _link(gone.ifb_ifname, 3, "ifb"),
        _link("ifb0", 4, "ifb"), _link("pbifbnothex0123", 5, "ifb"),
        _link(Attachment("dummy", "eth0", None).ifb_ifname, 6, "dummy"))}
    found = orphan_ifbs(links)
    assert [(f.kind, f.subject, f.index, f.network) for f in found] == [(IFB, gone.ifb_ifname, 3, "")]
