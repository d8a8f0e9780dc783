"""Run tests/guest/kernel (ipvlan, 802.1q vlan, dummy) inside a QEMU guest booting Debian's full kernel.

Why: this host's kernel has none of those link types, so one guest is booted (via
tests/guest/run-in-vm.sh, virtme-ng in /opt/vng) and `pytest tests/guest/kernel` runs there;
this test passes iff that in-guest run passes and ran at least one test. The guest's output is
printed (shown on failure, or always with `-rP`/`-s`).

Prerequisites come from `bash .ci/vm-setup.sh` (as root). Without them this test is skipped,
except in CI (CI=true), where it fails instead.

Knobs (environment): VM_VENV (default /opt/vng), VM_TIMEOUT (seconds for boot + suite, default
420), VM_MEM / VM_CPUS (defaults 1G / 1), VM_KERNEL, PYBRIDGE_VM_RUNNER (another run-in-vm.sh),
PYBRIDGE_VM_TEST_TIMEOUT (per in-guest test, default 120), PYBRIDGE_VM_PYTEST_ARGS (extra
arguments for the in-guest pytest, e.g. `-k vlan`).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import sys
import time

import pytest

from tests.support.guest import RUNNER, RUNNER_STATUS, VENV, VM_TIMEOUT, require_guest, run_guest

pytestmark = pytest.mark.vm

TEST_TIMEOUT = int(os.environ.get("PYBRIDGE_VM_TEST_TIMEOUT", "120"))

def guest_pytest_argv() -> list[str]:
    """The in-guest command: this interpreter (the host's root fs is the guest's), tests/guest/kernel only."""
    argv = [sys.executable, "-m", "pytest", "tests/guest/kernel", "-q", "-p", "no:cacheprovider", "-rfEs"]
    # Plugin autoload is off in the guest (the hypothesis plugin alone costs ~9 s there): load
    # pytest-timeout explicitly so a hung test is reported by name, not only by VM_TIMEOUT.
    if importlib.util.find_spec("pytest_timeout") is not None:
        argv += ["-p", "pytest_timeout", f"--timeout={TEST_TIMEOUT}"]
    return argv + shlex.split(os.environ.get("PYBRIDGE_VM_PYTEST_ARGS", ""))


def guest_env() -> dict[str, str]:
    """Host environment for the runner, which exports it into the guest."""
    # Drop the host pytest's own variables (PYTEST_CURRENT_TEST, PYTEST_ADDOPTS, xdist's ...).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(
        VM_VENV=str(VENV),
        VM_TIMEOUT=str(VM_TIMEOUT),
        PYBRIDGE_IN_VM="1",  # tests/guest/kernel/conftest.py: run instead of skip
        PYBRIDGE_VM_STRICT="1",  # ... and a guest without ipvlan is an error, not a skip
        PYTHONDONTWRITEBYTECODE="1",  # the work tree is shared read-write: no __pycache__ in it
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
    )
    env.setdefault("VM_MEM", "1G")
    env.setdefault("VM_CPUS", "1")  # 2 vCPUs under TCG: 2-3x slower on a busy host
    return env


def test_kernel_suite_in_guest() -> None:
    require_guest()

    argv = ["bash", str(RUNNER), *guest_pytest_argv()]
    started = time.monotonic()
    status, out = run_guest(argv, guest_env())
    elapsed = time.monotonic() - started

    print(f"$ {shlex.join(argv)}\n{out}\n[kernel VM: exit {status} after {elapsed:.1f} s]")
    tail = "\n".join(out.rstrip().splitlines()[-40:])
    if status != 0:
        why = RUNNER_STATUS.get(status, f"the in-guest pytest failed (exit {status})")
        pytest.fail(f"{why}; guest output ends with:\n{tail}", pytrace=False)
    if not re.search(r"\b\d+ passed\b", out):
        pytest.fail(f"the in-guest pytest exited 0 but passed no test:\n{tail}", pytrace=False)
