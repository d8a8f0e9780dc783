"""Regression tests for issue 14 (items 4, 5, 10) on the real kernel: repeated ADDs, a runtime
that kills its exec'd plugin mid-ADD, poison requests to the fast-path daemon.

Each test failed on the code before its fix (see the item number in its docstring). The plugins
are run as a runtime runs them: the lean launchers, exec'd with CNI_* in the environment, either
through the warm daemon (`fastpath_daemon`, a separate process) or in-process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.attachment import Attachment
from cni_bridge.fastpath import client as wire
from cni_bridge.fastpath.launcher import write_launchers
from tests.support.host import is_root
from tests.support.leaks import lease_files
from tests.support.netns import Netns
from tests.support.session import register_data_dir
from tests.support.subnets import unique_subnet

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root")

HOST_LOCAL = Path("/usr/lib/cni/host-local")
# A delegated IPAM plugin that records the environment it got, takes its time (a runtime's
# timeout then kills the exec'd pybridge mid-ADD; how long: the file `slow-ipam.seconds`, not the
# environment, which older code did not pass on), then leases through host-local.
SLOW_IPAM = f"""#!/bin/sh
[ "$CNI_COMMAND" = ADD ] && env > "$0.env" && sleep "$(cat "$0.seconds" 2>/dev/null || echo 0)"
"{HOST_LOCAL}"
status=$?
[ "$CNI_COMMAND" = ADD ] && touch "$0.done"
exit $status
"""


class Runtime:
    """Execs the launchers like a runtime: `call()` waits, `start()` returns the process."""

    def __init__(self, bin_dir: Path, socket: str | None, run_dir: str) -> None:
        self.bin_dir, self.socket, self.run_dir = bin_dir, socket, run_dir
        self.started: list[tuple[dict[str, Any], str, str]] = []  # ADDs, DELeted at teardown

    def cleanup(self) -> None:
        """DEL every attachment an ADD was started for (pass or fail), in-process."""
        for conf, cid, netns in self.started:
            proc = subprocess.run([str(self.bin_dir / "pybridge")], input=json.dumps(conf).encode(),
                                  capture_output=True, timeout=120,
                                  env=dict(self.env("DEL", cid, netns), PYBRIDGE_FASTPATH_SOCKET="off"))
            assert proc.returncode == 0, proc.stdout

    def env(self, command: str, cid: str, netns: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "PYBRIDGE_"))}
        env.update({"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
                    "CNI_PATH": str(self.bin_dir), "PYBRIDGE_RUN_DIR": self.run_dir,
                    "PYBRIDGE_FASTPATH_SOCKET": self.socket or "off", "PYBRIDGE_FASTPATH_DEBUG": "1", **extra})
        return env

    def start(self, command: str, conf: dict[str, Any], cid: str, netns: str, **extra: str) -> subprocess.Popen:
        if command == "ADD":
            self.started.append((conf, cid, netns))
        proc = subprocess.Popen([str(self.bin_dir / "pybridge")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=self.env(command, cid, netns, **extra))
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(conf).encode())
        proc.stdin.close()
        proc.stdin = None  # communicate() only reads
        return proc

    def call(self, command: str, conf: dict[str, Any], cid: str, netns: str, **extra: str) -> tuple[int, dict, str]:
        proc = self.start(command, conf, cid, netns, **extra)
        out, err = proc.communicate(timeout=120)
        served = "daemon" if b"served by daemon" in err else "in-process"
        assert served == ("daemon" if self.socket else "in-process"), err.decode(errors="replace")
        return proc.returncode, json.loads(out) if out.strip() else {}, err.decode(errors="replace")


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    write_launchers(str(tmp_path / "bin"), sys.executable)
    slow = tmp_path / "bin" / "slow-ipam"
    slow.write_text(SLOW_IPAM)
    slow.chmod(0o755)
    return tmp_path / "bin"


@pytest.fixture(params=["daemon", "in-process"])
def runtime(request: pytest.FixtureRequest, bin_dir: Path, tmp_path: Path) -> Iterator[Runtime]:
    if request.param == "daemon":
        path, run_dir = request.getfixturevalue("fastpath_daemon")
        rt = Runtime(bin_dir, path, run_dir)
    else:
        (tmp_path / "run-inproc").mkdir()
        rt = Runtime(bin_dir, None, str(tmp_path / "run-inproc"))
    yield rt
    rt.cleanup()


@pytest.fixture
def daemon_runtime(fastpath_daemon: tuple[str, str], bin_dir: Path) -> Iterator[Runtime]:
    rt = Runtime(bin_dir, *fastpath_daemon)
    yield rt
    rt.cleanup()


@pytest.fixture
def network(test_prefix: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., dict[str, Any]]:
    """Factory of bridge network configs (ipMasq off); their bridges are deleted at the end."""
    def make(tag: str, ipam_type: str = "pybridge-ipam") -> dict[str, Any]:
        data_dir = register_data_dir(tmp_path / f"ipam-{tag}")
        name = f"{test_prefix}{tag}"
        request.addfinalizer(lambda: subprocess.run(["ip", "link", "del", name[:15]], capture_output=True))
        return {"cniVersion": "1.0.0", "name": name, "type": "pybridge", "bridge": name[:15],
                "isGateway": True, "ipMasq": False,
                "ipam": {"type": ipam_type, "ranges": [[{"subnet": str(unique_subnet(4))}]],
                         "dataDir": str(data_dir)}}
    return make


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def wait_for(condition: Callable[[], bool], seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- item 4: a repeated ADD ----------------------------------------------------------------------
@pytest.mark.parametrize("ipam_type", ["pybridge-ipam", "host-local"])
def test_repeated_add_is_refused_and_changes_nothing(runtime: Runtime, network, netns, test_prefix: str,
                                                     bin_dir: Path, ipam_type: str) -> None:
    """Item 4: the second ADD of c1/eth0 answered 999 and its rollback released the lease the
    first ADD holds (the container kept 10.x.y.2, the store handed it out again). Now it is
    error 4 before IPAM is asked, and host and store are unchanged; a delegated IPAM plugin
    (host-local returns the existing lease for the same container) is not asked either."""
    if ipam_type == "host-local":
        if not HOST_LOCAL.exists():
            pytest.skip("no Go host-local (apt-get install containernetworking-plugins)")
        (bin_dir / "host-local").symlink_to(HOST_LOCAL)
    conf = network("rep" + ipam_type[0], ipam_type)
    ns: Netns = netns()
    cid = f"{test_prefix}-rep"
    code, first, err = runtime.call("ADD", conf, cid, ns.path)
    assert code == 0, (first, err)
    address = first["ips"][0]["address"]
    data_dir = Path(conf["ipam"]["dataDir"])
    before = snapshot(data_dir)
    host_veth = Attachment(cid, "eth0", None).host_ifname

    code, again, err = runtime.call("ADD", conf, cid, ns.path)
    assert code == 1, again
    assert snapshot(data_dir) == before, "the refused ADD changed the lease store"
    assert again["code"] == 4 and "already has an interface named eth0" in again["msg"], again
    assert [p.name for p in lease_files(data_dir) if not p.name.startswith("owner.")] == [address.split("/")[0]]
    assert ns.addresses("eth0") == [address] and link_exists(host_veth)
    assert ns.ping(first["ips"][0]["gateway"])

    code, _, err = runtime.call("DEL", dict(conf, prevResult=first), cid, ns.path)
    assert code == 0, err
    assert lease_files(data_dir) == [] and not link_exists(host_veth) and ns.link_names() == ["lo"]


# --- item 10: the runtime kills its exec'd plugin mid-ADD ---------------------------------------
def slow_network(network, bin_dir: Path) -> dict[str, Any]:
    if not HOST_LOCAL.exists():
        pytest.skip("no Go host-local (apt-get install containernetworking-plugins)")
    for marker in ("slow-ipam.env", "slow-ipam.done", "slow-ipam.seconds"):
        (bin_dir / marker).unlink(missing_ok=True)
    return network("slow", "slow-ipam")


def kill_mid_add(daemon_runtime: Runtime, conf: dict[str, Any], cid: str, ns: Netns, bin_dir: Path,
                 **extra: str) -> None:
    """Start an ADD through the daemon and SIGKILL the exec'd client while IPAM works."""
    (bin_dir / "slow-ipam.seconds").write_text("2")
    proc = daemon_runtime.start("ADD", conf, cid, ns.path, **extra)
    assert wait_for(lambda: (bin_dir / "slow-ipam.env").exists()), "the IPAM plugin never ran"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert not (bin_dir / "slow-ipam.done").exists(), "the ADD was over before the runtime killed it"


def nothing_left(conf: dict[str, Any], cid: str, ns: Netns) -> list[str]:
    left = [str(p) for p in lease_files(conf["ipam"]["dataDir"])]
    if link_exists(Attachment(cid, "eth0", None).host_ifname):
        left.append("host veth")
    if ns.link_names() != ["lo"]:
        left.append(f"container links {ns.link_names()}")
    return left


def test_cleanup_del_waits_for_the_killed_add_and_nothing_is_left(daemon_runtime: Runtime, network, netns,
                                                                 test_prefix: str, bin_dir: Path) -> None:
    """Item 10: after the runtime killed its exec'd plugin, the daemon's ADD ran on while the
    runtime's cleanup DEL ran: DEL found nothing yet, then the ADD created the veth and the
    lease, which nobody would ever remove. Now DEL waits for that ADD (which undoes itself: its
    client is gone), so when DEL answers, nothing is left."""
    conf = slow_network(network, bin_dir)
    ns = netns()
    cid = f"{test_prefix}-kill"
    kill_mid_add(daemon_runtime, conf, cid, ns, bin_dir)
    code, _, err = daemon_runtime.call("DEL", conf, cid, ns.path)
    assert code == 0, err
    assert nothing_left(conf, cid, ns) == []
    assert wait_for(lambda: (bin_dir / "slow-ipam.done").exists(), 10)
    time.sleep(0.5)  # anything the killed ADD still did after DEL would show now
    assert nothing_left(conf, cid, ns) == []


def test_killed_add_undoes_itself_without_a_del(daemon_runtime: Runtime, network, netns, test_prefix: str,
                                                 bin_dir: Path) -> None:
    """Item 10: an ADD whose client is gone when it completes is undone by the daemon (nobody
    can use its result, and the runtime never learnt what to DEL)."""
    conf = slow_network(network, bin_dir)
    ns = netns()
    cid = f"{test_prefix}-kil2"
    kill_mid_add(daemon_runtime, conf, cid, ns, bin_dir)
    assert wait_for(lambda: (bin_dir / "slow-ipam.done").exists(), 30)
    assert wait_for(lambda: nothing_left(conf, cid, ns) == [], 10), nothing_left(conf, cid, ns)
    time.sleep(0.5)
    assert nothing_left(conf, cid, ns) == []


def test_delegated_ipam_runs_with_the_runtimes_environment(daemon_runtime: Runtime, network, netns,
                                                            test_prefix: str, bin_dir: Path) -> None:
    """Item 10: through the daemon, the IPAM plugin got the daemon's environment (the spec:
    the caller's)."""
    conf = slow_network(network, bin_dir)
    ns = netns()
    cid = f"{test_prefix}-env"
    code, result, err = daemon_runtime.call("ADD", conf, cid, ns.path, PBTEST_FROM_RUNTIME="yes-1")
    assert code == 0, (result, err)
    seen = (bin_dir / "slow-ipam.env").read_text().splitlines()
    assert "PBTEST_FROM_RUNTIME=yes-1" in seen and f"CNI_CONTAINERID={cid}" in seen
    code, _, err = daemon_runtime.call("DEL", dict(conf, prevResult=result), cid, ns.path)
    assert code == 0, err


# --- item 5: poison requests against the daemon process ---------------------------------------
def test_daemon_keeps_serving_after_poison_requests(daemon_runtime: Runtime, fastpath_daemon: tuple[str, str]) -> None:
    """Item 5: an invalid CNI_CONTAINERID with deeply nested JSON killed a worker thread for good;
    after 32 of them every call waited 5 s and then worked in-process."""
    path, run_dir = fastpath_daemon
    env = {**os.environb, b"PYBRIDGE_RUN_DIR": run_dir.encode(), b"CNI_COMMAND": b"ADD",
           b"CNI_CONTAINERID": b"bad/id", b"CNI_NETNS": b"/x", b"CNI_IFNAME": b"eth0"}
    deep = b"[" * 100_000 + b"]" * 100_000
    for _ in range(40):
        reply = wire.forward("pybridge", env, deep, path)
        assert reply is not None and reply.served_by == "daemon"
        assert reply.exit_code == 1 and json.loads(reply.stdout)["code"] == 4
    code, version, err = daemon_runtime.call("VERSION", {"cniVersion": "1.0.0"}, "", "")
    assert code == 0 and "supportedVersions" in version, err
