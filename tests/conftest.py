"""Fixtures and hooks every pybridge test can use.

Tests live in folders by kind: tests/unit (no root, no kernel), tests/integration (root, the real
kernel), tests/runtime (real dockerd, podman, containerd) and tests/guest (the full-kernel QEMU
guest). Every test outside tests/unit gets the `root` marker here, so `pytest tests/unit` and
`pytest -m "not root"` run as a normal user, and root tests are skipped without root.

Fixtures: `netns` (factory of namespaces), `uplink` / `uplink_factory` (the NIC stand-in),
`cni` (a CniTool with a private cache dir and IPAM dataDir), `test_prefix`, `fastpath_daemon`
(the CNI fast-path daemon as a process), `served_driver` (`cni-bridge serve` on a private socket),
`plugin` (the Docker driver's app through Flask's test client). The runtime fixtures (`engine`,
`driver`, `dk`) are in tests/runtime/conftest.py.
Markers are declared in pyproject.toml. Hooks: the `root` marker; a per-test watch that attributes
leftovers to the test that made them; a session-end leak check that removes what the session left
behind and fails the run when there was anything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # so `tests.support` imports without pythonpath settings
    sys.path.insert(0, str(REPO_ROOT))

from tests.support import daemon  # noqa: E402
from tests.support import etcd as support_etcd  # noqa: E402
from tests.support import session as support_session  # noqa: E402
from tests.support.cnitool import CniTool  # noqa: E402
from tests.support.dockerd import driver_settings, socket_answers  # noqa: E402
from tests.support.host import is_root  # noqa: E402
from tests.support.leaks import (  # noqa: E402
    Leak,
    find_leaks,
    nft_tables,
    quick_inventory,
    remove_leaks,
    settle,
    sweep_stale_sessions,
)
from tests.support.netns import Netns, create_netns  # noqa: E402
from tests.support.paths import VENV_BIN  # noqa: E402
from tests.support.session import current_session, register_data_dir  # noqa: E402
from tests.support.topology import Uplink, create_uplink  # noqa: E402

TESTS_DIR = Path(__file__).resolve().parent
ROOT_KINDS = ("integration", "runtime", "guest")  # folders of tests/ whose tests all need root

LEAKS_KEY = pytest.StashKey[list[Leak]]()
LEAK_ERRORS_KEY = pytest.StashKey[list[str]]()
STALE_KEY = pytest.StashKey[list[Leak]]()


class LeakWarning(UserWarning):
    """A test left namespaces, links or tables behind (removed at session end)."""


def pytest_sessionstart(session: pytest.Session) -> None:
    """Claim a prefix, remember which nft tables pre-exist, sweep crashed sessions' leftovers."""
    if not is_root():
        return
    s = support_session.session()
    s.baseline_nft = set(nft_tables())
    session.config.stash[STALE_KEY] = sweep_stale_sessions()


def needs_root(path: Path) -> bool:
    """True for a test file in one of the ROOT_KINDS folders of tests/."""
    try:
        kind = path.resolve().relative_to(TESTS_DIR).parts[0]
    except (ValueError, IndexError):
        return False
    return kind in ROOT_KINDS


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if needs_root(item.path):
            item.add_marker(pytest.mark.root)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") and not is_root():
        pytest.skip("needs root")
    current = current_session()
    if current is not None:
        current.current_test = item.nodeid


@pytest.fixture(autouse=True)
def pybridge_leak_watch(request: pytest.FixtureRequest) -> Iterator[None]:
    """Attribute prefixed namespaces/links/tables that outlive a test to that test.

    Function-scoped fixtures are torn down before this one, wider-scoped ones after the check,
    so what shows up here was made by the test (or its own fixtures) and not removed.
    """
    if not is_root() or current_session() is None:
        yield
        return
    before = quick_inventory()
    yield
    new = settle(baseline=before) if quick_inventory() - before else set()
    if new:
        s = current_session()
        for item in new:
            s.names.setdefault(item.split()[-1], request.node.nodeid)
        warnings.warn(LeakWarning(f"{request.node.nodeid} left behind: {', '.join(sorted(new))}"))


@pytest.hookimpl(trylast=True)  # after session-scoped fixtures are torn down
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    s = current_session()
    if s is None or not is_root():
        return
    try:
        settle()  # let namespace teardown finish before judging
        leaks = find_leaks()
        session.config.stash[LEAKS_KEY] = leaks
        session.config.stash[LEAK_ERRORS_KEY] = remove_leaks(leaks)
        if any(leak.fatal for leak in leaks) and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    finally:
        s.unregister()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    stale = config.stash.get(STALE_KEY, [])
    if stale:
        terminalreporter.section("pybridge: swept leftovers of crashed test sessions", yellow=True)
        for leak in stale:
            terminalreporter.line(f"  {leak}")
    leaks = config.stash.get(LEAKS_KEY, [])
    fatal = [leak for leak in leaks if leak.fatal]
    if fatal:
        terminalreporter.section("pybridge: TEST RESOURCES LEAKED (removed now; run FAILED)", red=True, bold=True)
        for leak in fatal:
            terminalreporter.line(f"  {leak}", red=True)
        for err in config.stash.get(LEAK_ERRORS_KEY, []):
            terminalreporter.line(f"  could not remove: {err}", red=True)
    ambiguous = [leak for leak in leaks if not leak.fatal]
    if ambiguous:
        terminalreporter.section("pybridge: possible leaks (another session was running)", yellow=True)
        for leak in ambiguous:
            terminalreporter.line(f"  {leak}")


# ----- fixtures ----------------------------------------------------------------------------
def _need_root() -> None:
    if not is_root():
        pytest.skip("needs root")


@pytest.fixture(scope="session")
def test_prefix() -> str:
    """The name prefix of this pytest run (`pbt` + 4 hex); every created name should contain it."""
    return support_session.session().prefix


@pytest.fixture
def netns() -> Iterator[Callable[..., Netns]]:
    """Factory: `netns()` / `netns(name)` -> a fresh namespace with lo up; all are deleted
    (processes in them killed first) when the test ends, pass or fail."""
    _need_root()
    made: list[Netns] = []

    def make(name: str | None = None) -> Netns:
        ns = create_netns(name)
        made.append(ns)
        return ns

    yield make
    errors = []
    for ns in reversed(made):
        try:
            ns.delete()
        except Exception as exc:  # noqa: BLE001 - delete the others too
            errors.append(str(exc))
    if errors:
        raise RuntimeError("netns cleanup failed: " + "; ".join(errors))


@pytest.fixture
def own_bridges() -> Iterator[list[str]]:
    """Bridges outlive DEL (they are the network's, not the container's): a test appends the
    names of those it makes, removed here."""
    made: list[str] = []
    yield made
    for name in made:
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


@pytest.fixture
def uplink_factory() -> Iterator[Callable[..., Uplink]]:
    """Factory over `create_uplink(outside_cidr=None, *, host_addr=True, ipv6=True,
    outside_gateway=None)`; every uplink is removed at test end."""
    _need_root()
    made: list[Uplink] = []

    def make(*args: Any, **kwargs: Any) -> Uplink:
        up = create_uplink(*args, **kwargs)
        made.append(up)
        return up

    yield make
    for up in reversed(made):
        up.delete()


@pytest.fixture
def uplink(uplink_factory: Callable[..., Uplink]) -> Uplink:
    """The default NIC stand-in: root-side `host_if` with .1, `outside` namespace with .2 of a
    fresh 198.18.x.0/24 (and a ULA /64)."""
    return uplink_factory()


@pytest.fixture
def cni(tmp_path: Path) -> Iterator[CniTool]:
    """A CniTool with a private libcni cache (`tmp/cni-cache`) and an IPAM dataDir
    (`cni.data_dir`, watched by the leak check). Attachments still cached at test end are
    DELeted (keep-going) and reported as a warning."""
    data_dir = tmp_path / "cni-data"
    data_dir.mkdir()
    if is_root():
        register_data_dir(data_dir)
    tool = CniTool(tmp_path / "cni-cache", data_dir=data_dir)
    yield tool
    leftovers = tool.cleanup()
    if leftovers:
        desc = ", ".join(
            f"{r.network}/{r.container_id}/{r.ifname}" + ("" if r.ok else f" (DEL failed: {r.error})")
            for r in leftovers
        )
        warnings.warn(LeakWarning(f"attachments not DELeted by the test, cleaned up: {desc}"))


@pytest.fixture
def fastpath_daemon(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The CNI fast-path daemon as a separate process, as `cni-bridge serve` runs it, with a
    private run dir (its locks): yields (socket path, run dir). Callers must set both
    PYBRIDGE_FASTPATH_SOCKET and PYBRIDGE_RUN_DIR (else the daemon declines). Its log goes to
    `tmp/fastpath.log` (a pipe nobody reads would block a chatty daemon)."""
    _need_root()
    with daemon.fastpath_daemon(tmp_path) as (path, run_dir, _):
        yield path, run_dir
    assert not os.path.exists(path), "the daemon must remove its socket when it stops"


@pytest.fixture
def served_driver(tmp_path: Path) -> Iterator[tuple[Path, Any, list[subprocess.Popen], Callable[..., subprocess.Popen]]]:
    """`cni-bridge serve` on a private socket (not the well-known one), state and leases under
    tmp, no CNI fast path: yields (socket, Settings, processes, start). `start(workers=4,
    threads=1)` starts one more driver and waits until it answers; all are stopped at the end
    (SIGTERM to the process group: master and workers)."""
    _need_root()
    settings = driver_settings(tmp_path)
    sock = tmp_path / "plugins" / "pybridge.sock"
    procs: list[subprocess.Popen] = []

    def start(workers: int = 4, threads: int = 1) -> subprocess.Popen:
        proc = subprocess.Popen(
            [str(VENV_BIN / "cni-bridge"), "serve", "--socket", str(sock), "--state-dir", str(settings.state_dir),
             "--ipam-data-dir", str(settings.ipam_data_dir), "--workers", str(workers), "--threads", str(threads),
             "--log-file", str(tmp_path / "serve.log"), "--cni-fastpath", "off"], start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        deadline = time.monotonic() + 30
        while not socket_answers(sock):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        return proc

    yield sock, settings, procs, start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[Any]:
    """A private 3-member etcd cluster on free loopback ports (tests/support/etcd.py), each member
    with its own data dir under tmp; every member killed at the end. Skips without etcd."""
    missing = support_etcd.etcd_missing()
    if missing:
        pytest.skip(missing)
    with support_etcd.etcd_cluster(tmp_path / "etcd", members=3) as cluster:
        yield cluster


@pytest.fixture
def plugin(tmp_path: Path) -> Any:
    """The Docker driver's Flask app, state and leases under tmp, called like libnetwork does
    (tests/support/plugin_client.py: a `Plugin`); no socket, no kernel work until a test asks."""
    # Imported here, not at the top: Flask and the driver cost ~0.3 s to import, ~3 s in the
    # emulated guest, whose pytest loads this conftest too.
    from tests.support.plugin_client import plugin_for
    return plugin_for(tmp_path)
