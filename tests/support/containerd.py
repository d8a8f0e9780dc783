"""A private containerd for `ctr run --cni` tests, and the /etc/cni install ctr insists on.

Why: containerd's `ctr run --cni` (go-cni + libcni) is the second runtime family pybridge must
serve, and it has a behaviour podman lacks: after the task is gone it sends DEL with
CNI_NETNS="" (host state must still be released), and `ctr run -d` never sends DEL at all.

The daemon is private (root, state, socket under a temp dir; CRI plugin disabled so it cannot
collide with Docker's containerd; `native` snapshotter so no overlay mounts are left behind).
ctr has no option for the CNI directories: it reads the first config (lexical order) in
/etc/cni/net.d and finds plugins in /opt/cni/bin or /usr/lib/cni. `install_cni()` therefore
writes `00-<name>.conflist` there and an /opt/cni/bin/pybridge wrapper that records each call's
CNI_COMMAND / CNI_NETNS in a log and then execs the venv's `pybridge`; both are removed again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sysconfig
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.host import run
from tests.support.podman import umount_below

__all__ = ["Containerd", "CtrError", "CniInstall", "containerd_missing", "install_blocker", "install_cni"]

CONF_DIR = Path("/etc/cni/net.d")
BIN_DIR = Path("/opt/cni/bin")
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
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        umount_below(self.base)
        shutil.rmtree(self.base, ignore_errors=True)


# ----- the CNI install ctr needs -------------------------------------------------------------
@dataclass
class CniInstall:
    """What install_cni() put in place; `calls()` reads the wrapper's log."""

    conf_path: Path
    call_log: Path
    created: list[Path] = field(default_factory=list)

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
# pybridge test wrapper (removed when the test ends): log the call, then run the venv's pybridge.
printf '{{"command":"%s","netns":"%s","id":"%s","ifname":"%s"}}\\n' \\
    "$CNI_COMMAND" "$CNI_NETNS" "$CNI_CONTAINERID" "$CNI_IFNAME" >> '{log}'
exec '{target}' "$@"
"""


def install_blocker(network: str) -> str | None:
    """Why install_cni() would refuse for `network` (None: it can install)."""
    wrapper = BIN_DIR / "pybridge"
    if wrapper.exists() or wrapper.is_symlink():
        return (f"{wrapper} already exists (installed pybridge or another test session); "
                "refusing to replace it")
    first = f"00-{network}.conflist"
    earlier = sorted(p.name for p in CONF_DIR.glob("*") if p.suffix in (".conf", ".conflist", ".json")
                     and p.name < first) if CONF_DIR.is_dir() else []
    if earlier:
        return f"{CONF_DIR} has configs that sort before ours: {earlier}"
    return None


@contextlib.contextmanager
def install_cni(conflist: Mapping[str, Any], log_dir: str | os.PathLike) -> Iterator[CniInstall]:
    """Put `conflist` first in /etc/cni/net.d and a logging `pybridge` in /opt/cni/bin.

    Refuses (CtrError) when /opt/cni/bin/pybridge already exists and is not ours, or when a
    config sorting before ours exists: the test would then not be testing pybridge.
    """
    conf_path = CONF_DIR / f"00-{conflist['name']}.conflist"
    call_log = Path(log_dir) / "pybridge-calls.log"
    target = Path(sysconfig.get_path("scripts")) / "pybridge"
    wrapper = BIN_DIR / "pybridge"
    inst = CniInstall(conf_path, call_log)
    reason = install_blocker(conflist["name"])
    if reason:
        raise CtrError(reason)
    try:
        for d in (CONF_DIR, BIN_DIR):
            missing = []
            p = d
            while not p.exists():
                missing.append(p)
                p = p.parent
            d.mkdir(parents=True, exist_ok=True)
            inst.created.extend(reversed(missing))  # deepest last, removed first
        tmp = conf_path.with_name("." + conf_path.name + ".tmp")
        tmp.write_text(json.dumps(conflist, indent=2))
        os.replace(tmp, conf_path)
        wtmp = BIN_DIR / ".pybridge.pbt.tmp"
        wtmp.write_text(WRAPPER.format(log=call_log, target=target))
        wtmp.chmod(0o755)
        os.replace(wtmp, wrapper)
        yield inst
    finally:
        conf_path.unlink(missing_ok=True)
        if wrapper.is_file() and str(call_log) in wrapper.read_text(errors="replace"):
            wrapper.unlink()
        for d in sorted(inst.created, key=lambda p: len(str(p)), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty
