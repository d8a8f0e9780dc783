"""The lease store in one process: allocation rules, idempotency, release, GC, robustness."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from cni_bridge.errors import INVALID_CONFIG, INVALID_ENV, IO_FAILURE, NOT_AVAILABLE, TRY_AGAIN, PluginError
from cni_bridge.ipam import fsutil
from cni_bridge.ipam import store as store_mod
from cni_bridge.ipam.store import LeaseStore, list_networks
from tests.support.ipam_config import NETWORK, config, ip


def lease_files(data_dir: Path) -> list[str]:
    """Names of the lease files (named by address) of the test network."""
    if not (data_dir / NETWORK).is_dir():
        return []
    return sorted(p.name for p in (data_dir / NETWORK).iterdir() if p.name[0].isdigit() or ":" in p.name)


def test_dual_stack_gives_one_address_per_range_set(store: LeaseStore, data_dir: Path) -> None:
    cfg = config(data_dir, "10.1.0.0/24", "fd00:1::/64")
    leases = store.allocate("c1", "eth0", cfg)
    assert [str(lease.address) for lease in leases] == ["10.1.0.2", "fd00:1::2"]
    assert [lease.range_set for lease in leases] == [0, 1]
    assert leases[0].gateway == ip("10.1.0.1") and str(leases[1].subnet) == "fd00:1::/64"
    on_disk = json.loads((data_dir / NETWORK / "10.1.0.2").read_text())
    assert on_disk["container_id"] == "c1" and on_disk["ifname"] == "eth0" and on_disk["subnet"] == "10.1.0.0/24"
    owner = json.loads((data_dir / NETWORK / "owner.c1+eth0").read_text())
    assert owner == {"container_id": "c1", "ifname": "eth0", "addresses": ["10.1.0.2", "fd00:1::2"]}
    assert store.leases_of("c1", "eth0") == leases


def test_same_attachment_asking_again_gets_the_same_leases(store: LeaseStore, data_dir: Path) -> None:
    cfg = config(data_dir, "10.1.0.0/24", "fd00:1::/64")
    first = store.allocate("c1", "eth0", cfg)
    store.allocate("c2", "eth0", cfg)
    assert store.allocate("c1", "eth0", cfg) == first
    other_if = store.allocate("c1", "net1", cfg)
    assert {lease.address for lease in other_if}.isdisjoint({lease.address for lease in first})


def test_gateway_network_and_broadcast_are_never_handed_out(store: LeaseStore, data_dir: Path) -> None:
    cfg = config(data_dir, [{"subnet": "10.9.0.0/29", "gateway": "10.9.0.3"}])
    got = {str(store.allocate(f"c{i}", "eth0", cfg)[0].address) for i in range(5)}
    assert got == {"10.9.0.1", "10.9.0.2", "10.9.0.4", "10.9.0.5", "10.9.0.6"}
    with pytest.raises(PluginError):
        store.allocate("c9", "eth0", cfg)


def test_exhaustion_is_a_clear_error_and_leaves_no_lease(store: LeaseStore, data_dir: Path) -> None:
    cfg = config(data_dir, "10.1.0.0/29")  # .2-.6 usable (.1 is the gateway)
    for i in range(5):
        store.allocate(f"c{i}", "eth0", cfg)
    before = lease_files(data_dir)
    with pytest.raises(PluginError) as exc:
        store.allocate("late", "eth0", cfg)
    assert exc.value.code == TRY_AGAIN
    assert "no free address in range set 0" in exc.value.msg and "10.1.0.0/29" in exc.value.details
    assert lease_files(data_dir) == before
    assert not (data_dir / NETWORK / "owner.late+eth0").exists()


def test_exhausted_second_set_leaves_no_lease_in_the_first(store: LeaseStore, data_dir: Path) -> None:
    cfg = config(data_dir, "10.1.0.0/24", [{"subnet": "fd00:1::/64", "rangeStart": "fd00:1::10",
                                            "rangeEnd": "fd00:1::11"}])
    store.allocate("a", "eth0", cfg)
    store.allocate("b", "eth0", cfg)
    before = lease_files(data_dir)
    with pytest.raises(PluginError, match="range set 1"):
        store.allocate("c", "eth0", cfg)
    assert lease_files(data_dir) == before and store.leases_of("c", "eth0") == []
    store.release("a", "eth0")
    assert [str(lease.address) for lease in store.allocate("c", "eth0", cfg)] == ["10.1.0.4", "fd00:1::10"]


def test_a_failed_write_rolls_back_everything(store: LeaseStore, data_dir: Path, monkeypatch) -> None:
    cfg = config(data_dir, "10.1.0.0/24", "fd00:1::/64")
    real = fsutil.write_atomic
    calls = []

    def failing(path, data, *, durable=True):
        calls.append(path.name)
        if ":" in path.name:  # the IPv6 lease: the IPv4 one and the owner file are written by now
            raise OSError(28, "No space left on device")
        real(path, data, durable=durable)

    monkeypatch.setattr(store_mod, "write_atomic", failing)
    with pytest.raises(PluginError) as exc:
        store.allocate("c1", "eth0", cfg)
    assert exc.value.code == IO_FAILURE and "No space left" in exc.value.details
    assert "10.1.0.2" in calls
    assert lease_files(data_dir) == [] and not (data_dir / NETWORK / "owner.c1+eth0").exists()


def test_round_robin_does_not_reuse_a_freed_address_at_once(store: LeaseStore, data_dir: Path) -> None:
    cfg = config(data_dir, "10.1.0.0/28")
    a = store.allocate("a", "eth0", cfg)[0].address
    store.release("a", "eth0")
    b = store.allocate("b", "eth0", cfg)[0].address
    assert (a, b) == (ip("10.1.0.2"), ip("10.1.0.3"))
    assert (data_dir / NETWORK / "last_reserved.0").read_text().strip() == "10.1.0.3"
    # ... and wraps around to the freed addresses at the end of the range
    seen = [store.allocate(f"x{i}", "eth0", cfg)[0].address for i in range(12)]
    assert seen[-1] == ip("10.1.0.2") and ip("10.1.0.3") not in seen


def test_static_requests_are_honoured_per_family(store: LeaseStore, data_dir: Path) -> None:
    cfg = config(data_dir, "10.1.0.0/24", "fd00:1::/64")
    leases = store.allocate("c1", "eth0", cfg, [ip("fd00:1::99")])
    assert [str(lease.address) for lease in leases] == ["10.1.0.2", "fd00:1::99"]
    leases = store.allocate("c2", "eth0", cfg, [ip("fd00:1::42"), ip("10.1.0.77")])
    assert [str(lease.address) for lease in leases] == ["10.1.0.77", "fd00:1::42"]
    # a static pick does not move the round-robin cursor
    assert store.allocate("c3", "eth0", cfg)[0].address == ip("10.1.0.3")


@pytest.mark.parametrize("requested, words", [
    (["10.2.0.5"], "not in any range"),
    (["10.1.0.5", "10.1.0.6"], "same range set"),
    (["10.1.0.1"], "gateway"),
    (["10.1.0.0"], "not in any range"),  # network and broadcast addresses are outside every range
    (["10.1.0.255"], "not in any range"),
])
def test_bad_static_requests_are_error_7(store: LeaseStore, data_dir: Path, requested, words) -> None:
    cfg = config(data_dir, "10.1.0.0/24")  # the default range starts at the gateway, .1
    with pytest.raises(PluginError) as exc:
        store.allocate("c1", "eth0", cfg, [ip(a) for a in requested])
    assert exc.value.code == INVALID_CONFIG and words in str(exc.value)
    assert lease_files(data_dir) == []


def test_static_request_conflict(store: LeaseStore, data_dir: Path) -> None:
    cfg = config(data_dir, "10.1.0.0/24")
    store.allocate("c1", "eth0", cfg, [ip("10.1.0.50")])
    with pytest.raises(PluginError) as exc:
        store.allocate("c2", "eth0", cfg, [ip("10.1.0.50")])
    assert exc.value.code == INVALID_CONFIG and "in use by container c1 (eth0)" in exc.value.msg
    assert store.leases_of("c2", "eth0") == []
    # the owner asking again for its own address is fine
    assert store.allocate("c1", "eth0", cfg, [ip("10.1.0.50")])[0].address == ip("10.1.0.50")


def test_changing_the_requested_address_moves_the_lease(store: LeaseStore, data_dir: Path) -> None:
    cfg = config(data_dir, "10.1.0.0/24")
    store.allocate("c1", "eth0", cfg, [ip("10.1.0.50")])
    moved = store.allocate("c1", "eth0", cfg, [ip("10.1.0.60")])
    assert [lease.address for lease in moved] == [ip("10.1.0.60")]
    assert lease_files(data_dir) == ["10.1.0.60"]


def test_docker_can_reserve_the_gateway_explicitly(store: LeaseStore, data_dir: Path) -> None:
    cfg = config(data_dir, "10.1.0.0/24")
    with pytest.raises(PluginError, match="gateway"):
        store.allocate("docker-gw", "eth0", cfg, [ip("10.1.0.1")])
    gw = store.allocate("docker-gw", "eth0", cfg, [ip("10.1.0.1")], allow_gateway=True)
    assert gw[0].address == ip("10.1.0.1")
    assert store.release_address(ip("10.1.0.1")) == gw[0]


def test_release_is_idempotent_and_returns_what_it_freed(store: LeaseStore, data_dir: Path) -> None:
    cfg = config(data_dir, "10.1.0.0/24", "fd00:1::/64")
    leases = store.allocate("c1", "eth0", cfg)
    assert store.release("c1", "eth0") == leases
    assert store.release("c1", "eth0") == []
    assert LeaseStore(data_dir / "never-used", NETWORK).release("c1", "eth0") == []
    assert os.listdir(data_dir / NETWORK) and lease_files(data_dir) == []
    assert not (data_dir / NETWORK / "owner.c1+eth0").exists()


def test_release_address(store: LeaseStore, data_dir: Path) -> None:
    cfg = config(data_dir, "10.1.0.0/24", "fd00:1::/64")
    v4, v6 = store.allocate("c1", "eth0", cfg)
    assert store.release_address(ip("10.1.0.2")) == v4
    assert store.release_address(ip("10.1.0.2")) is None
    assert store.leases_of("c1", "eth0") == [v6]
    assert json.loads((data_dir / NETWORK / "owner.c1+eth0").read_text())["addresses"] == ["fd00:1::2"]
    assert store.release_address(v6.address) == v6
    assert not (data_dir / NETWORK / "owner.c1+eth0").exists()


def test_gc_releases_everything_not_listed_and_tidies(store: LeaseStore, data_dir: Path) -> None:
    cfg = config(data_dir, "10.1.0.0/24")
    for cid in ("a", "b", "c"):
        store.allocate(cid, "eth0", cfg)
    crashed = data_dir / NETWORK / ".tmp.10.1.0.99.123"
    crashed.write_text("half")  # left by a crash long ago (a fresh one may be a write in progress)
    os.utime(crashed, (time.time() - 3600, time.time() - 3600))
    freed = store.gc({("b", "eth0"), ("zzz", "eth0")})
    assert sorted(lease.container_id for lease in freed) == ["a", "c"]
    assert [lease.container_id for lease in store.all_leases()] == ["b"]
    assert sorted(p.name for p in (data_dir / NETWORK).iterdir() if p.name.startswith((".", "owner"))) == [
        "owner.b+eth0"]
    assert store.gc(set()) and store.all_leases() == []


def test_corrupt_lease_file_is_reported_skipped_and_never_reused(store: LeaseStore, data_dir: Path,
                                                                  capsys) -> None:
    cfg = config(data_dir, "10.1.0.0/24")
    store.allocate("a", "eth0", cfg)
    bad = data_dir / NETWORK / "10.1.0.3"
    bad.write_text("{not json")
    (data_dir / NETWORK / "10.1.0.4").write_text(json.dumps({"address": "10.1.0.99"}))
    assert [lease.container_id for lease in store.all_leases()] == ["a"]
    err = capsys.readouterr().err
    assert f"corrupt lease file {bad}" in err and f"corrupt lease file {bad.with_name('10.1.0.4')}" in err
    assert store.allocate("b", "eth0", cfg)[0].address == ip("10.1.0.5")
    with pytest.raises(PluginError, match="in use by a lease file"):
        store.allocate("c", "eth0", cfg, [ip("10.1.0.3")])
    assert store.release_address(ip("10.1.0.3")) is None and not bad.exists()


def test_corrupt_owner_index_falls_back_to_a_scan(store: LeaseStore, data_dir: Path) -> None:
    cfg = config(data_dir, "10.1.0.0/24")
    lease = store.allocate("a", "eth0", cfg)
    (data_dir / NETWORK / "owner.a+eth0").write_text("garbage")
    assert store.allocate("a", "eth0", cfg) == lease
    assert store.release("a", "eth0") == lease and lease_files(data_dir) == []


def test_stale_or_missing_bitmap_never_causes_a_duplicate(store: LeaseStore, data_dir: Path) -> None:
    cfg = config(data_dir, "10.1.0.0/24")
    for i in range(10):
        store.allocate(f"c{i}", "eth0", cfg)
    bitmap = data_dir / NETWORK / "bitmap.0"
    raw = bitmap.read_bytes()
    header_len = len(raw) - 32
    bitmap.write_bytes(raw[:header_len] + bytes(32))  # claims everything is free
    (data_dir / NETWORK / "last_reserved.0").write_text("10.1.0.1\n")
    assert store.allocate("x", "eth0", cfg)[0].address == ip("10.1.0.12")
    bitmap.write_bytes(b"junk")
    assert store.allocate("y", "eth0", cfg)[0].address == ip("10.1.0.13")
    bitmap.unlink()
    assert store.allocate("z", "eth0", cfg)[0].address == ip("10.1.0.14")
    bitmap.write_bytes(raw[:header_len] + b"\xff" * 32)  # claims everything is used
    assert store.allocate("w", "eth0", cfg)[0].address == ip("10.1.0.15")
    addresses = [lease.address for lease in store.all_leases()]
    assert len(addresses) == len(set(addresses)) == 14


def test_a_changed_config_rebuilds_the_cache(store: LeaseStore, data_dir: Path) -> None:
    store.allocate("a", "eth0", config(data_dir, "10.1.0.0/24"))
    narrow = config(data_dir, [{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.2", "rangeEnd": "10.1.0.3"}])
    assert store.allocate("b", "eth0", narrow)[0].address == ip("10.1.0.3")
    with pytest.raises(PluginError):
        store.allocate("c", "eth0", narrow)


def test_huge_ipv6_sets_are_probed_not_mapped(store: LeaseStore, data_dir: Path) -> None:
    cfg = config(data_dir, "fd00:1::/64")
    store.allocate("a", "eth0", cfg, [ip("fd00:1::3")])
    got = [store.allocate(f"c{i}", "eth0", cfg)[0].address for i in range(3)]
    assert got == [ip("fd00:1::2"), ip("fd00:1::4"), ip("fd00:1::5")]
    assert not (data_dir / NETWORK / "bitmap.0").exists()


@pytest.mark.parametrize("cid, ifname, code", [
    ("../../etc", "eth0", INVALID_ENV), ("a/b", "eth0", INVALID_ENV), ("", "eth0", INVALID_ENV),
    (".hidden", "eth0", INVALID_ENV), ("c1", "../x", INVALID_ENV), ("c1", "a/b", INVALID_ENV),
    ("c1", "..", INVALID_ENV), ("c1", "x" * 16, INVALID_ENV),
])
def test_path_traversal_names_are_rejected(store: LeaseStore, data_dir: Path, cid, ifname, code) -> None:
    cfg = config(data_dir, "10.1.0.0/24")
    for call in (lambda: store.allocate(cid, ifname, cfg), lambda: store.release(cid, ifname),
                 lambda: store.leases_of(cid, ifname)):
        with pytest.raises(PluginError) as exc:
            call()
        assert exc.value.code == code
    assert lease_files(data_dir) == []


@pytest.mark.parametrize("network", ["../etc", "a/b", "..", "", ".x", "x" * 300])
def test_bad_network_names_are_rejected(data_dir: Path, network: str) -> None:
    with pytest.raises(PluginError) as exc:
        LeaseStore(data_dir, network)
    assert exc.value.code == INVALID_CONFIG


def test_long_container_ids_get_a_hashed_owner_file(store: LeaseStore, data_dir: Path) -> None:
    cid = "k" * 256
    leases = store.allocate(cid, "eth0", config(data_dir, "10.1.0.0/24"))
    owners = [p.name for p in (data_dir / NETWORK).iterdir() if p.name.startswith("owner.")]
    assert len(owners) == 1 and owners[0].startswith("owner.sha256-")
    assert store.leases_of(cid, "eth0") == leases and store.release(cid, "eth0") == leases


def test_check_writable(store: LeaseStore, data_dir: Path, tmp_path: Path) -> None:
    store.check_writable()
    assert not [p for p in (data_dir / NETWORK).iterdir() if p.name.startswith(".")]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(PluginError) as exc:
        LeaseStore(blocker, NETWORK).check_writable()
    assert exc.value.code == NOT_AVAILABLE and str(blocker) in exc.value.msg


def test_list_networks(data_dir: Path) -> None:
    cfg = config(data_dir, "10.1.0.0/24")
    for name in ("net-b", "net-a"):
        LeaseStore(data_dir, name).allocate("c", "eth0", cfg)
    (data_dir / "not a network").mkdir()
    assert list_networks(data_dir) == ["net-a", "net-b"]
    assert list_networks(data_dir / "missing") == []


def test_probing_falls_back_to_one_scan_after_a_long_taken_run(store: LeaseStore, data_dir: Path,
                                                               monkeypatch) -> None:
    cfg = config(data_dir, "fd00:1::/64")
    for i in range(2, 12):
        store.allocate(f"s{i}", "eth0", cfg, [ip(f"fd00:1::{i:x}")])
    monkeypatch.setattr(store_mod, "PROBES_BEFORE_SCAN", 3)
    scans = []
    real = LeaseStore._leased_addresses
    monkeypatch.setattr(LeaseStore, "_leased_addresses", lambda self: scans.append(1) or real(self))
    assert store.allocate("dyn", "eth0", cfg)[0].address == ip("fd00:1::c")
    assert len(scans) == 1


def test_lost_owner_index_is_repaired_when_the_address_is_requested_again(store: LeaseStore,
                                                                          data_dir: Path) -> None:
    cfg = config(data_dir, "10.1.0.0/24")
    lease = store.allocate("a", "eth0", cfg, [ip("10.1.0.40")])
    (data_dir / NETWORK / "owner.a+eth0").unlink()
    assert store.allocate("a", "eth0", cfg, [ip("10.1.0.40")]) == lease
    assert store.leases_of("a", "eth0") == lease


@pytest.mark.parametrize("name, expected", [
    ("10.1.0.5", "10.1.0.5"), ("fd00::5", "fd00::5"), ("010.1.0.5", None), ("10.1.0.256", None),
    ("FD00::5", None), ("fd00:0::5", None), ("1.2.3", None), ("lock", None), ("owner.a+eth0", None),
    ("last_reserved.0", None), ("bitmap.0", None), (".tmp.10.1.0.5.12", None), ("1.2.3.\u0663", None),
])
def test_only_canonical_address_names_are_leases(name: str, expected: str | None) -> None:
    from cni_bridge.ipam.lease import parse_lease_name
    assert parse_lease_name(name) == (ip(expected) if expected else None)
