"""Many processes against one store: no duplicate, no wedged lock after a SIGKILL."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from cni_bridge.errors import TRY_AGAIN, PluginError
from cni_bridge.ipam import store as store_mod
from cni_bridge.ipam.store import LeaseStore
from tests.support.ipam_config import NETWORK, config

CTX = multiprocessing.get_context("fork")  # a fresh process per allocation, cheap to start


def _allocate(data_dir: Path, subnets: tuple[str, ...], cid: str, barrier, results) -> None:
    cfg = config(data_dir, *subnets)
    barrier.wait()
    try:
        leases = LeaseStore(data_dir, NETWORK).allocate(cid, "eth0", cfg)
        results.put((cid, [str(lease.address) for lease in leases]))
    except PluginError as exc:
        results.put((cid, exc.code))


def _run_many(data_dir: Path, subnets: tuple[str, ...], count: int) -> dict[str, object]:
    barrier, results = CTX.Barrier(count), CTX.Queue()
    procs = [CTX.Process(target=_allocate, args=(data_dir, subnets, f"c{i}", barrier, results))
             for i in range(count)]
    for p in procs:
        p.start()
    outcome = dict(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return outcome


def test_32_processes_get_32_distinct_addresses(data_dir: Path) -> None:
    outcome = _run_many(data_dir, ("10.1.0.0/24", "fd00:1::/64"), 32)
    v4 = {addresses[0] for addresses in outcome.values()}
    v6 = {addresses[1] for addresses in outcome.values()}
    assert len(outcome) == len(v4) == len(v6) == 32
    leases = LeaseStore(data_dir, NETWORK).all_leases()
    assert len(leases) == 64 and len({lease.address for lease in leases}) == 64
    assert {lease.container_id for lease in leases} == set(outcome)


def test_32_processes_racing_for_29_addresses(data_dir: Path) -> None:
    outcome = _run_many(data_dir, ("10.1.0.0/27",), 32)  # .2-.30: 29 addresses
    won = [addresses[0] for addresses in outcome.values() if isinstance(addresses, list)]
    assert len(won) == len(set(won)) == 29
    assert sorted(code for code in outcome.values() if not isinstance(code, list)) == [TRY_AGAIN] * 3
    assert len(LeaseStore(data_dir, NETWORK).all_leases()) == 29


def _die_in_commit(data_dir: Path, ready) -> None:
    """Allocate, but stop forever right after the owner index is written (lock still held)."""
    real = store_mod.write_atomic

    def write_then_hang(path, data, *, durable=True):
        real(path, data, durable=durable)
        ready.set()
        time.sleep(3600)

    store_mod.write_atomic = write_then_hang
    LeaseStore(data_dir, NETWORK).allocate("doomed", "eth0", config(data_dir, "10.1.0.0/24"))


def test_a_sigkilled_lock_holder_does_not_block_others(data_dir: Path) -> None:
    ready = CTX.Event()
    child = CTX.Process(target=_die_in_commit, args=(data_dir, ready))
    child.start()
    try:
        assert ready.wait(20), "child never reached the commit"
        busy = LeaseStore(data_dir, NETWORK, lock_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(PluginError) as exc:  # alive and holding the lock: a clear "try again"
            busy.allocate("other", "eth0", config(data_dir, "10.1.0.0/24"))
        assert exc.value.code == TRY_AGAIN and "busy" in exc.value.msg
        assert time.monotonic() - started < 2
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
    finally:
        if child.is_alive():
            child.kill()
    store = LeaseStore(data_dir, NETWORK, lock_timeout=5)
    started = time.monotonic()
    lease = store.allocate("other", "eth0", config(data_dir, "10.1.0.0/24"))[0]
    assert time.monotonic() - started < 1
    # the victim died after its owner index and before its lease: it holds nothing
    assert [x.container_id for x in store.all_leases()] == ["other"] and lease.address.exploded == "10.1.0.2"
    assert store.leases_of("doomed", "eth0") == []
    assert store.gc({("other", "eth0")}) == []
    assert not (data_dir / NETWORK / "owner.doomed+eth0").exists()
