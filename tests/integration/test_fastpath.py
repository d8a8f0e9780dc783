"""The CNI fast path (cni_bridge.fastpath): exec'd client -> warm daemon, in-process fallback.

What must hold: both paths print the same bytes; a missing, refusing, declining or garbage-
talking daemon means in-process work; a daemon that accepted a request and died means error 11
and never a second run; only root peers are served; the daemon survives bad input; concurrent
requests never leak network namespaces between threads. No timings are asserted here (bench/).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest

from cni_bridge.cni.handler import Response
from cni_bridge.fastpath import client as wire
from cni_bridge.fastpath.launcher import write_launchers
from cni_bridge.fastpath.server import FastPathServer, start_in_thread
from tests.support.subnets import unique_subnet

RUN_DIR_DEFAULT = os.environ.get("PYBRIDGE_RUN_DIR", "/run/cni-bridge")


# --- helpers -------------------------------------------------------------------------------
class Plugin:
    """Runs the lean launchers the way a runtime does, with the fast-path debug line on."""

    def __init__(self, bin_dir: Path, socket_path: str | None, run_dir: str) -> None:
        self.bin_dir = bin_dir
        self.socket_path = socket_path
        self.run_dir = run_dir

    def __call__(self, command: str, config: dict[str, Any] | bytes | None = None, *, plugin: str = "pybridge",
                 fast: bool = True, **cni: str) -> subprocess.CompletedProcess[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "PYBRIDGE_"))}
        env.update({"CNI_COMMAND": command, "CNI_PATH": str(self.bin_dir), "PYBRIDGE_RUN_DIR": self.run_dir,
                    "PYBRIDGE_FASTPATH_DEBUG": "1",
                    "PYBRIDGE_FASTPATH_SOCKET": (self.socket_path or "off") if fast else "off"})
        env.update({f"CNI_{k.upper()}": v for k, v in cni.items()})
        data = config if isinstance(config, bytes) else json.dumps(config or {}).encode()
        return subprocess.run([str(self.bin_dir / plugin)], input=data, env=env, capture_output=True, timeout=120)


def served_by(proc: subprocess.CompletedProcess[bytes]) -> str:
    m = re.search(rb"served by (\S+)", proc.stderr)
    assert m, proc.stderr
    return m.group(1).decode()


def normalised(stdout: bytes) -> dict[str, Any]:
    """An ADD result with the kernel-random MACs replaced (everything else must be equal)."""
    result = json.loads(stdout)
    for entry in result.get("interfaces", []):
        entry["mac"] = "<mac>"
    return result


def raw_request(path: str, frame: bytes, go: bool = True) -> bytes:
    """Speak the wire protocol by hand; returns everything the daemon sent back."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(path)
        try:
            s.sendall(frame)
            if not go:  # EOF after the frame: the daemon never waits for more
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        answer = b""
        try:
            answer = s.recv(1)
            if answer == wire.READY and go:
                s.sendall(wire.GO)
            elif answer == wire.READY:
                return answer
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except OSError:
            pass
        return answer


def request_frame(env: dict[bytes, bytes], stdin: bytes = b"{}", plugin: str = "pybridge") -> bytes:
    """A well-formed request from this process (with its namespace identity)."""
    return wire.encode_request(plugin, wire.forwarded_env(env), stdin)


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    write_launchers(str(tmp_path / "bin"), sys.executable)
    return tmp_path / "bin"


class Recorder:
    """A stand-in handler that records calls (for protocol tests that need no kernel)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str], bytes]] = []

    def __call__(self, plugin: str, env: dict[str, str], stdin: bytes) -> Response:
        self.calls.append((plugin, env, stdin))
        return Response(b'{"ok": true}\n', 0, "recorded")


@pytest.fixture
def fake_daemon() -> Iterator[tuple[FastPathServer, Recorder, str]]:
    """An in-thread daemon with a recording handler, in a world-traversable directory."""
    directory = tempfile.mkdtemp(prefix="pbbfp-")
    os.chmod(directory, 0o755)
    recorder = Recorder()
    server = FastPathServer(os.path.join(directory, "cni.sock"), handle=recorder).start_in_thread()
    try:
        yield server, recorder, directory
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def network(prefix: str, tag: str, data_dir: Path, subnet: str) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": f"{prefix}{tag}", "type": "pybridge", "bridge": f"{prefix}{tag}",
            "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
            "ipam": {"type": "pybridge-ipam", "ranges": [[{"subnet": subnet}]], "dataDir": str(data_dir)}}


@pytest.fixture
def bridges() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        subprocess.run(["ip", "link", "del", name], capture_output=True)


# --- byte-identical results --------------------------------------------------------------
@pytest.mark.parametrize("command,stdin,env", [
    ("VERSION", b'{"cniVersion": "0.4.0"}', {}),
    ("VERSION", b"", {}),
    ("ADD", b"{not json", {"containerid": "c1", "netns": "/run/netns/x", "ifname": "eth0"}),
    ("ADD", b'{"cniVersion": "9.9.9", "name": "n", "type": "pybridge"}',
     {"containerid": "c1", "netns": "/run/netns/x", "ifname": "eth0"}),
    ("BOGUS", b'{"cniVersion": "1.0.0", "name": "n"}', {}),
    ("ADD", b'{"cniVersion": "1.0.0", "name": "n", "type": "pybridge"}',
     {"containerid": "../etc", "netns": "/run/netns/x", "ifname": "eth0"}),
    ("DEL", b'{"cniVersion": "1.0.0", "name": "n", "type": "pybridge", "mode": "nonsense"}',
     {"containerid": "c1", "ifname": "eth0"}),
])
def test_daemon_and_in_process_print_the_same_bytes(fastpath_daemon, bin_dir, command, stdin, env):
    path, run_dir = fastpath_daemon
    plugin = Plugin(bin_dir, path, run_dir)
    via_daemon = plugin(command, stdin, **env)
    in_process = plugin(command, stdin, fast=False, **env)
    assert served_by(via_daemon) == "daemon"
    assert served_by(in_process) == "in-process"
    assert via_daemon.stdout == in_process.stdout
    assert via_daemon.returncode == in_process.returncode


def test_add_check_del_identical_through_both_paths(fastpath_daemon, bin_dir, netns, test_prefix, tmp_path, bridges):
    """Same container id, same namespace, a fresh store each time: the results must be equal
    except for kernel-chosen MACs; DEL and CHECK outputs byte-identical."""
    path, run_dir = fastpath_daemon
    plugin = Plugin(bin_dir, path, run_dir)
    subnet = str(unique_subnet(4))
    ns = netns()
    outputs = {}
    for fast in (True, False):
        data_dir = tmp_path / f"ipam-{fast}"
        conf = network(test_prefix, "fpi", data_dir, subnet)
        bridges.append(conf["bridge"])
        cni = {"containerid": f"{test_prefix}-same", "netns": ns.path, "ifname": "eth0"}
        add = plugin("ADD", conf, fast=fast, **cni)
        assert add.returncode == 0, add.stdout + add.stderr
        assert served_by(add) == ("daemon" if fast else "in-process")
        check = plugin("CHECK", dict(conf, prevResult=json.loads(add.stdout)), fast=fast, **cni)
        delete = plugin("DEL", dict(conf, prevResult=json.loads(add.stdout)), fast=fast, **cni)
        assert delete.returncode == 0, delete.stdout
        outputs[fast] = (normalised(add.stdout), check.stdout, check.returncode, delete.stdout)
        shutil.rmtree(data_dir)
    assert outputs[True] == outputs[False]


def test_ipam_plugin_add_del_byte_identical(fastpath_daemon, bin_dir, test_prefix, tmp_path):
    """pybridge-ipam needs no kernel state: with a fresh store each time, ADD is byte-identical."""
    path, run_dir = fastpath_daemon
    plugin = Plugin(bin_dir, path, run_dir)
    outputs = {}
    for fast in (True, False):
        conf = {"cniVersion": "1.0.0", "name": f"{test_prefix}ipam", "type": "bridge",
                "ipam": {"type": "pybridge-ipam", "ranges": [[{"subnet": "10.99.0.0/24"}]],
                         "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(tmp_path / f"store-{fast}")}}
        cni = {"containerid": f"{test_prefix}-ipam", "netns": "/run/netns/unused", "ifname": "eth0"}
        add = plugin("ADD", conf, plugin="pybridge-ipam", fast=fast, **cni)
        again = plugin("ADD", conf, plugin="pybridge-ipam", fast=fast,
                       **dict(cni, containerid=f"{test_prefix}-ipam2"))
        delete = plugin("DEL", conf, plugin="pybridge-ipam", fast=fast, **cni)
        assert served_by(add) == ("daemon" if fast else "in-process")
        assert add.returncode == 0, add.stdout
        outputs[fast] = [(p.returncode, p.stdout) for p in (add, again, delete)]
    assert outputs[True] == outputs[False]


def test_exec_client_loads_only_what_forwarding_needs(fastpath_daemon, bin_dir, tmp_path):
    """Every import is paid on every exec (`os` ~1 ms, `socket` ~11 ms): when the daemon serves
    the call, the launcher imports the client and `_socket` and nothing else; with a log file
    configured it adds the log module only. (-X importtime lists each module the run imported.)"""
    path, run_dir = fastpath_daemon
    launcher = bin_dir / "pybridge"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "PYBRIDGE_"))}
    base.update(CNI_COMMAND="VERSION", PYBRIDGE_RUN_DIR=run_dir, PYBRIDGE_FASTPATH_SOCKET=path)
    lean = {"cni_bridge", "cni_bridge.fastpath", "cni_bridge.fastpath.client", "_socket"}
    log_file = tmp_path / "ops.log"
    for env, allowed in ((base, lean), (dict(base, PYBRIDGE_LOG_FILE=str(log_file)),
                                        lean | {"cni_bridge.logsetup", "os", "stat", "_stat", "posixpath",
                                                "genericpath", "_collections_abc", "time", "__future__"})):
        startup = subprocess.run([sys.executable, "-IS", "-X", "importtime", "-c", "pass"],
                                 capture_output=True, text=True).stderr
        proc = subprocess.run([sys.executable, "-IS", "-X", "importtime", str(launcher)], env=env,
                              input=b'{"cniVersion": "1.0.0"}', capture_output=True)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["cniVersion"] == "1.0.0"
        imported = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)", proc.stderr.decode(), re.M))
        at_start = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)", startup, re.M))
        assert imported - at_start <= allowed, imported - at_start - allowed
        assert b"pybridge VERSION" in proc.stderr  # the operation line still goes to stderr
    assert "pybridge VERSION" in log_file.read_text()


# --- falling back, and never running twice -------------------------------------------------
def test_fallback_when_no_daemon_or_a_dead_socket(bin_dir, tmp_path):
    plugin = Plugin(bin_dir, str(tmp_path / "absent.sock"), RUN_DIR_DEFAULT)
    proc = plugin("VERSION", b'{"cniVersion": "1.0.0"}')
    assert proc.returncode == 0 and served_by(proc) == "in-process"
    # A socket file nobody listens on (a crashed daemon): connection refused -> in-process.
    dead = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(dead))
    s.close()
    proc = Plugin(bin_dir, str(dead), RUN_DIR_DEFAULT)("VERSION", b'{"cniVersion": "1.0.0"}')
    assert proc.returncode == 0 and served_by(proc) == "in-process"
    assert json.loads(proc.stdout)["cniVersion"] == "1.0.0"


def test_other_run_dir_is_declined_and_done_in_process(fastpath_daemon, bin_dir, tmp_path):
    """The caller's PYBRIDGE_RUN_DIR (its locks) differs from the daemon's: the daemon must not
    serve it, the caller works in-process."""
    path, _ = fastpath_daemon
    proc = Plugin(bin_dir, path, str(tmp_path / "elsewhere"))("VERSION", b'{"cniVersion": "1.0.0"}')
    assert proc.returncode == 0
    assert served_by(proc) == "in-process"
    assert b"declined" in proc.stderr and b"PYBRIDGE_RUN_DIR" in proc.stderr


def test_daemon_gone_after_accepting_means_try_again_not_a_second_run(tmp_path):
    """A daemon that reads `G` and dies: error 11, and the request is not redone in-process."""
    path = str(tmp_path / "dying.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    seen: list[bytes] = []

    def die_after_go() -> None:
        conn, _ = listener.accept()
        with conn:
            head = conn.recv(12)
            n = int.from_bytes(head[4:8], "big") + int.from_bytes(head[8:12], "big")
            while n > 0:
                n -= len(conn.recv(n))
            conn.sendall(wire.READY)
            seen.append(conn.recv(1))

    t = threading.Thread(target=die_after_go)
    t.start()
    stdin = b'{"cniVersion": "0.4.0", "name": "n", "type": "pybridge"}'
    reply = wire.forward("pybridge", {b"CNI_COMMAND": b"ADD"}, stdin, path)
    t.join(10)
    listener.close()
    assert seen == [wire.GO]
    assert reply is not None, "after GO the client must not fall back"
    assert reply.exit_code == 1 and reply.served_by == "lost"
    error = json.loads(reply.stdout)
    assert error["code"] == 11 and error["cniVersion"] == "0.4.0"


def test_client_that_never_says_go_is_never_served(fake_daemon):
    server, recorder, _ = fake_daemon
    frame = request_frame({b"CNI_COMMAND": b"VERSION"})
    assert raw_request(server.path, frame, go=False) == wire.READY
    served = raw_request(server.path, frame)
    assert served.startswith(wire.READY + wire.MAGIC)
    assert len(recorder.calls) == 1  # only the second one
    assert wait_until(lambda: server.stats["abandoned"] == 1)


def wait_until(predicate, timeout: float = 10.0) -> bool:
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_caller_in_other_namespaces_is_declined(fake_daemon):
    """A daemon started inside some other namespace (e.g. next to a test dockerd) must not
    serve host callers: CNI_NETNS paths and host links would mean something else there."""
    server, recorder, _ = fake_daemon
    env = wire.forwarded_env({b"CNI_COMMAND": b"VERSION"})
    env[wire.IDENTITY_KEY] = b"1:2/3:4"
    answer = raw_request(server.path, wire.encode_request("pybridge", env, b"{}"), go=False)
    assert answer.startswith(wire.DECLINE) and b"namespaces" in answer
    assert recorder.calls == []


# --- who may talk to the daemon, and what ---------------------------------------------------
def test_socket_is_root_only(fake_daemon):
    server, _, _ = fake_daemon
    st = os.stat(server.path)
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 0, 0)


def test_non_root_peer_is_rejected_by_credentials(fake_daemon):
    """Even with the file mode opened up, a uid other than 0 gets a decline and nothing runs."""
    server, recorder, _ = fake_daemon
    setpriv = shutil.which("setpriv")
    python = shutil.which("python3", path="/usr/bin:/bin")
    if not setpriv or not python:
        pytest.skip("needs setpriv and a system python3 runnable by nobody")
    os.chmod(server.path, 0o666)
    frame = request_frame({b"CNI_COMMAND": b"VERSION"})
    script = ("import socket, sys\n"
              "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(20)\n"
              f"s.connect({server.path!r})\n"
              f"try: s.sendall({frame!r})\n"
              "except OSError: pass\n"
              "data = b''\n"
              "while True:\n"
              "    try: c = s.recv(4096)\n"
              "    except ConnectionResetError: c = b''\n"  # closed with our bytes unread
              "    if not c: break\n"
              "    data += c\n"
              "sys.stdout.write(repr(data))\n")
    proc = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", python, "-I", "-c", script],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    answer = eval(proc.stdout)  # noqa: S307 - our own repr() of bytes
    assert answer == b"" or (answer.startswith(wire.DECLINE) and b"uid 65534" in answer), answer
    assert recorder.calls == []
    assert server.stats["rejected_peer"] == 1


@pytest.mark.parametrize("frame", [
    b"",                                                      # connect and hang up
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                     # not our protocol
    os.urandom(4096),
    wire.MAGIC + (10 ** 9).to_bytes(4, "big") + (0).to_bytes(4, "big"),         # header too large
    wire.MAGIC + (5).to_bytes(4, "big") + (2 ** 31).to_bytes(4, "big") + b"x",  # stdin too large
    wire.MAGIC + (100).to_bytes(4, "big") + (0).to_bytes(4, "big") + b"short",  # truncated
    wire.encode_request("evilplug", {}, b""),                                    # unknown plugin
    wire.encode_request("pybridge", {b"A=B": b"x"}, b"{}"),                      # not a variable name
    wire.MAGIC + (12).to_bytes(4, "big") + (0).to_bytes(4, "big") + b"pybridge\0CNI",  # odd field count
    None,                                                                       # see below
], ids=["empty", "http", "random", "huge-header", "huge-stdin", "truncated", "plugin", "env-key",
        "odd-fields", "two-frames"])
def test_garbage_is_declined_and_the_daemon_survives(fake_daemon, frame):
    server, recorder, _ = fake_daemon
    if frame is None:
        frame = request_frame({b"CNI_COMMAND": b"ADD"}, b"") + b"trailing"
    answer = raw_request(server.path, frame, go=False)
    if frame.endswith(b"trailing"):  # well-formed frame + junk: the frame is served (junk ignored)
        assert answer == wire.READY
    else:
        assert answer == b"" or answer.startswith(wire.DECLINE), answer[:80]
    assert recorder.calls == []
    # Still alive and serving.
    ok = raw_request(server.path, request_frame({b"CNI_COMMAND": b"VERSION"}))
    assert ok.startswith(wire.READY + wire.MAGIC)
    assert len(recorder.calls) == 1


# --- concurrency and namespaces ---------------------------------------------------------------
def test_threads_entering_namespaces_never_leak(netns):
    """netlink.netns switches only the calling thread and always switches back."""
    from cni_bridge.kernel import netlink
    spaces = [netns() for _ in range(6)]
    for i, ns in enumerate(spaces):
        ns.run("ip", "link", "add", f"pbbmark{i}", "type", "veth", "peer", "name", f"pbbpeer{i}")
    host_ns = os.stat("/proc/thread-self/ns/net").st_ino
    errors: list[str] = []

    def worker(i: int) -> None:
        for _ in range(20):
            with netlink.netns(spaces[i].path) as nl:
                names = {link.name for link in nl.links()}
                if f"pbbmark{i}" not in names or any(f"pbbmark{j}" in names for j in range(6) if j != i):
                    errors.append(f"thread {i} saw {sorted(names)}")
            if os.stat("/proc/thread-self/ns/net").st_ino != host_ns:
                errors.append(f"thread {i} left in another namespace")
            with netlink.root() as nl:
                if nl.link(f"pbbmark{i}") is not None:
                    errors.append(f"thread {i}: host handle sees a container link")

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(worker, range(6)))
    assert errors == []
    assert os.stat("/proc/thread-self/ns/net").st_ino == host_ns


def test_concurrent_adds_through_the_daemon(bin_dir, netns, test_prefix, tmp_path, bridges):
    """16 ADDs at once through one daemon: all succeed, distinct addresses, each interface in
    its own namespace and nowhere else, and no request thread left in a container namespace."""
    run_dir = os.environ.get("PYBRIDGE_RUN_DIR", "/run/cni-bridge")  # the in-thread daemon's
    path = str(tmp_path / "cni.sock")
    server = start_in_thread(path)
    spaces = [netns() for _ in range(16)]
    conf = network(test_prefix, "fpc", tmp_path / "ipam", str(unique_subnet(4)))
    bridges.append(conf["bridge"])
    plugin = Plugin(bin_dir, path, run_dir)
    try:
        with ThreadPoolExecutor(16) as pool:
            adds = list(pool.map(lambda i: plugin("ADD", conf, containerid=f"{test_prefix}-c{i}",
                                                  netns=spaces[i].path, ifname="eth0"), range(16)))
        for proc in adds:
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert served_by(proc) == "daemon"
        addresses = [json.loads(p.stdout)["ips"][0]["address"] for p in adds]
        assert len(set(addresses)) == 16
        for ns, address in zip(spaces, addresses):
            links = json.loads(ns.run("ip", "-j", "addr", "show").stdout)
            assert sorted(link["ifname"] for link in links) == ["eth0", "lo"]
            eth0 = next(link for link in links if link["ifname"] == "eth0")
            assert address.split("/")[0] in [a["local"] for a in eth0["addr_info"]]
        assert server.stats["netns_leaks"] == 0
        assert os.stat("/proc/thread-self/ns/net").st_ino == server._host_ns
        with ThreadPoolExecutor(16) as pool:
            dels = list(pool.map(lambda i: plugin("DEL", conf, containerid=f"{test_prefix}-c{i}",
                                                  netns=spaces[i].path, ifname="eth0"), range(16)))
        assert all(p.returncode == 0 for p in dels), [p.stdout for p in dels]
    finally:
        server.stop()
    assert not os.path.exists(path)
