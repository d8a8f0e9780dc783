"""Issue 14, item 2: on a host where pybridge is installed -- its driver listening on
/run/docker/plugins/pybridge.sock, its plugin in /opt/cni/bin -- the runtime tests run as on a
fresh host, with the checkout's driver and plugin, and leave the installed ones untouched.

Where nothing is installed, the `installed_pybridge` fixture plays the installation for the
length of one test: a socket that answers as a live driver does (each request is recorded) and an
/opt/cni/bin/pybridge that records being run. Each is made only if absent and removed at the end.
Where pybridge really is installed, the real ones are used as they are: still there afterwards,
the same files, still answering if they answered before (an installed driver whose process has
ended leaves its socket file behind).
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import os
import re
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import dockerd
from tests.support.containerd import BIN_DIR, CtrNet
from tests.support.docker_scenario import Scenario, state_mentions
from tests.support.dockerd import PLUGIN_SOCKET, socket_answers
from tests.support.podman import IMAGE
from tests.support.session import unique_name

PLUGIN = BIN_DIR / "pybridge"
FAKE_PLUGIN = """#!/bin/sh
# stands in for an installed pybridge plugin (tests/runtime/test_installed_host.py): must not run
echo "$CNI_COMMAND" >> '{log}'
exit 1
"""


class _FakeDriver(socketserver.UnixStreamServer):
    """A driver as dockerd finds a live one: Plugin.Activate answers; every request is recorded."""

    def __init__(self, path: Path) -> None:
        self.requests: list[str] = []
        super().__init__(str(path), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the http.server naming
        server: _FakeDriver = self.server  # type: ignore[assignment]
        server.requests.append(self.path)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        ok = self.path == "/Plugin.Activate"
        body = json.dumps({"Implements": ["NetworkDriver", "IpamDriver"]} if ok
                          else {"Err": "the installed driver was used"}).encode()
        self.send_response(200 if ok else 500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # quiet, and a unix peer has no address to print
        pass


@dataclass
class Installed:
    """The installed (or stand-in) driver socket and CNI plugin, and what identifies them."""

    socket: Path
    plugin: Path
    driver: _FakeDriver | None = None   # the stand-in driver, when nothing was installed
    plugin_log: Path | None = None      # where the stand-in plugin records its runs
    before: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    answered: bool = False              # whether the installed driver answered before the test

    def identity(self) -> dict[str, tuple[int, int, int]]:
        """(device, inode, mtime) of each: the same files, unchanged."""
        out = {}
        for path in (self.socket, self.plugin):
            st = os.stat(path)
            out[str(path)] = (st.st_dev, st.st_ino, st.st_mtime_ns)
        return out

    def assert_untouched(self) -> None:
        if self.driver is not None:  # Plugin.Activate alone is a probe (another session's, ours), not use
            used = [r for r in self.driver.requests if r != "/Plugin.Activate"]
            assert used == [], f"the installed driver was used: {used}"
        assert self.identity() == self.before, "the installed driver socket or plugin was replaced"
        if self.answered:
            assert socket_answers(self.socket), "the installed driver stopped answering"
        if self.plugin_log is not None:
            assert not self.plugin_log.exists(), "the installed CNI plugin was run"


@pytest.fixture
def installed_pybridge(tmp_path: Path) -> Iterator[Installed]:
    """The host's pybridge installation, played by stand-ins where there is none.

    Directories made for the stand-ins (/run/docker/plugins, /opt/cni/bin) stay: another test
    session's private namespace may have one of them as a mount point right now, and removing a
    mount point unmounts it in every namespace.
    """
    inst = Installed(PLUGIN_SOCKET, PLUGIN)
    made: list[Path] = []
    threads: list[threading.Thread] = []
    try:
        if not PLUGIN_SOCKET.exists():
            PLUGIN_SOCKET.parent.mkdir(parents=True, exist_ok=True)
            inst.driver = _FakeDriver(PLUGIN_SOCKET)
            made.append(PLUGIN_SOCKET)
            threads.append(threading.Thread(target=inst.driver.serve_forever, daemon=True))
            threads[-1].start()
        if not (PLUGIN.exists() or PLUGIN.is_symlink()):
            PLUGIN.parent.mkdir(parents=True, exist_ok=True)
            inst.plugin_log = tmp_path / "installed-plugin-ran"
            PLUGIN.write_text(FAKE_PLUGIN.format(log=inst.plugin_log))
            PLUGIN.chmod(0o755)
            made.append(PLUGIN)
        inst.before = inst.identity()
        # An installed driver whose server is not running (its process was killed, a host without
        # a service manager rebooted) leaves its socket file: still the installation, not to be
        # replaced or removed, only not answering.
        inst.answered = socket_answers(inst.socket)
        assert inst.answered or inst.driver is None
        yield inst
    finally:
        if inst.driver is not None:
            inst.driver.shutdown()
            inst.driver.server_close()
        for path in made:
            path.unlink(missing_ok=True)


def test_docker_engine_tests_use_their_own_driver(installed_pybridge: Installed) -> None:
    """A private dockerd and the checkout's driver start while the installed driver listens;
    `docker network create -d pybridge` and a container on it are served by the test's driver."""
    with dockerd.scratch_engine("inst") as engine, \
            dockerd.pybridge_driver(engine, engine.root / "driver") as driver:
        assert driver.socket != PLUGIN_SOCKET and socket_answers(driver.socket)
        dk = Scenario(engine, driver)
        try:
            net = dk.network()
            assert net.subnet is not None
            container = dk.run(net)
            assert ipaddress.ip_address(dk.address(container, net)) in net.subnet
            assert dk.ping(container, net.subnet.network_address + 1)
            assert state_mentions(driver, net.id), "the test's driver does not know the network"
            dk.remove_all_and_check(net)
        finally:
            dk.cleanup()
    installed_pybridge.assert_untouched()


def test_ctr_uses_its_own_cni_plugin_and_config(installed_pybridge: Installed, ctr_net: CtrNet) -> None:
    """ctr runs the test's pybridge with the test's network, not /opt/cni/bin/pybridge or the
    host's /etc/cni/net.d."""
    name = unique_name("c")
    out = ctr_net.run("--rm", "--cni", IMAGE, name, "sh", "-c", "ip -o -4 addr show dev eth0")
    m = re.search(r"inet (\S+)", out)
    assert m and ipaddress.ip_interface(m.group(1)).network == ctr_net.net.subnet, out
    assert [c["command"] for c in ctr_net.inst.calls() if c["id"] == ctr_net.cid(name)] == ["ADD", "DEL"]
    installed_pybridge.assert_untouched()
