"""Booting the QEMU full-kernel guest (tests/guest/run-in-vm.sh, virtme-ng): whether this host
can, and running the runner so that no QEMU outlives the test. Shared by the guest tests that run
a suite inside it and those that boot it as a VM on a pybridge network."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.paths import REPO as ROOT

RUNNER = Path(os.environ.get("PYBRIDGE_VM_RUNNER", ROOT / "tests/guest/run-in-vm.sh"))
VENV = Path(os.environ.get("VM_VENV", "/opt/vng"))
VM_TIMEOUT = int(os.environ.get("VM_TIMEOUT", "420"))  # keep + 60 below addopts --timeout=600

# Exit statuses with a meaning of their own (run-in-vm.sh's, or pytest's 2 and 5).
RUNNER_STATUS = {
    2: "run-in-vm.sh refused to start, or the in-guest pytest hit a usage error/interrupt (exit 2)",
    5: "the in-guest pytest collected no test (exit 5)",
    124: f"the guest did not finish within VM_TIMEOUT={VM_TIMEOUT} s",
    125: "the guest could not mount or enter the work tree",
    255: "the guest died (QEMU or kernel failure; rerun with VM_VERBOSE=1)",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def missing_prerequisites() -> list[str]:
    """What the guest needs and this host lacks (empty when a guest can be booted)."""
    missing = []
    if not RUNNER.is_file():
        missing.append(f"{RUNNER} (the guest runner)")
    if not os.access(VENV / "bin" / "vng", os.X_OK):
        missing.append(f"{VENV}/bin/vng (virtme-ng 1.42 venv)")
    kernels = [os.environ["VM_KERNEL"]] if os.environ.get("VM_KERNEL") else glob.glob("/boot/vmlinuz-*")
    if not any(os.access(k, os.R_OK) for k in kernels):
        missing.append("a readable kernel in /boot (linux-image-amd64; root needed to read it)")
    for tool in ("qemu-system-x86_64", "busybox"):
        if shutil.which(tool) is None:
            missing.append(f"{tool} in PATH")
    return missing


def require_guest() -> None:
    """Skip the calling test where no guest can be booted (already inside one, or prerequisites
    missing); in CI missing prerequisites fail it instead."""
    if os.environ.get("PYBRIDGE_IN_VM") == "1":
        pytest.skip("already inside the kernel VM")
    missing = missing_prerequisites()
    if missing:
        msg = "kernel VM prerequisites missing (run `bash .ci/vm-setup.sh` as root): " + "; ".join(missing)
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


def kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` (the runner's). `timeout` inside the runner puts
    QEMU in a process group of its own, so killing the runner's group would not reach it."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:  # field 6 of /proc/PID/stat: session id
                os.kill(int(stat.parent.name), signal.SIGKILL)


def run_guest(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the runner in a session of its own; kill that session if it outlives its own timeout,
    or if this test is interrupted (pytest-timeout, ^C): no QEMU is left behind."""
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=VM_TIMEOUT + 60)
    except subprocess.TimeoutExpired:
        kill_session(proc.pid)
        out, _ = proc.communicate()
        return 124, out
    finally:
        if proc.poll() is None:
            kill_session(proc.pid)
            proc.wait()
    return proc.returncode, out
