"""A private containerd for `ctr run --cni` tests, and the CNI directories ctr insists on.

Why: containerd's `ctr run --cni` (go-cni + libcni) is the second runtime family pybridge must
serve, and it has a behaviour podman lacks: after the task is gone it sends DEL with
CNI_NETNS="" (host state must still be released), and `ctr run -d` never sends DEL at all.

The daemon is private (root, state, socket under a temp dir; CRI plugin disabled so it cannot
collide with Docker's containerd; `native` snapshotter so no overlay mounts are left behind).
ctr has no option for the CNI directories: it reads the first config (lexical order) in
/etc/cni/net.d and finds plugins in /opt/cni/bin or /usr/lib/cni, where an installed pybridge has
its own. `install_cni()` therefore writes the test's `00-<name>.conflist` and a `pybridge` wrapper
(it records each call's CNI_COMMAND / CNI_NETNS in a log and then execs the venv's `pybridge`)
into directories of the test, and `Containerd.cni` runs every ctr command in a mount namespace of
its own where those directories are /etc/cni/net.d and /opt/cni/bin (tests/support/mountns.py):
the host's configs and plugins are neither used nor touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sysconfig
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.host import run, stop_process
from tests.support.mountns import PrivateMounts, umount_below
from tests.support.runtime_checks import TestNetwork
from tests.support.session import unique_name

__all__ = ["LIBCNI_DIR", "Containerd", "CtrError", "CtrNet", "CniInstall", "containerd_missing", "install_cni"]

LIBCNI_DIR = Path("/var/lib/cni")   # go-cni's libcni cache (results/<net>-<id>-<ifname>)
CONF_DIR = Path("/etc/cni/net.d")   # where ctr reads network configs
BIN_DIR = Path("/opt/cni/bin")      # where ctr looks for plugins first (then /usr/lib/cni)
SNAPSHOTTER = "native"

CONFIG_TEMPLATE = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = ""

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""
"""


class CtrError(RuntimeError):
    """A ctr command failed."""


def containerd_missing() -> str | None:
    missing = [t for t in ("containerd", "ctr", "runc", "containerd-shim-runc-v2") if shutil.which(t) is None]
    if missing:
        return "not installed: " + ", ".join(missing) + " (apt-get install containerd runc)"
    return None


class Containerd:
    """One private containerd process; `ctr(...)` talks to it in namespace `namespace`."""

    def __init__(self, base: str | os.PathLike, namespace: str) -> None:
        self.base = Path(base)
        self.namespace = namespace
        self.cni: PrivateMounts | None = None   # the CNI directories ctr sees (CniInstall.mounts)
        self.socket = self.base / "containerd.sock"
        self.config = self.base / "config.toml"
        self.log = self.base / "containerd.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "Containerd":
        self.base.mkdir(parents=True, exist_ok=True)
        self.config.write_text(CONFIG_TEMPLATE.format(
            root=self.base / "root", state=self.base / "state", socket=self.socket))
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(["containerd", "--config", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CtrError(f"containerd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.socket.exists() and self.ctr("version", check=False).returncode == 0:
                return self
            time.sleep(0.1)
        self.stop()
        raise CtrError(f"containerd did not answer within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def ctr(self, *args: str, check: bool = True, timeout: float = 90.0,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        argv = ["ctr", "--address", str(self.socket), "-n", self.namespace, *args]
        if self.cni is not None:
            argv = self.cni.wrap(argv)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        full_env.update(env or {})
        return run(argv, check=check, timeout=timeout, env=full_env, error=CtrError)

    def import_image(self, archive: str | os.PathLike) -> None:
        self.ctr("images", "import", "--snapshotter", SNAPSHOTTER, str(archive))

    def run_args(self) -> list[str]:
        """Flags every `ctr run` needs here (runc by path, no overlay)."""
        return ["--snapshotter", SNAPSHOTTER, "--runc-binary", shutil.which("runc") or "/usr/sbin/runc"]

    def task_pid(self, container_id: str) -> int | None:
        out = self.ctr("tasks", "ls", check=False).stdout.splitlines()[1:]
        for line in out:
            parts = line.split()
            if parts and parts[0] == container_id and len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1])
        return None

    def remove_container(self, container_id: str) -> None:
        """Kill and delete the task, then the container (no CNI DEL: ctr never sends one here)."""
        if self.task_pid(container_id) is not None:
            self.ctr("tasks", "kill", "-s", "SIGKILL", container_id, check=False)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if "STOPPED" in self.ctr("tasks", "ls", check=False).stdout or self.task_pid(container_id) is None:
                    break
                time.sleep(0.1)
        self.ctr("tasks", "delete", "--force", container_id, check=False)
        self.ctr("containers", "delete", container_id, check=False)

    def containers(self) -> list[str]:
        out = self.ctr("containers", "ls", "-q", check=False).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def stop(self) -> None:
        """Remove all containers of the namespace, stop the daemon, delete `base` (never raises)."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                for cid in self.containers():
                    self.remove_container(cid)
                for ref in self.ctr("images", "ls", "-q", check=False).stdout.split():
                    self.ctr("images", "rm", ref, check=False)
        except Exception:  # noqa: BLE001 - teardown goes on
            pass
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, 15)
        umount_below(self.base)
        shutil.rmtree(self.base, ignore_errors=True)


# ----- the CNI install ctr needs -------------------------------------------------------------
@dataclass
class CniInstall:
    """What install_cni() wrote; `mounts` shows it to ctr as /etc/cni/net.d and /opt/cni/bin,
    `calls()` reads the wrapper's log."""

    conf_path: Path
    call_log: Path
    mounts: PrivateMounts = field(default_factory=PrivateMounts)

    def calls(self) -> list[dict[str, str]]:
        """One dict per pybridge exec: {command, netns, id, ifname}."""
        out = []
        try:
            lines = self.call_log.read_text().splitlines()
        except OSError:
            return out
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


WRAPPER = """#!/bin/sh
# pybridge test wrapper: log the call, then run the venv's pybridge.
printf '{{"command":"%s","netns":"%s","id":"%s","ifname":"%s"}}\\n' \\
    "$CNI_COMMAND" "$CNI_NETNS" "$CNI_CONTAINERID" "$CNI_IFNAME" >> '{log}'
exec '{target}' "$@"
"""


def install_cni(conflist: Mapping[str, Any], base: str | os.PathLike) -> CniInstall:
    """`conflist` alone in `base/cni/net.d`, a logging `pybridge` alone in `base/cni/bin`; set
    `Containerd.cni` to the result's `mounts` for ctr to use them."""
    base = Path(base)
    conf_dir, bin_dir = base / "cni" / "net.d", base / "cni" / "bin"
    conf_dir.mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(parents=True, exist_ok=True)
    conf_path = conf_dir / f"00-{conflist['name']}.conflist"
    conf_path.write_text(json.dumps(conflist, indent=2))
    call_log = base / "pybridge-calls.log"
    wrapper = bin_dir / "pybridge"
    wrapper.write_text(WRAPPER.format(log=call_log, target=Path(sysconfig.get_path("scripts")) / "pybridge"))
    wrapper.chmod(0o755)
    return CniInstall(conf_path, call_log, PrivateMounts(binds={CONF_DIR: conf_dir, BIN_DIR: bin_dir}))


@dataclass
class CtrNet:
    """One test's pybridge network under `ctrd`, and the CNI install ctr uses for it."""
    ctrd: Containerd
    net: TestNetwork
    inst: CniInstall

    def cid(self, name: str) -> str:
        """The CNI_CONTAINERID ctr uses: '<namespace>-<container id>'."""
        return f"{self.ctrd.namespace}-{name}"

    def run(self, *args: str, timeout: float = 90.0) -> str:
        return self.ctrd.ctr("run", *self.ctrd.run_args(), *args, timeout=timeout).stdout

    def exec(self, name: str, *argv: str) -> str:
        return self.ctrd.ctr("tasks", "exec", "--exec-id", unique_name("x"), name, *argv).stdout

    def ipv4(self, name: str) -> str:
        out = self.exec(name, "ip", "-o", "-4", "addr", "show", "dev", "eth0")
        m = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
        assert m, out
        return m.group(1)
