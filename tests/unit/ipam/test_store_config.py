"""The `store` key of the ipam object: which store, and every bad value is error 7 naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cni_bridge.errors import PluginError
from cni_bridge.ipam.backend import location, open_store, spec_at
from cni_bridge.ipam.config import DEFAULT_DATA_DIR, StoreSpec, parse_ipam_config, parse_store, store_of
from cni_bridge.ipam.etcd import EtcdClient, prefix_end, unb64
from cni_bridge.ipam.store import LeaseStore

RANGES = [[{"subnet": "10.1.0.0/24"}]]
ETCD = {"type": "etcd", "endpoints": ["http://10.0.0.1:2379", "https://etcd.example:2380"]}


def test_absent_store_is_the_file_store_in_the_top_level_data_dir() -> None:
    assert store_of({"dataDir": "/srv/leases"}) == StoreSpec(data_dir=Path("/srv/leases"))
    assert store_of({}) == StoreSpec(data_dir=DEFAULT_DATA_DIR)
    assert store_of(None) == StoreSpec()
    cfg = parse_ipam_config({"ranges": RANGES, "store": {"type": "file", "dataDir": "/srv/other"}})
    assert cfg.store.type == "file" and cfg.data_dir == Path("/srv/other")
    assert isinstance(open_store(cfg.store, "net1"), LeaseStore)


def test_etcd_store_with_defaults_and_every_option() -> None:
    spec = parse_store(ETCD)
    assert (spec.type, spec.endpoints, spec.prefix, spec.timeout) == (
        "etcd", ("http://10.0.0.1:2379", "https://etcd.example:2380"), "/pybridge", 5.0)
    full = parse_store({**ETCD, "prefix": "/site1/net", "timeout": "2.5", "cacert": "/etc/ca.pem",
                        "cert": "/etc/c.pem", "key": "/etc/k.pem", "host": "node-7"})
    assert (full.prefix, full.timeout, full.cacert, full.key, full.host_id()) == (
        "/site1/net", 2.5, "/etc/ca.pem", "/etc/k.pem", "node-7")
    assert parse_store({"type": "etcd", "endpoints": "http://a:1,http://b:2"}).endpoints == ("http://a:1", "http://b:2")


def test_host_id_comes_from_the_environment_then_the_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYBRIDGE_HOST_ID", "rack3-node1")
    assert parse_store(ETCD).host_id() == "rack3-node1"
    monkeypatch.delenv("PYBRIDGE_HOST_ID")
    assert parse_store(ETCD).host_id()


@pytest.mark.parametrize("raw, words", [
    ("etcd", "must be an object"),
    ({"type": "consul"}, "ipam.store.type"),
    ({"type": "etcd"}, "endpoints"),
    ({"type": "etcd", "endpoints": []}, "endpoints"),
    ({"type": "etcd", "endpoints": ["10.0.0.1:2379"]}, "must be a URL"),
    ({"type": "etcd", "endpoints": ["ftp://10.0.0.1"]}, "http(s)://"),
    ({"type": "etcd", "endpoints": ["http://10.0.0.1:99999"]}, "invalid port"),
    ({**ETCD, "prefix": "pybridge"}, "prefix"),
    ({**ETCD, "prefix": "/a/"}, "prefix"),
    ({**ETCD, "timeout": 0}, "timeout"),
    ({**ETCD, "timeout": True}, "timeout"),
    ({**ETCD, "cacert": "relative.pem"}, "absolute path"),
    ({**ETCD, "key": "/k.pem"}, "needs ipam.store.cert"),
    ({**ETCD, "host": "a/b"}, "ipam.store.host"),
    ({"type": "file", "dataDir": "relative"}, "absolute path"),
])
def test_bad_store_values_are_error_7(raw: object, words: str) -> None:
    with pytest.raises(PluginError) as failed:
        parse_ipam_config({"ranges": RANGES, "store": raw})
    assert failed.value.code == 7 and words in failed.value.msg, failed.value.msg


def test_a_store_location_reopens_the_same_store() -> None:
    spec = parse_store({**ETCD, "prefix": "/x", "host": "h1"})
    assert spec_at(location(spec)) == spec
    assert location(StoreSpec(data_dir=Path("/srv/l"))) == "/srv/l" and spec_at("/srv/l").data_dir == Path("/srv/l")


def test_prefix_range_end_is_the_next_key_after_every_key_of_the_prefix() -> None:
    assert unb64(prefix_end("/pybridge/ipam/")) == b"/pybridge/ipam0"


def test_unreachable_etcd_is_error_11_within_the_timeout() -> None:
    client = EtcdClient(["http://127.0.0.1:1"], timeout=0.3)  # nothing listens on port 1
    with pytest.raises(PluginError) as failed:
        client.get("/k")
    assert failed.value.code == 11 and "try again" in failed.value.msg
