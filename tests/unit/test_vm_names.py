"""The pure parts of VM ports and the tap / macvtap keys: names, MACs, owner keys, validation."""

from __future__ import annotations

import pytest

from cni_bridge.config import parse_network
from cni_bridge.errors import PluginError
from cni_bridge.vm import names
from cni_bridge.vm.ports import host_mac, random_mac, tap_name


def test_default_tap_names_fit_the_kernel_and_follow_network_and_mac() -> None:
    name = names.default_tap_name("net1", "52:54:00:12:34:56")
    assert names.DEFAULT_TAP.fullmatch(name) and len(name.encode()) == 15
    assert name == names.default_tap_name("net1", "52:54:00:12:34:56".upper())
    assert name != names.default_tap_name("net2", "52:54:00:12:34:56")


def test_owner_keys_round_trip_and_are_no_container_s() -> None:
    cid, ifname = names.owner_of("pbtap0123456789")
    assert names.tap_of_owner(cid, ifname) == "pbtap0123456789"
    assert names.tap_of_owner("0123abcd", "eth0") is None
    assert names.tap_of_owner(names.OWNER_PREFIX + "x", "eth0") is None


def test_the_tap_mac_differs_from_the_guest_mac() -> None:
    for _ in range(50):
        guest = random_mac()
        assert int(guest[:2], 16) & 0b11 == 0b10  # locally administered unicast
        assert host_mac(guest) != guest and host_mac(guest)[3:] == guest[3:]
    assert host_mac("fe:01:02:03:04:05") == "fa:01:02:03:04:05"


@pytest.mark.parametrize("bad", ["a@b", "-tap", "x" * 16, "a/b", ""])
def test_tap_names_are_refused_clearly(bad: str) -> None:
    with pytest.raises(PluginError) as err:
        tap_name(bad)
    assert err.value.code == 7


def test_tap_and_macvtap_keys() -> None:
    spec = parse_network({"name": "n", "mode": "tap", "owner": 1000, "group": "100", "multiQueue": True})
    assert (spec.owner, spec.group, spec.multi_queue) == (1000, 100, True)
    assert parse_network({"name": "n", "mode": "macvtap", "macvlanMode": "vepa", "owner": 0}).owner == 0
    for bad, message in (({"mode": "bridge", "multiQueue": True}, "multiQueue is for mode tap"),
                         ({"mode": "macvlan", "owner": 1}, "owner and group"),
                         ({"mode": "tap", "owner": -1}, "owner must be an integer"),
                         ({"mode": "macvtap", "multiQueue": True}, "multiQueue is for mode tap")):
        with pytest.raises(PluginError, match=message):
            parse_network({"name": "n", **bad})
