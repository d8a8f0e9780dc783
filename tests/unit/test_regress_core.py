"""Regression tests for issue 14 (items 5, 8, 10, 12, 13, 14, 15) that need no root and no kernel:
validators, the lease store's files and locks, the CNI front end, the fast-path wire and daemon.

Each test failed on the code before its fix (see the item number in its docstring).
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cni_bridge import validate
from cni_bridge.cni import ipam_client
from cni_bridge.cni.handler import Response, handle
from cni_bridge.cni.protocol import parse_request
from cni_bridge.errors import PluginError
from cni_bridge.fastpath import client as wire
from cni_bridge.fastpath.server import FastPathServer
from cni_bridge.ipam.config import parse_ipam_config
from cni_bridge.ipam.plugin import ipam_add
from cni_bridge.ipam.store import LeaseStore

NET = "regress"
DEEP = b"[" * 100_000 + b"]" * 100_000  # deeper than json's recursion limit


def ipam(data_dir: Path, *subnets: str) -> dict:
    return {"type": "pybridge-ipam", "dataDir": str(data_dir), "ranges": [[{"subnet": s}] for s in subnets]}


def net_config(data_dir: Path, *subnets: str, **extra) -> dict:
    return {"cniVersion": "1.1.0", "name": NET, "type": "pybridge", "ipam": ipam(data_dir, *subnets), **extra}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ipam"
    d.mkdir(mode=0o755)
    return d


def lease_names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name[0].isdigit() or ":" in p.name)


# --- item 14: validators -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["eth0\n", "eth0:1", "a/b", "a b", "a\tb", ".", "..", "e" * 16, "", "ä" * 8])
def test_interface_names_the_kernel_refuses_are_refused(name: str) -> None:
    """Item 14: `re.match(...$)` accepted "eth0\\n"; ':' (alias syntax) was allowed."""
    with pytest.raises(PluginError) as err:
        validate.ifname(name, "CNI_IFNAME", from_env=True)
    assert err.value.code == 4


@pytest.mark.parametrize("name", ["eth0", "net1", "e" * 15, "veth.100", "a-b_c@d"])
def test_usual_interface_names_pass(name: str) -> None:
    assert validate.ifname(name) == name


@pytest.mark.parametrize("check,code", [(validate.container_id, 4), (validate.network_name, 7)])
def test_ids_with_a_trailing_newline_are_refused(check, code: int) -> None:
    """Item 14: container ids and network names become file names; "c1\\n" passed before."""
    with pytest.raises(PluginError) as err:
        check("c1\n")
    assert err.value.code == code


def test_cni_parameters_with_a_trailing_newline_are_error_4() -> None:
    """Item 14, through the front end: CNI_CONTAINERID / CNI_IFNAME with a newline."""
    for key in ("CNI_CONTAINERID", "CNI_IFNAME"):
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"}
        env[key] += "\n"
        response = handle("pybridge", env, b'{"cniVersion": "1.0.0", "name": "n", "type": "pybridge"}')
        error = json.loads(response.stdout)
        assert response.exit_code == 1 and error["code"] == 4 and error["msg"].startswith("invalid"), error


def test_docker_ids_and_state_keys_with_a_trailing_newline_are_refused(tmp_path: Path) -> None:
    """Item 14: the Docker body's object ids and the driver state's keys (file names)."""
    from cni_bridge.docker.body import Body
    from cni_bridge.state import StateStore
    with pytest.raises(PluginError):
        Body("NetworkDriver.CreateEndpoint", {"EndpointID": "ab12\n"}).ident("EndpointID")
    with pytest.raises(PluginError):
        StateStore(tmp_path).get("networks", "ab12\n")


# --- item 13: zone indexes -----------------------------------------------------------------------
def test_static_address_with_a_zone_index_is_not_leased_twice(data_dir: Path) -> None:
    """Item 13: `fd00::5%x` was leased next to `fd00::5` (a different ipaddress object and file)."""
    config = net_config(data_dir, "fd00::/64")
    ipam_add(NET, "c1", "eth0", config, {"IP": "fd00::5"})
    for args, conf in (({"IP": "fd00::5%x"}, config),
                       ({}, dict(config, args={"cni": {"ips": ["fd00::5%eth0"]}})),
                       ({}, dict(config, runtimeConfig={"ips": ["fd00::5%1/64"]}))):
        with pytest.raises(PluginError) as err:
            ipam_add(NET, "c2", "eth0", conf, args)
        assert err.value.code in (4, 7) and "zone index" in err.value.msg
    assert lease_names(data_dir / NET) == ["fd00::5"]


def test_store_refuses_a_zone_indexed_request_whoever_asks(data_dir: Path) -> None:
    """Item 13: the store itself (the Docker IPAM driver leases through it too)."""
    import ipaddress
    store = LeaseStore(data_dir, NET)
    cfg = parse_ipam_config(ipam(data_dir, "fd00::/64"))
    store.allocate("c1", "eth0", cfg, [ipaddress.ip_address("fd00::5")])
    with pytest.raises(PluginError):
        store.allocate("c2", "eth0", cfg, [ipaddress.ip_address("fd00::5%x")])
    (data_dir / NET / "fd00::6%x").write_text("planted")
    assert [str(lease.address) for lease in store.all_leases()] == ["fd00::5"]


@pytest.mark.parametrize("section", [
    {"subnet": "fd00::%x/64"}, {"subnet": "fd00::/64", "gateway": "fd00::1%x"},
    {"subnet": "fd00::/64", "rangeStart": "fd00::10%eth0"}])
def test_ipam_config_refuses_zone_indexes(section: dict) -> None:
    """Item 13: a zone index in a range was accepted for subnets (ip_network takes it)."""
    with pytest.raises(PluginError) as err:
        parse_ipam_config({"ranges": [[section]]})
    assert err.value.code == 7 and "zone index" in err.value.msg


def test_docker_body_refuses_zone_indexes() -> None:
    """Item 13: Docker's RequestAddress / ReleaseAddress / pools parse addresses from input."""
    from cni_bridge.docker.body import Body
    body = Body("IpamDriver.RequestAddress", {"Address": "fd00::5%x", "Pool": "fd00::%x/64"})
    for parse, key in ((body.address, "Address"), (body.network, "Pool")):
        with pytest.raises(PluginError):
            parse(key)


# --- item 5: deep JSON and exceptions in the daemon ------------------------------------------
def test_deep_json_is_a_decode_failure_not_a_crash() -> None:
    """Item 5: RecursionError escaped handle() when the container id was also invalid."""
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"}
    assert json.loads(handle("pybridge", env, DEEP).stdout)["code"] == 6
    bad_id = handle("pybridge", dict(env, CNI_CONTAINERID="bad/id"), DEEP)
    assert bad_id.exit_code == 1 and json.loads(bad_id.stdout)["code"] == 4
    # VERSION answers whatever stdin holds (as for any undecodable config, and as Go's skel).
    version = handle("pybridge", {"CNI_COMMAND": "VERSION"}, DEEP)
    assert version.exit_code == 0 and "supportedVersions" in json.loads(version.stdout)


def test_lost_reply_with_deep_json_is_still_error_11() -> None:
    """Item 5: the client's lost-reply path parsed stdin with json.loads and crashed."""
    reply = wire.lost_reply("pybridge", DEEP, "/nowhere", ConnectionError("gone"))
    error = json.loads(reply.stdout)
    assert reply.exit_code == 1 and error["code"] == 11 and error["cniVersion"] == "1.1.0"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[FastPathServer]:
    """An in-thread daemon with the real handler and only 2 workers, serving this user."""
    server = FastPathServer(str(tmp_path / "cni.sock"), allowed_uids=(os.geteuid(),), workers=2)
    server.start_in_thread()
    try:
        yield server
    finally:
        server.stop()


def forward(server: FastPathServer, env: dict[bytes, bytes], stdin: bytes, plugin: str = "pybridge"):
    reply = wire.forward(plugin, {**os.environb, **env}, stdin, server.path)
    assert reply is not None and reply.served_by == "daemon", "the daemon did not serve the request"
    return reply


def test_poison_requests_never_kill_the_daemons_workers(daemon: FastPathServer) -> None:
    """Item 5: each request with an invalid CNI_CONTAINERID and deep JSON killed a worker thread
    for good; with all workers dead every call waited READY_TIMEOUT and then worked in-process."""
    poison = {b"CNI_COMMAND": b"ADD", b"CNI_CONTAINERID": b"bad/id", b"CNI_NETNS": b"/x", b"CNI_IFNAME": b"eth0"}
    for _ in range(3 * daemon.workers):
        reply = forward(daemon, poison, DEEP)
        assert reply.exit_code == 1 and json.loads(reply.stdout)["code"] == 4
    version = forward(daemon, {b"CNI_COMMAND": b"VERSION"}, DEEP)
    assert version.exit_code == 0
    assert daemon.stats["worker_errors"] == 0


def test_a_handler_exception_is_answered_999_and_the_worker_lives(tmp_path: Path) -> None:
    """Item 5: anything a handler raises (not only OSError) is answered, never a lost reply."""
    def explode(plugin: str, env: dict[str, str], stdin: bytes) -> Response:
        if env.get("CNI_COMMAND") == "ADD":
            raise RecursionError("deep")
        return Response(b"{}\n", 0, "ok")
    server = FastPathServer(str(tmp_path / "cni.sock"), allowed_uids=(os.geteuid(),), workers=1, handle=explode)
    server.start_in_thread()
    try:
        for _ in range(3):
            reply = forward(server, {b"CNI_COMMAND": b"ADD"}, b'{"cniVersion": "0.4.0"}')
            error = json.loads(reply.stdout)
            assert reply.exit_code == 1 and error["code"] == 999 and error["cniVersion"] == "0.4.0"
            assert "RecursionError" in error["msg"]
        assert forward(server, {b"CNI_COMMAND": b"VERSION"}, b"").exit_code == 0
        assert server.stats["handler_errors"] == 3
    finally:
        server.stop()


# --- item 10: the caller's environment and timeouts ------------------------------------------
FAKE_IPAM = """#!/bin/sh
env > "$0.env"
[ -n "$FAKE_IPAM_SLEEP" ] && sleep "$FAKE_IPAM_SLEEP"
echo '{"cniVersion": "1.0.0", "ips": [{"address": "10.9.0.5/24"}]}'
"""


@pytest.fixture
def fake_ipam(tmp_path: Path) -> Path:
    plugin = tmp_path / "bin" / "fake-ipam"
    plugin.parent.mkdir()
    plugin.write_text(FAKE_IPAM)
    plugin.chmod(0o755)
    return plugin


def exec_request(fake_ipam: Path, **extra_env: str):
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x",
           "CNI_PATH": str(fake_ipam.parent), "PATH": "/usr/bin:/bin", **extra_env}
    config = {"cniVersion": "1.0.0", "name": NET, "type": "pybridge", "ipam": {"type": "fake-ipam"}}
    return parse_request(env, json.dumps(config).encode())


def test_delegated_ipam_gets_the_callers_environment(fake_ipam: Path, monkeypatch) -> None:
    """Item 10: the IPAM plugin was exec'd with this process's environment (the daemon's),
    not the runtime's; the spec passes the caller's on."""
    monkeypatch.setenv("ONLY_IN_THE_DAEMON", "1")
    assert ipam_client.add(exec_request(fake_ipam, FROM_THE_RUNTIME="yes"))["ips"]
    seen = dict(line.split("=", 1) for line in Path(f"{fake_ipam}.env").read_text().splitlines() if "=" in line)
    assert seen["FROM_THE_RUNTIME"] == "yes" and "ONLY_IN_THE_DAEMON" not in seen
    assert seen["CNI_COMMAND"] == "ADD" and seen["CNI_CONTAINERID"] == "c1"


def test_delegated_ipam_that_hangs_is_error_11(fake_ipam: Path, monkeypatch) -> None:
    """Item 10: the exec had no timeout: a hung IPAM plugin hung the ADD (and the daemon's worker)."""
    monkeypatch.setattr(ipam_client, "EXEC_TIMEOUT", 0.5)
    with pytest.raises(PluginError) as err:
        ipam_client.add(exec_request(fake_ipam, FAKE_IPAM_SLEEP="30"))
    assert err.value.code == 11 and "did not answer" in err.value.msg


def test_fast_path_forwards_the_callers_environment(tmp_path: Path) -> None:
    """Item 10: only CNI_* variables reached the daemon, so its handler could not give the
    delegated IPAM plugin the runtime's environment."""
    seen: list[dict[str, str]] = []

    def record(plugin: str, env: dict[str, str], stdin: bytes) -> Response:
        seen.append(env)
        return Response(b"{}\n", 0, "ok")
    server = FastPathServer(str(tmp_path / "cni.sock"), allowed_uids=(os.geteuid(),), handle=record)
    server.start_in_thread()
    try:
        forward(server, {b"CNI_COMMAND": b"VERSION", b"RUNTIME_SETTING": b"on", b"PATH": b"/opt/x"}, b"")
    finally:
        server.stop()
    assert seen[0]["RUNTIME_SETTING"] == "on" and seen[0]["PATH"] == "/opt/x"
    assert seen[0]["CNI_COMMAND"] == "VERSION" and os.fsdecode(wire.IDENTITY_KEY) not in seen[0]


def test_network_lock_gives_up_with_error_11(tmp_path: Path, monkeypatch) -> None:
    """Item 10: the network lock was a blocking flock without a timeout."""
    from cni_bridge import locks
    monkeypatch.setattr(locks, "RUN_DIR", str(tmp_path))
    (tmp_path / "locks").mkdir()
    holder = os.open(tmp_path / "locks" / f"{NET}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    outcome: list[BaseException | None] = []

    def take() -> None:
        try:
            with locks.network_lock(NET, timeout=0.3):
                outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome.append(exc)
    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    thread.join(10)
    os.close(holder)
    assert outcome, "network_lock waited for ever"
    assert isinstance(outcome[0], PluginError) and outcome[0].code == 11


# --- item 8: unique temp names; gc keeps writes in progress ------------------------------------
def test_concurrent_status_probes_never_collide(data_dir: Path) -> None:
    """Item 8: the STATUS probe and its temp file were named by pid only: threads of one
    process (the daemon) removed each other's probe and answered error 50."""
    store = LeaseStore(data_dir, NET, durable=False)
    store.check_writable()

    def probe(_: int) -> str | None:
        try:
            store.check_writable()
            return None
        except PluginError as exc:
            return str(exc)
    with ThreadPoolExecutor(8) as pool:
        failures = [f for f in pool.map(probe, range(800)) if f]
    assert failures == []
    assert not [p.name for p in (data_dir / NET).iterdir() if p.name.startswith(".tmp.")]


def test_status_through_the_daemon_in_parallel(daemon: FastPathServer, data_dir: Path) -> None:
    """Item 8, as reported: concurrent STATUS calls served by the daemon failed with 50."""
    stdin = json.dumps(net_config(data_dir, "10.9.0.0/24")).encode()

    def status(_: int) -> int:
        reply = forward(daemon, {b"CNI_COMMAND": b"STATUS"}, stdin, plugin="pybridge-ipam")
        return reply.exit_code
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(status, range(400)))
    assert codes.count(0) == len(codes)


def test_gc_leaves_temp_files_being_written_and_removes_old_ones(data_dir: Path) -> None:
    """Item 8: gc removed every `.tmp.*` file, also one a STATUS probe (which takes no lock)
    was still writing."""
    store = LeaseStore(data_dir, NET)
    store.allocate("c1", "eth0", parse_ipam_config(ipam(data_dir, "10.9.0.0/24")))
    fresh = data_dir / NET / ".tmp.status.4242.0a1b2c3d4e5f"
    fresh.write_text("being written")
    old = data_dir / NET / ".tmp.10.9.0.7.4243.aaaaaaaaaaaa"
    old.write_text("left by a crash")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    store.gc({("c1", "eth0")})
    assert fresh.exists() and not old.exists()


# --- item 12: symlinks, hard links, FIFOs and who owns the directory ---------------------------
def test_symlink_at_the_old_temp_name_is_not_followed(data_dir: Path, tmp_path: Path) -> None:
    """Item 12: temp files had a predictable name (`.tmp.<file>.<pid>`) and were opened with
    O_CREAT|O_TRUNC: a symlink planted there made the store write through it."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    store = LeaseStore(data_dir, NET)
    cfg = parse_ipam_config(ipam(data_dir, "10.9.0.0/24"))
    store.allocate("c0", "eth0", cfg)  # creates the directory
    directory = data_dir / NET
    for name in ("owner.c1+eth0", "10.9.0.3", "bitmap.0"):
        (directory / f".tmp.{name}.{os.getpid()}").symlink_to(victim)
    store.allocate("c1", "eth0", cfg)
    assert victim.read_text() == "precious\n"
    assert [lease.container_id for lease in store.all_leases()] == ["c0", "c1"]


@pytest.mark.parametrize("hint", ["last_reserved.0", "bitmap.0"])
def test_symlink_at_a_hint_name_is_not_followed(data_dir: Path, tmp_path: Path, hint: str) -> None:
    """Item 12: hint and bitmap files were written in place through whatever was at their name."""
    store = LeaseStore(data_dir, NET)
    cfg = parse_ipam_config(ipam(data_dir, "10.9.0.0/24"))
    store.allocate("c0", "eth0", cfg)
    victim = tmp_path / "victim"  # content the store would accept as its own
    content = (data_dir / NET / hint).read_bytes()
    victim.write_bytes(content)
    (data_dir / NET / hint).unlink()
    (data_dir / NET / hint).symlink_to(victim)
    store.allocate("c1", "eth0", cfg)
    store.release("c0", "eth0")
    assert victim.read_bytes() == content
    assert stat.S_ISREG(os.lstat(data_dir / NET / hint).st_mode), "the hint is a plain file again"
    assert [lease.container_id for lease in store.all_leases()] == ["c1"]


def test_hard_link_at_a_hint_name_is_not_written_through(data_dir: Path, tmp_path: Path) -> None:
    """Item 12: an in-place write through a second name of another file changes that file."""
    victim = tmp_path / "victim"
    victim.write_text("x" * 47 + "\n")
    store = LeaseStore(data_dir, NET)
    cfg = parse_ipam_config(ipam(data_dir, "10.9.0.0/24"))
    store.allocate("c0", "eth0", cfg)
    (data_dir / NET / "last_reserved.0").unlink()
    os.link(victim, data_dir / NET / "last_reserved.0")
    store.allocate("c1", "eth0", cfg)
    assert victim.read_text() == "x" * 47 + "\n"


@pytest.mark.timeout(30)
def test_fifo_at_a_lease_name_does_not_block(data_dir: Path) -> None:
    """Item 12: reads opened whatever was at a lease name; a FIFO blocked the plugin for ever."""
    store = LeaseStore(data_dir, NET)
    cfg = parse_ipam_config(ipam(data_dir, "10.9.0.0/24"))
    store.allocate("c0", "eth0", cfg)
    os.mkfifo(data_dir / NET / "10.9.0.9")
    with pytest.raises(PluginError) as err:
        store.allocate("c1", "eth0", cfg, [__import__("ipaddress").ip_address("10.9.0.9")])
    assert err.value.code in (5, 7)


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_data_dir_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    """Item 12: any store directory was accepted, whoever could write into it."""
    data = tmp_path / "shared"
    data.mkdir()
    data.chmod(mode)
    config = net_config(data, "10.9.0.0/24")
    with pytest.raises(PluginError) as err:
        ipam_add(NET, "c1", "eth0", config, {})
    assert err.value.code == 5 and "writable by group or others" in err.value.msg and str(data) in err.value.msg
    assert list(data.iterdir()) == []
    status = handle("pybridge-ipam", {"CNI_COMMAND": "STATUS"}, json.dumps(config).encode())
    assert json.loads(status.stdout)["code"] == 50


def test_world_writable_store_directory_is_refused(data_dir: Path) -> None:
    """Item 12: the network's own directory too (and a sticky bit does not make it ours)."""
    store = LeaseStore(data_dir, NET)
    cfg = parse_ipam_config(ipam(data_dir, "10.9.0.0/24"))
    store.allocate("c0", "eth0", cfg)
    (data_dir / NET).chmod(0o1777)
    for call in (lambda: store.allocate("c1", "eth0", cfg), lambda: store.leases_of("c0", "eth0"),
                 lambda: store.release("c0", "eth0")):
        with pytest.raises(PluginError) as err:
            call()
        assert err.value.code == 5


def test_store_directories_are_created_private_whatever_the_umask(tmp_path: Path) -> None:
    """Item 12: directories we create are 0755 even under umask 0 (else we would refuse our own)."""
    old = os.umask(0)
    try:
        LeaseStore(tmp_path / "a" / "b", NET).allocate("c1", "eth0", parse_ipam_config(ipam(tmp_path, "10.9.0.0/24")))
    finally:
        os.umask(old)
    for d in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / NET):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755


# --- item 15: removing an empty Docker store ---------------------------------------------------
def test_empty_store_is_removed_only_under_its_lock(tmp_path: Path, monkeypatch) -> None:
    """Item 15: `_remove_empty_store` unlinked the lock file while another process held the lock
    (a writer then worked on a lock nobody else could see). Now removal waits for the lock, and a
    writer that waited on the removed lock file takes the lock again on a new one."""
    from cni_bridge.docker import ipam as docker_ipam
    holder: list[int] = []
    locked = threading.Event()
    real_gc = LeaseStore.gc

    def gc_then_someone_locks(self, *args, **kwargs):  # another process takes the lock right after
        freed = real_gc(self, *args, **kwargs)
        if not holder:
            holder.append(os.open(self.dir / "lock", os.O_RDWR))
            fcntl.flock(holder[0], fcntl.LOCK_EX)
            locked.set()
        return freed
    monkeypatch.setattr(LeaseStore, "gc", gc_then_someone_locks)
    data = tmp_path / "docker-ipam"
    data.mkdir()
    record = {"id": "pybridge-local/10.9.0.0/24", "pool": "10.9.0.0/24", "sub_pool": "", "v6": False,
              "store": docker_ipam._store_name(__import__("ipaddress").ip_network("10.9.0.0/24")),
              "data_dir": str(data), "gateway": None}
    store = LeaseStore(data, record["store"])
    cfg = parse_ipam_config(ipam(data, "10.9.0.0/24"))
    store.allocate("docker-" + "a" * 32, "docker", cfg)
    store.release("docker-" + "a" * 32, "docker")  # empty now: only bookkeeping files
    lock = store.dir / "lock"
    inode = lock.stat().st_ino
    remover = threading.Thread(target=docker_ipam._release_leftovers, args=(record,), daemon=True)
    remover.start()
    assert locked.wait(30)
    writer_result: list = []
    writer = threading.Thread(target=lambda: writer_result.append(store.allocate("c1", "eth0", cfg)), daemon=True)
    writer.start()
    time.sleep(0.5)
    try:
        assert lock.exists() and lock.stat().st_ino == inode, "the lock file was removed under its holder"
    finally:
        os.close(holder[0])
    remover.join(30)
    writer.join(30)
    assert writer_result, "the writer did not finish"
    # Whichever ran first: the writer's lease exists, under a lock file that is in place.
    assert [lease.container_id for lease in LeaseStore(data, record["store"]).all_leases()] == ["c1"]
    assert (store.dir / "lock").exists()
    store.release("c1", "eth0")
    monkeypatch.setattr(LeaseStore, "gc", real_gc)
    docker_ipam._release_leftovers(record)
    assert not store.dir.exists()

