"""Issue 9: install.sh into temporary directories — prerequisites, launchers with a real interpreter,
VERSION + ADD/DEL through the installed plugin, the supervised driver, idempotence, uninstall."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.cnitool import CniTool
from tests.support.dockerd import socket_answers
from tests.support.install import INSTALL, layout, run_install
from tests.support.session import unique_name
from tests.support.subnets import unique_subnet


def test_missing_prerequisites_are_named(tmp_path: Path) -> None:
    """A PATH without nft: --check exits 3 and says what to install."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ip", "unshare", "sh", "bash", "id", "ps", "dirname", "sed", "python3", "cat", "grep"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    proc = subprocess.run(["bash", str(INSTALL), "--check"], capture_output=True, text=True,
                          env={**os.environ, "PATH": str(bin_dir)})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "nft" in proc.stderr and "apt-get install nftables" in proc.stderr


def _conf(root: Path) -> dict:
    """The installed example with this pytest run's names (never the real pybr0 / 10.89.0.0/24)."""
    conf = json.loads((root / "net.d" / "90-pybridge.conflist").read_text())
    conf["name"] = unique_name("net")
    main = conf["plugins"][0]
    main["bridge"] = unique_name("br")
    main["ipam"]["ranges"] = [[{"subnet": str(unique_subnet(4, 24))}]]
    main["ipam"]["dataDir"] = str(root / "leases")
    return conf


def _serve_child(supervisor: int) -> int | None:
    out = subprocess.run(["pgrep", "-P", str(supervisor), "-f", "cni-bridge serve"], capture_output=True, text=True)
    pids = out.stdout.split()
    return int(pids[0]) if pids else None


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.mark.slow
def test_install_use_reinstall_uninstall(tmp_path: Path, netns) -> None:
    root = Path(tmp_path) / "root"
    root.mkdir()
    env = layout(root)
    supervisor = None
    try:
        proc = run_install(env)
        assert proc.returncode == 0, proc.stdout + proc.stderr

        # Launchers: the venv's interpreter, which is a real file (not a pyenv shim script).
        for name in ("pybridge", "pybridge-ipam"):
            shebang = (root / "bin" / name).read_text().splitlines()[0]
            interpreter = shebang[2:].split()[0]
            assert interpreter == str(root / "venv" / "bin" / "python")
            real = os.path.realpath(interpreter)
            assert "shims" not in real and open(real, "rb").read(4) == b"\x7fELF"
        assert (root / "docker-plugins" / "pybridge.json").exists()

        # The driver: supervised, on the plugin socket; restarted after it dies.
        supervisor = int((root / "run" / "serve.pid").read_text())
        sock = root / "plugins" / "pybridge.sock"
        assert _wait(lambda: socket_answers(sock), 30)
        first = _serve_child(supervisor)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert _wait(lambda: (c := _serve_child(supervisor)) is not None and c != first and socket_answers(sock), 60), \
            (root / "log" / "cni-bridge.log").read_text()[-3000:]

        # The installed plugin: VERSION, ADD, CHECK, DEL in a test namespace.
        tool = CniTool(tmp_path / "cache", [str(root / "bin"), "/usr/lib/cni"],
                       env={"PYBRIDGE_RUN_DIR": str(root / "run")})
        conf = _conf(root)
        [version] = tool.version("pybridge").result
        assert "1.1.0" in version["supportedVersions"]
        ns = netns()
        cid = unique_name("ctr")
        try:
            result = tool.add(conf, ns.path, container_id=cid).result
            assert result["ips"][0]["address"] in ns.addresses("eth0")
            tool.check(conf, ns.path, container_id=cid)
            tool.delete(conf, ns.path, container_id=cid)
        finally:
            tool.cleanup()
            subprocess.run(["ip", "link", "del", conf["plugins"][0]["bridge"]], capture_output=True)

        # Idempotent: a second run works, keeps a conflist the user edited, no duplicate records.
        user_conf = root / "net.d" / "90-pybridge.conflist"
        user_conf.write_text(user_conf.read_text().replace('"pybr0"', '"mybr0"'))
        proc = run_install(env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "leaving" in proc.stdout and '"mybr0"' in user_conf.read_text()
        manifest = (root / "state" / "install.manifest").read_text().splitlines()
        assert len(manifest) == len(set(manifest))
        supervisor = int((root / "run" / "serve.pid").read_text())
        assert _wait(lambda: socket_answers(sock), 30)

        proc = run_install(env, "--uninstall", "--purge")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not _wait(lambda: os.path.exists(f"/proc/{supervisor}"), 0) or \
            _wait(lambda: not os.path.exists(f"/proc/{supervisor}"), 15)
        supervisor = None
        left = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        assert left == ["net.d", "net.d/90-pybridge.conflist"], left   # only the user's edited file
    finally:
        if supervisor is not None and os.path.exists(f"/proc/{supervisor}"):
            run_install(env, "--uninstall", "--purge", timeout=120)
