"""Fixtures for tests that need ipvlan, 802.1q vlan or dummy links.

Why: the host kernel has none of them, so these tests run only inside the QEMU guest that
tests/test_kernel_vm.py boots (Debian's full kernel; see docs/testing.md, "The full-kernel
guest"). That runner sets PYBRIDGE_IN_VM=1 and PYBRIDGE_VM_STRICT=1. Everywhere else every
test in this directory is skipped.

Inside the guest the session fixture loads the modules once and proves an ipvlan link can really
be created; with PYBRIDGE_VM_STRICT=1 a guest that cannot do that is an error, not a skip (a
silently skipped guest suite would make the host-side test pass for nothing).

The guest is slow (TCG emulation, Python ~10x slower): keep tests here few and cheap, and put
only what needs these link types here. Fixtures: `guest_kernel` (session, autouse) and
`kernel_netns` (a fresh namespace per test, deleted afterwards).
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# Modules the guest tests rely on; macvlan/bridge/veth are built in or autoloaded anyway.
GUEST_MODULES = ("ipvlan", "8021q", "dummy", "macvlan")
NETNS_DIR = Path("/run/netns")
# Names of namespaces made here: short (IFNAMSIZ is not an issue for ns names, but keep it
# readable) and distinct from tests/support's `pbt....` session prefix.
NETNS_PREFIX = f"pbk{os.getpid() % 10000:04d}"
_counter = itertools.count()


def in_guest() -> bool:
    """True when tests/test_kernel_vm.py (or a person) says we are inside the kernel VM."""
    return os.environ.get("PYBRIDGE_IN_VM") == "1"


def _strict() -> bool:
    return os.environ.get("PYBRIDGE_VM_STRICT") == "1"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def _probe_ipvlan() -> str | None:
    """Create dummy + ipvlan in a throw-away namespace; return an error text, None if it works."""
    ns = f"{NETNS_PREFIX}probe"
    steps = (
        ("ip", "netns", "add", ns),
        ("ip", "-n", ns, "link", "add", "d0", "type", "dummy"),
        ("ip", "-n", ns, "link", "add", "i0", "link", "d0", "type", "ipvlan", "mode", "l2"),
        ("ip", "-n", ns, "link", "add", "link", "d0", "name", "d0.7", "type", "vlan", "id", "7"),
    )
    try:
        for argv in steps:
            r = _run(*argv)
            if r.returncode != 0:
                return f"`{' '.join(argv)}` failed: {(r.stderr or r.stdout).strip()}"
        return None
    finally:
        _run("ip", "netns", "del", ns)


def _leftover_netns() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(NETNS_PREFIX))
    except FileNotFoundError:
        return []


@pytest.fixture(scope="session", autouse=True)
def guest_kernel() -> Iterator[None]:
    """Skip outside the guest; inside, modprobe once, prove ipvlan works, check for leaks at the end."""
    if not in_guest():
        pytest.skip("needs the kernel VM (ipvlan/8021q/dummy): run via tests/test_kernel_vm.py")
    # A failing modprobe is not fatal by itself (built-in drivers, no /lib/modules): the probe decides.
    r = _run("modprobe", "-a", *GUEST_MODULES)
    problem = _probe_ipvlan()
    if problem and r.returncode != 0:
        problem += f"; modprobe -a {' '.join(GUEST_MODULES)}: {r.stderr.strip()}"
    if problem:
        if _strict():
            pytest.fail(f"PYBRIDGE_IN_VM=1 but this kernel cannot do it: {problem}", pytrace=False)
        pytest.skip(f"kernel lacks ipvlan/vlan/dummy: {problem}")
    yield
    leaks = _leftover_netns()
    for ns in leaks:
        _run("ip", "netns", "del", ns)
    assert not leaks, f"tests/kernel left namespaces behind: {leaks}"


@pytest.fixture
def kernel_netns() -> Iterator[str]:
    """Name of a fresh network namespace (in /run/netns), deleted with everything in it afterwards."""
    name = f"{NETNS_PREFIX}n{next(_counter)}"
    r = _run("ip", "netns", "add", name)
    assert r.returncode == 0, f"ip netns add {name}: {r.stderr.strip()}"
    try:
        yield name
    finally:
        _run("ip", "netns", "del", name)
