"""The CNI IPAM command logic (what `pybridge-ipam` and the main plugin call in-process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cni_bridge.errors import INVALID_CONFIG, INVALID_ENV, NOT_AVAILABLE, UNKNOWN_CONTAINER, PluginError
from cni_bridge.ipam import plugin
from cni_bridge.ipam.store import LeaseStore
from tests.support.ipam_config import NETWORK, ip, net_config


def test_add_returns_a_cni_1x_ipam_result(data_dir: Path) -> None:
    config = net_config(data_dir, "10.1.0.0/24", "fd00:1::/64")
    config["ipam"]["routes"] = [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00:1::1"}]
    config["ipam"]["dns"] = {"nameservers": ["10.1.0.1"]}
    assert plugin.ipam_add(NETWORK, "c1", "eth0", config, {}) == {
        "ips": [{"address": "10.1.0.2/24", "gateway": "10.1.0.1"},
                {"address": "fd00:1::2/64", "gateway": "fd00:1::1"}],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00:1::1"}],
        "dns": {"nameservers": ["10.1.0.1"]},
    }
    assert plugin.store_spec(config).data_dir == data_dir


def test_requested_ips_from_all_three_sources() -> None:
    config = {"args": {"cni": {"ips": ["10.1.0.7"]}}, "runtimeConfig": {"ips": ["fd00:1::7/64", "10.1.0.7/24"]}}
    assert plugin.requested_ips({"IP": "10.1.0.5, fd00:1::5/64"}, {}) == [ip("10.1.0.5"), ip("fd00:1::5")]
    assert plugin.requested_ips({}, config) == [ip("10.1.0.7"), ip("fd00:1::7")]
    assert plugin.requested_ips({"IP": "10.1.0.7", "K8S_POD_NAME": "x"}, config) == [
        ip("10.1.0.7"), ip("fd00:1::7")]
    assert plugin.requested_ips({}, {"runtimeConfig": {}}) == []


@pytest.mark.parametrize("cni_args, config, code", [
    ({"IP": "10.1.0.x"}, {}, INVALID_ENV),
    ({}, {"args": {"cni": {"ips": ["nope"]}}}, INVALID_CONFIG),
    ({}, {"runtimeConfig": {"ips": "10.1.0.5"}}, INVALID_CONFIG),
])
def test_bad_requested_ips(cni_args, config, code) -> None:
    with pytest.raises(PluginError) as exc:
        plugin.requested_ips(cni_args, config)
    assert exc.value.code == code


@pytest.mark.parametrize("source", ["cni_args", "args", "runtimeConfig"])
def test_add_honours_each_static_source(data_dir: Path, source: str) -> None:
    config = net_config(data_dir, "10.1.0.0/24")
    cni_args = {}
    if source == "cni_args":
        cni_args = {"IP": "10.1.0.33"}
    elif source == "args":
        config["args"] = {"cni": {"ips": ["10.1.0.33"]}}
    else:
        config["runtimeConfig"] = {"ips": ["10.1.0.33/24"]}
    assert plugin.ipam_add(NETWORK, "c1", "eth0", config, cni_args)["ips"][0]["address"] == "10.1.0.33/24"


def test_del_is_idempotent_and_works_after_the_ranges_broke(data_dir: Path) -> None:
    config = net_config(data_dir, "10.1.0.0/24")
    plugin.ipam_add(NETWORK, "c1", "eth0", config, {})
    config["ipam"]["ranges"] = "garbage"
    plugin.ipam_del(NETWORK, "c1", "eth0", config)
    plugin.ipam_del(NETWORK, "c1", "eth0", config)
    assert LeaseStore(data_dir, NETWORK).all_leases() == []


def test_check(data_dir: Path) -> None:
    config = net_config(data_dir, "10.1.0.0/24", "fd00:1::/64")
    with pytest.raises(PluginError) as exc:
        plugin.ipam_check(NETWORK, "c1", "eth0", config)
    assert exc.value.code == UNKNOWN_CONTAINER
    plugin.ipam_add(NETWORK, "c1", "eth0", config, {})
    assert [str(lease.address) for lease in plugin.ipam_check(NETWORK, "c1", "eth0", config)] == [
        "10.1.0.2", "fd00:1::2"]
    LeaseStore(data_dir, NETWORK).release_address(ip("fd00:1::2"))
    with pytest.raises(PluginError, match=r"range set\(s\) 1"):
        plugin.ipam_check(NETWORK, "c1", "eth0", config)


def test_gc_absent_key_releases_nothing_empty_list_releases_all(data_dir: Path) -> None:
    config = net_config(data_dir, "10.1.0.0/24")
    for cid in ("a", "b"):
        plugin.ipam_add(NETWORK, cid, "eth0", config, {})
    assert plugin.ipam_gc(NETWORK, config) == []
    assert len(LeaseStore(data_dir, NETWORK).all_leases()) == 2
    keep_b = {**config, "cni.dev/valid-attachments": [{"containerID": "b", "ifname": "eth0"}]}
    assert [lease.container_id for lease in plugin.ipam_gc(NETWORK, keep_b)] == ["a"]
    released = plugin.ipam_gc(NETWORK, {**config, "cni.dev/valid-attachments": []})
    assert [lease.container_id for lease in released] == ["b"]
    assert LeaseStore(data_dir, NETWORK).all_leases() == []


def test_gc_rejects_a_malformed_list(data_dir: Path) -> None:
    config = {**net_config(data_dir, "10.1.0.0/24"), "cni.dev/valid-attachments": [{"containerID": "a"}]}
    with pytest.raises(PluginError) as exc:
        plugin.ipam_gc(NETWORK, config)
    assert exc.value.code == INVALID_CONFIG


def test_status(data_dir: Path, tmp_path: Path) -> None:
    plugin.ipam_status(NETWORK, net_config(data_dir, "10.1.0.0/24"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PluginError) as exc:
        plugin.ipam_status(NETWORK, net_config(blocker, "10.1.0.0/24"))
    assert exc.value.code == NOT_AVAILABLE
    with pytest.raises(PluginError) as exc:
        plugin.ipam_status(NETWORK, net_config(data_dir, "10.1.0.0/33"))
    assert exc.value.code == INVALID_CONFIG


def test_missing_ipam_section_is_error_7(data_dir: Path) -> None:
    with pytest.raises(PluginError) as exc:
        plugin.ipam_add(NETWORK, "c1", "eth0", {"name": NETWORK}, {})
    assert exc.value.code == INVALID_CONFIG
