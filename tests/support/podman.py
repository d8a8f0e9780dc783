"""A private podman 4.3 (CNI backend) for integration tests.

Why: podman is the runtime most users will put pybridge under, and it drives plugins through
libcni exactly as in production (VERSION, ADD with K8S-style CNI_ARGS, DEL with prevResult). A test
must not touch the host's podman state, so everything lives under one directory: containers.conf
(pointed at by CONTAINERS_CONF), storage root/runroot (vfs driver: no overlay mounts to leak),
and `network_config_dir` holding only the test's conflists. Plugins are found in the venv's bin
(the checked-out `pybridge` / `pybridge-ipam`) and then /usr/lib/cni (the Go plugins).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sysconfig
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.host import run
from tests.support.images import build_rootfs_tar
from tests.support.mountns import umount_below

__all__ = ["Podman", "PodmanError", "busybox_podman", "podman_missing"]

IMAGE = "localhost/pbtbusybox:1"


class PodmanError(RuntimeError):
    """A podman command failed; carries the command and its output."""


def podman_missing() -> str | None:
    """None when podman + runc are installed, else a skip reason."""
    missing = [t for t in ("podman", "runc", "conmon") if shutil.which(t) is None
               and not Path(f"/usr/bin/{t}").exists() and not Path(f"/usr/sbin/{t}").exists()]
    if missing:
        return "not installed: " + ", ".join(missing) + " (apt-get install podman runc)"
    return None


def _runc() -> str:
    return shutil.which("runc") or "/usr/sbin/runc"


CONF_TEMPLATE = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "private"

[network]
network_backend = "cni"
cni_plugin_dirs = {plugin_dirs}
network_config_dir = "{net_dir}"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
[engine.runtimes]
runc = ["{runc}"]
"""


class Podman:
    """podman with private storage, config and network dir under `base`."""

    def __init__(self, base: str | os.PathLike, *, plugin_dirs: Sequence[str] | None = None,
                 timeout: float = 90.0) -> None:
        self.base = Path(base)
        self.net_dir = self.base / "net.d"
        self.root = self.base / "root"
        self.runroot = self.base / "run"
        self.tmpdir = self.base / "tmp"
        self.conf = self.base / "containers.conf"
        self.timeout = timeout
        scripts = sysconfig.get_path("scripts")
        self.plugin_dirs = list(plugin_dirs) if plugin_dirs else [scripts, "/usr/lib/cni"]
        for d in (self.net_dir, self.root, self.runroot, self.tmpdir):
            d.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(CONF_TEMPLATE.format(
            plugin_dirs=json.dumps(self.plugin_dirs), net_dir=self.net_dir, runc=_runc()))

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env["CONTAINERS_CONF"] = str(self.conf)
        env["TMPDIR"] = str(self.tmpdir)
        return env

    def argv(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.root), "--runroot", str(self.runroot),
                "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--runtime", _runc(),
                "--tmpdir", str(self.tmpdir), *args]

    def run(self, *args: str, check: bool = True, timeout: float | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run one podman command (argument list, no shell); raises PodmanError on failure."""
        return run(self.argv(*args), check=check, input=input, timeout=timeout or self.timeout,
                   env=self.env, error=PodmanError)

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args).stdout or "null")

    # ----- images and networks ---------------------------------------------------------------
    def import_rootfs(self, tar: str | os.PathLike, ref: str = IMAGE) -> str:
        self.run("import", "--change", 'CMD ["/bin/sh"]', str(tar), ref)
        return ref

    def save_oci_archive(self, ref: str, dest: str | os.PathLike) -> Path:
        dest = Path(dest)
        dest.unlink(missing_ok=True)
        self.run("save", "--format", "oci-archive", "-o", str(dest), ref)
        return dest

    def add_network(self, conflist: Mapping[str, Any]) -> Path:
        """Install a conflist in this podman's network dir (file name = network name)."""
        path = self.net_dir / f"{conflist['name']}.conflist"
        path.write_text(json.dumps(conflist, indent=2))
        return path

    def remove_network_file(self, name: str) -> None:
        (self.net_dir / f"{name}.conflist").unlink(missing_ok=True)

    # ----- teardown --------------------------------------------------------------------------
    def remove_all_containers(self) -> None:
        """Force-remove every container (runs CNI DEL for the ones still attached)."""
        self.run("rm", "--all", "--force", "--time", "0", check=False, timeout=120)

    def destroy(self) -> None:
        """Remove containers, images and all of `base` (never raises)."""
        try:
            self.remove_all_containers()
            self.run("rmi", "--all", "--force", check=False, timeout=60)
        except Exception:  # noqa: BLE001 - teardown goes on
            pass
        umount_below(self.base)
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def busybox_podman(base: Path) -> Iterator[Podman]:
    """A private podman under `base/pm` with the busybox image `IMAGE` imported (built from the
    host's static busybox: there is no registry); destroyed at the end."""
    pm = Podman(base / "pm")
    try:
        pm.import_rootfs(build_rootfs_tar(base / "rootfs.tar"))
        yield pm
    finally:
        pm.destroy()
