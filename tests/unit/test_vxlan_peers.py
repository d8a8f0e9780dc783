"""vxlan networks: the `vxlan` key's validation, the Docker options that map to it, the pure
diffing of a VNI's FDB and neighbour entries (cni_bridge/overlay/peers.py) and this host's
registry (cni_bridge/overlay/registry.py, in a temporary run dir)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from cni_bridge import locks
from cni_bridge.attachment import Attachment
from cni_bridge.config import parse_network
from cni_bridge.docker.options import GENERIC, network_config
from cni_bridge.errors import PluginError
from cni_bridge.modes.vxlan import device_name
from cni_bridge.overlay import registry
from cni_bridge.overlay.peers import ZERO_MAC, Entries, RemoteEndpoint, desired, plan

ip = ipaddress.ip_address
H0, H1, H2 = ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3")
MAC_A, MAC_B, MAC_C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"


def vx(**vxlan: Any) -> dict[str, Any]:
    return {"name": "n", "bridge": "brvx", "vxlan": {"vni": 4242, "local": "192.0.2.1", **vxlan}}


# ----- the `vxlan` key -----------------------------------------------------------------------
def test_vxlan_key_defaults() -> None:
    spec = parse_network(vx())
    assert spec.vxlan is not None and spec.vxlan.vni == 4242 and spec.vxlan.port == 4789
    assert spec.vxlan.local == H0 and spec.vxlan.group is None and spec.vxlan.dev is None
    assert spec.vxlan.overhead == 50 and spec.mtu is None
    assert parse_network(vx(local="2001:db8::1")).vxlan.overhead == 70
    assert parse_network({"name": "n"}).vxlan is None


def test_vxlan_mtu_is_the_network_mtu() -> None:
    assert parse_network(vx(mtu=1400)).mtu == 1400
    assert parse_network(vx(mtu=1400) | {"mtu": 1400}).mtu == 1400


@pytest.mark.parametrize(("cfg", "message"), [
    (vx(vni=0), "vxlan.vni must be an integer from 1 to 16777215"),
    (vx(vni=1 << 24), "vxlan.vni must be an integer"),
    (vx(vni="x"), "vxlan.vni must be an integer"),
    (vx(vni=True), "vxlan.vni must be an integer"),
    ({"name": "n", "vxlan": {"local": "192.0.2.1"}}, "vxlan needs vni"),
    ({"name": "n", "vxlan": {"vni": 5}}, "vxlan needs local"),
    (vx(local="not an address"), "vxlan.local"),
    (vx(local="239.1.1.1"), "unicast"),
    (vx(local="0.0.0.0"), "unicast"),
    (vx(port=0), "vxlan.port must be an integer from 1 to 65535"),
    (vx(port=70000), "vxlan.port"),
    (vx(group="192.0.2.9"), "vxlan.group must be a multicast address"),
    (vx(group="ff05::1"), "same address family"),
    (vx(dev="a/b"), "vxlan.dev"),
    (vx(dev="x" * 16), "vxlan.dev"),
    (vx(mtu=10), "vxlan.mtu must be an integer from 68"),
    (vx(mtu=1400) | {"mtu": 1300}, "contradicts"),
    (vx(vnid=3), "unknown vxlan key"),
    ({"name": "n", "vxlan": "4242"}, "vxlan must be a JSON object"),
    (vx() | {"mode": "macvlan"}, "vxlan is for bridge networks"),
    (vx() | {"uplink": "eth1"}, "not both"),
])
def test_bad_vxlan_values_are_config_errors(cfg: dict[str, Any], message: str) -> None:
    with pytest.raises(PluginError) as err:
        parse_network(cfg)
    assert err.value.code == 7 and message in err.value.msg


def test_device_names_fit_ifnamsiz() -> None:
    assert device_name(4242) == "vx-4242"
    assert len(device_name((1 << 24) - 1).encode()) <= 15


# ----- Docker -o options -----------------------------------------------------------------------
def test_docker_vxlan_options_map_to_the_vxlan_key() -> None:
    config = network_config("a" * 64, {GENERIC: {"vxlanId": "4242", "vxlanLocal": "192.0.2.1", "vxlanPort": "4790",
                                                 "vxlanDev": "eth1", "vxlanGroup": "239.1.1.1",
                                                 "vxlanMtu": "1400"}})
    assert config["vxlan"] == {"vni": "4242", "local": "192.0.2.1", "port": "4790", "dev": "eth1",
                               "group": "239.1.1.1", "mtu": "1400"}
    spec = parse_network(config)
    assert spec.vxlan is not None and (spec.vxlan.vni, spec.vxlan.port, spec.mtu) == (4242, 4790, 1400)
    assert str(spec.vxlan.group) == "239.1.1.1" and spec.vxlan.dev == "eth1"


def test_docker_vxlan_options_are_validated() -> None:
    with pytest.raises(PluginError) as err:
        parse_network(network_config("b" * 64, {GENERIC: {"vxlanLocal": "192.0.2.1"}}))
    assert err.value.code == 7 and "vxlan needs vni" in err.value.msg
    with pytest.raises(PluginError) as err:
        parse_network(network_config("b" * 64, {GENERIC: {"vxlanId": "abc", "vxlanLocal": "192.0.2.1"}}))
    assert "vxlan.vni" in err.value.msg


# ----- desired entries -------------------------------------------------------------------------
def ep(mac: str, vtep: ipaddress.IPv4Address, *ips: str) -> RemoteEndpoint:
    return RemoteEndpoint.of(mac, vtep, ips)


def test_desired_floods_only_to_vteps_with_members_and_skips_local() -> None:
    want = desired([ep(MAC_A, H0, "10.0.0.2"), ep(MAC_B, H1, "10.0.0.3/24", "fd00::3"), ep(MAC_C, H2)], local=H0)
    assert want.fdb == {(ZERO_MAC, H1), (ZERO_MAC, H2), (MAC_B, H1), (MAC_C, H2)}
    assert want.neighbours == {(ip("10.0.0.3"), MAC_B), (ip("fd00::3"), MAC_B)}
    assert desired([], local=H0) == Entries()


def test_desired_mac_claimed_twice_goes_to_one_vtep_everywhere() -> None:
    one = desired([ep(MAC_B, H2, "10.0.0.3"), ep(MAC_B, H1, "10.0.0.3")])
    other = desired([ep(MAC_B, H1, "10.0.0.3"), ep(MAC_B, H2, "10.0.0.3")])
    assert one == other and one.fdb == {(ZERO_MAC, H1), (MAC_B, H1)}


def test_macs_are_compared_lower_case() -> None:
    assert desired([ep(MAC_B.upper(), H1)]).fdb == {(ZERO_MAC, H1), (MAC_B, H1)}


# ----- plan ------------------------------------------------------------------------------------
def test_plan_from_nothing_adds_everything() -> None:
    want = desired([ep(MAC_B, H1, "10.0.0.3")])
    changes = plan(Entries(), want)
    assert changes.fdb_add == [(ZERO_MAC, H1), (MAC_B, H1)] or set(changes.fdb_add) == want.fdb
    assert changes.neighbour_set == [(ip("10.0.0.3"), MAC_B)]
    assert not changes.fdb_delete and not changes.neighbour_delete


def test_plan_in_step_is_empty() -> None:
    want = desired([ep(MAC_B, H1, "10.0.0.3"), ep(MAC_C, H2, "fd00::4")])
    assert not plan(want, want)


def test_plan_removes_a_departed_endpoint_and_its_vtep() -> None:
    before = desired([ep(MAC_B, H1, "10.0.0.3"), ep(MAC_C, H2, "10.0.0.4")])
    after = desired([ep(MAC_B, H1, "10.0.0.3")])
    changes = plan(before, after)
    assert sorted(changes.fdb_delete) == sorted([(ZERO_MAC, H2), (MAC_C, H2)])
    assert changes.neighbour_delete == [(ip("10.0.0.4"), MAC_C)]
    assert not changes.fdb_add and not changes.neighbour_set


def test_plan_keeps_the_flood_entry_of_a_vtep_that_still_has_members() -> None:
    before = desired([ep(MAC_B, H1), ep(MAC_C, H1)])
    changes = plan(before, desired([ep(MAC_B, H1)]))
    assert changes.fdb_delete == [(MAC_C, H1)]


def test_plan_moves_a_mac_and_an_ip_in_place() -> None:
    """A MAC behind another VTEP is replaced (one request), not deleted: no window without it."""
    before = desired([ep(MAC_B, H1, "10.0.0.3")])
    after = desired([ep(MAC_B, H2, "10.0.0.3"), ep(MAC_C, H1)])
    changes = plan(before, after)
    assert (MAC_B, H2) in changes.fdb_add and (MAC_B, H1) not in changes.fdb_delete
    moved_ip = plan(desired([ep(MAC_B, H1, "10.0.0.3")]), desired([ep(MAC_C, H1, "10.0.0.3")]))
    assert moved_ip.neighbour_set == [(ip("10.0.0.3"), MAC_C)] and moved_ip.neighbour_delete == []
    assert moved_ip.fdb_delete == [(MAC_B, H1)]


def test_plan_removes_entries_nobody_wants() -> None:
    """What the device has beyond the desired set (a crashed distributor's leftovers) goes."""
    current = Entries(frozenset({(ZERO_MAC, H2), (MAC_A, H2)}), frozenset({(ip("10.0.0.9"), MAC_A)}))
    changes = plan(current, Entries())
    assert len(changes.fdb_delete) == 2 and changes.neighbour_delete == [(ip("10.0.0.9"), MAC_A)]


# ----- the local registry ------------------------------------------------------------------------
def test_registry_records_and_forgets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locks, "RUN_DIR", str(tmp_path))
    spec = parse_network(vx())
    a, b = Attachment("ctr-a", "eth0", None), Attachment("ctr-b", "eth0", None)
    registry.record(spec, a, "02:00:00:00:00:0A", [ip("10.0.0.2"), ip("fd00::2")])
    registry.record(spec, b, MAC_B, [ip("10.0.0.3")])
    vtep = registry.local_vtep(4242)
    assert vtep is not None and (vtep.local, vtep.port, vtep.network) == ("192.0.2.1", 4789, "n")
    assert sorted(x.container_id for x in vtep.attachments) == ["ctr-a", "ctr-b"]
    assert sorted(vtep.endpoints()) == sorted([RemoteEndpoint(MAC_A, H0, (ip("10.0.0.2"), ip("fd00::2"))),
                                               RemoteEndpoint(MAC_B, H0, (ip("10.0.0.3"),))])
    assert [v.vni for v in registry.local_vteps()] == [4242]
    registry.forget(spec, a)
    registry.forget(spec, a)  # idempotent
    assert [x.container_id for x in registry.local_vtep(4242).attachments] == ["ctr-b"]
    assert registry.prune(spec, {b.host_ifname}) == []
    assert registry.prune(spec, set()) == [b.host_ifname]
    assert registry.local_vtep(4242) is None and registry.local_vteps() == []
    assert not (tmp_path / "vxlan" / "4242").exists()
    registry.record(parse_network({"name": "plain"}), a, MAC_A, [])  # not a vxlan network: nothing
    assert registry.local_vteps() == []
