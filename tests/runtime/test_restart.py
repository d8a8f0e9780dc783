"""Restart survival with a real dockerd (issue #8): the Docker driver killed between
CreateEndpoint and Join, SIGKILL of the whole driver while dockerd starts and removes containers,
and a reboot simulation (runtime state such as links, nft tables, namespaces and /run gone; dockerd's
data root, the driver's state directory and the lease store kept), with a published port that must
answer again afterwards.

The same at the contract level without dockerd, and the CNI reboot: tests/integration/test_restart.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest

from cni_bridge.crashpoint import ENV as CRASH_ENV
from cni_bridge.firewall import table_name
from tests.support import dockerd as docker_support
from tests.support import hostsnap
from tests.support.docker_scenario import Net, Scenario, assert_network_gone, bridge_of, leased, link_exists
from tests.support.hostsnap import LEASE_HINTS
from tests.support.session import unique_name
from tests.support.web import from_ns, get, start_web, wait_listening


def restart_driver(drv: docker_support.DriverProcess, crash_after: str | None = None) -> None:
    """SIGKILL the whole driver and start it again, with or without crash injection."""
    drv.kill()
    drv.env = {CRASH_ENV: crash_after} if crash_after else {}
    drv.start()


@pytest.fixture
def crashable(driver: docker_support.DriverProcess) -> Iterator[docker_support.DriverProcess]:
    """The session's driver; whoever restarted it with crash injection (or left it dead), it
    is restarted normally at the end, and a dockerd a failed reboot test left dead is started
    again, so the next test gets a normal engine and driver."""
    yield driver
    if driver.env or driver.proc is None or driver.proc.poll() is not None:
        restart_driver(driver)
    engine = driver.engine
    if engine.ours and engine.proc.poll() is not None:
        engine._forget_dead_containerd()
        engine.start()


def engine_snapshot(dk: Scenario) -> hostsnap.HostSnapshot:
    """Links, addresses, routes, rules of dockerd's namespace plus the driver's state and leases."""
    return hostsnap.snapshot([dk.driver.state_dir, dk.driver.ipam_dir],
                             netns=dk.engine.netns.name if dk.engine.netns else None)


def engine_diff(dk: Scenario, before: hostsnap.HostSnapshot) -> list[str]:
    """In dockerd's own namespace everything counts; with a dockerd in the host namespace only
    what carries this pytest run's names (and the driver's pbc<hex> container ends)."""
    only = None if dk.engine.netns else hostsnap.mine(dk.driver.state_dir, dk.driver.ipam_dir) + [r"\bpbc[0-9a-f]{11}\b"]
    return hostsnap.diff(before, engine_snapshot(dk), ignore=[LEASE_HINTS], only=only)


@pytest.mark.docker
def test_docker_driver_killed_between_create_endpoint_and_join(dk: Scenario, crashable: Any) -> None:
    net = dk.network()
    gateway = net.subnet.network_address + 1
    first = dk.run(net)  # already running: must not notice anything
    before = engine_snapshot(dk)
    restart_driver(dk.driver, "docker-join-received")
    name = unique_name("c")
    dk.containers.append(name)
    started = time.monotonic()
    proc = dk.docker("run", "-d", "--init", "--name", name, "--network", net.name, docker_support.IMAGE,
                     "sleep", "3600", check=False)
    print(f"\ndocker run with the driver dying at Join failed after {time.monotonic() - started:.1f}s: "
          f"{proc.stderr.strip()}")
    assert proc.returncode != 0, proc.stdout
    # dockerd retries the Join the crash cut off with an empty body: refused (NetworkID is required)
    # by the worker gunicorn respawned, or cut off again if the crash comes first
    assert "NetworkDriver.Join" in proc.stderr, proc.stderr
    assert re.search(r"pybridge crashpoint: \d+ docker-join-received", dk.driver.log_tail(200))
    # dockerd's DeleteEndpoint + ReleaseAddress reached the workers gunicorn respawned
    assert engine_diff(dk, before) == []  # no link, rule, endpoint record or lease left
    restart_driver(dk.driver)
    assert engine_diff(dk, before) == []
    assert dk.ping(first, gateway)
    second = dk.run(net)
    assert dk.ping(second, gateway) and dk.ping(second, dk.address(first, net))
    dk.remove_all_and_check(net)


def network_view(dk: Scenario, net: Net) -> dict[str, Any]:
    """What the driver and the kernel hold for `net`: endpoint records, bridge ports,
    masquerade members, leased addresses."""
    nft = dk.engine.host_run("nft", "list", "table", "inet", table_name(net.id), check=False).stdout
    records = [r for r in (json.loads(p.read_text()) for p in (dk.driver.state_dir / "endpoints").glob("*.json"))
               if r["network"] == net.id]
    return {"endpoints": sorted(a.split("/")[0] for r in records for a in r["addresses"]),
            "statuses": {r["status"] for r in records},
            "ports": len(dk.engine.host_run("ip", "-br", "link", "show", "master", bridge_of(dk, net)).stdout.splitlines()),
            "masquerade": sorted(re.findall(r"(\d+\.\d+\.\d+\.\d+) comment", nft)),
            "leases": sorted(p.name for p in leased(dk.driver, net.subnet))}


KILLS = 4


def running_on(dk: Scenario, net: Net) -> list[str]:
    return dk.docker("ps", "-q", "--filter", f"network={net.name}").stdout.split()


@pytest.mark.docker
def test_docker_driver_sigkill_under_load(dk: Scenario, crashable: Any) -> None:
    """Containers start and stop on three threads while the whole driver (gunicorn master and
    workers) is SIGKILLed and restarted four times. Calls that hit the dead driver fail (dockerd
    retries a broken call with an empty body), the rest must leave a consistent host."""
    net = dk.network()
    gateway = str(net.subnet.network_address + 1)
    names = [unique_name("c") for _ in range(60)]
    dk.containers.extend(names)
    pending = iter(names)
    lock = threading.Lock()
    stop = threading.Event()
    results: list[tuple[str, bool]] = []

    def churn(keep: int) -> None:
        mine: list[str] = []
        while not stop.is_set():
            with lock:
                name = next(pending, None)
            if name is None:
                return
            proc = dk.docker("run", "-d", "--init", "--name", name, "--network", net.name, docker_support.IMAGE,
                             "sleep", "3600", check=False, timeout=180)
            results.append(("run", proc.returncode == 0))
            mine.append(name)
            if len(mine) > keep:
                gone = mine.pop(0)
                results.append(("rm", dk.docker("rm", "-f", gone, check=False, timeout=180).returncode == 0))

    started = time.monotonic()
    retries_before = dk.engine.log_tail(100000).count("Unable to connect to plugin")
    recoveries_before = dk.driver.log_text().count("recovery:")
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(churn, keep) for keep in (1, 2, 3)]
        for _ in range(KILLS):
            time.sleep(2.5)
            dk.driver.kill()
            time.sleep(0.5)  # calls in flight broke; new ones wait in dockerd's retry loop
            restart_driver(dk.driver)
        time.sleep(2)
        stop.set()
        for future in futures:
            future.result()
    print(f"\nload: {sum(ok for _, ok in results)} of {len(results)} docker run/rm succeeded in "
          f"{time.monotonic() - started:.1f}s with {KILLS} driver SIGKILLs; dockerd retried "
          f"{dk.engine.log_tail(100000).count('Unable to connect to plugin') - retries_before} calls, "
          f"start-up recovery undid {dk.driver.log_text().count('recovery:') - recoveries_before} half-done ones")
    assert any(ok for what, ok in results if what == "run")

    running = running_on(dk, net)
    addresses = [dk.address(c, net) for c in running]
    assert len(set(addresses)) == len(addresses), addresses  # no duplicate address
    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(lambda c: dk.ping(c, gateway), running))
    if len(running) > 1:
        assert dk.ping(running[0], addresses[-1])
    view = network_view(dk, net)
    assert view["endpoints"] == sorted(addresses) and view["statuses"] <= {"ready"}, view
    assert view["ports"] == len(running) and view["masquerade"] == sorted(addresses), view
    dk.docker("rm", "-f", *dk.containers, check=False)
    dk.containers.clear()
    view = network_view(dk, net)
    assert (view["endpoints"], view["ports"], view["masquerade"]) == ([], 0, []), view
    orphans = [a for a in view["leases"] if a != gateway]
    print(f"addresses leaked until network rm (driver killed inside RequestAddress/ReleaseAddress): {orphans}")
    dk.remove_network(net)
    assert_network_gone(dk, net)


# --- reboot simulation, Docker -----------------------------------------------------------------------
def simulate_reboot(dk: Scenario, net: Net) -> None:
    """Power loss: the driver, dockerd and every container die at once; then what lives in the
    kernel and in /run is gone (container namespaces with their veths, the bridge, the whole
    ruleset of dockerd's namespace). On disk stay dockerd's data root and the driver's state
    directory and lease store."""
    pids = [dk.docker("inspect", "-f", "{{.State.Pid}}", c).stdout.strip() for c in dk.containers]
    dk.driver.kill()
    dk.engine.proc.kill()
    dk.engine.proc.wait()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    for shim in _shims_of(dk.engine):
        with contextlib.suppress(ProcessLookupError):
            os.kill(shim, signal.SIGKILL)
    dk.engine._forget_dead_containerd()
    dk.engine.unmount_below(dk.engine.root / "exec")   # the sandboxes' namespaces
    dk.engine.host_run("ip", "link", "del", bridge_of(dk, net), check=False)
    dk.engine.host_run("nft", "flush", "ruleset")


def _shims_of(engine: docker_support.DockerEngine) -> list[int]:
    """containerd shims of our private dockerd (their command line names its exec root)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            if "containerd-shim" in cmdline and str(engine.root) in cmdline:
                out.append(int(pid))
    return out


@pytest.mark.docker
def test_docker_reboot_simulation(dk: Scenario, crashable: Any) -> None:
    if not dk.engine.ours or dk.engine.netns is None:
        pytest.skip("the Docker Engine was not started by the tests; not rebooting it")
    outside, _, outside_net = dk.outside()
    host_ip, outside_ip = str(outside_net.network_address + 1), str(outside_net.network_address + 2)
    net = dk.network()
    gateway = str(net.subnet.network_address + 1)
    always = start_web(dk, net, "--restart", "always", "-p", "18170:80")
    plain = dk.run(net)
    old = {dk.address(always, net), dk.address(plain, net)}
    assert get(from_ns(outside), host_ip, 18170) == outside_ip
    simulate_reboot(dk, net)
    assert not link_exists(dk.engine, bridge_of(dk, net))
    # The boot sequence: the packet filter first (dockerd sets FORWARD DROP in its init, before
    # it restarts containers), the driver (`Before=docker.service`), then dockerd.
    dk.engine.host_run("iptables", "-w", "-P", "FORWARD", "DROP")
    restart_driver(dk.driver)
    dk.engine.start()
    assert net.name in dk.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    deadline = time.monotonic() + 60
    while dk.docker("inspect", "-f", "{{.State.Running}}", always).stdout.strip() != "true":
        assert time.monotonic() < deadline, "container with --restart always did not come back"
        time.sleep(0.5)
    dk.docker("start", plain)
    assert link_exists(dk.engine, bridge_of(dk, net))  # re-created at CreateEndpoint
    wait_listening(dk, always)
    assert get(from_ns(outside), host_ip, 18170) == outside_ip, "the published port did not come back"
    addresses = [dk.address(c, net) for c in (always, plain)]
    assert len(set(addresses)) == 2 and set(addresses) <= {str(a) for a in net.subnet.hosts()}, addresses
    assert dk.ping(always, gateway) and dk.ping(plain, gateway) and dk.ping(plain, addresses[0])
    third = dk.run(net)
    assert dk.address(third, net) not in addresses and dk.ping(third, addresses[1])
    view = network_view(dk, net)
    everyone = sorted([*addresses, dk.address(third, net)])
    assert view["endpoints"] == everyone and view["ports"] == 3 and view["masquerade"] == everyone, view
    assert view["leases"] == sorted([gateway, *everyone]), view  # the pre-reboot leases were released
    print(f"\naddresses before the reboot {sorted(old)}, after {addresses}")
    dk.remove_all_and_check(net)
