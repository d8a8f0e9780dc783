"""Concurrency torture (issue 8): many workers, a seeded mix of operations, nothing left behind.

CNI: two pybridge bridge networks (pybridge-ipam with a private dataDir, ipMasq on, so the nft
set is exercised) and a pool of namespaces. 16 threads exec the real plugin the way libcni does
(tests/support/cnitool.py) on (namespace, network) pairs: once with the fast path off (every
call in-process: exclusion between processes, by flock) and once through the fast-path daemon
(threads of one process; the debug line proves the daemon served every call).

Docker: `cni-bridge serve` with several gunicorn worker processes (threads too); 16 client
threads act as libnetwork does for containers starting and stopping in parallel. Last, both at
once on one bridge and one lease store (`--ipam-opt network=NAME`, documented for sharing a
range between a CNI and a Docker network).

What a runtime sends, hence what the answers must be (the model):
- libcni: ADD only for a detached pair, CHECK only for an attached one (with the cached
  result), DEL for attached pairs and now and then for detached ones (a runtime retrying a
  teardown). One pair is never driven by two threads at once (a runtime serialises the calls
  of one container). Now and then a GC of one network (CNI 1.1, as containerd and CRI-O send
  periodically) whose valid list holds every attachment that exists or has a call in flight;
  the detached pairs left out are held so that no ADD for them can start during the GC. GC
  must then release nothing. Every one of these calls must succeed: no error is expected.
- libnetwork: RequestAddress -> CreateEndpoint -> Join, later Leave -> DeleteEndpoint ->
  ReleaseAddress; the network's gateway is requested once at CreateNetwork. Now and then a
  worker creates a short-lived network of its own (RequestPool, gateway, CreateNetwork), starts
  and stops two endpoints on it and removes it (DeleteNetwork, ReleaseAddress, ReleasePool),
  as `docker network create/rm` next to running containers. On a bridge and store shared with
  a CNI network, the Docker network is now and then removed (its endpoints stopped first, as
  dockerd requires) and created again while CNI containers keep using the bridge. All must
  succeed.

Checked during the run: an ADD / RequestAddress never returns an address that is held (from
the answer that handed it out until its DEL / ReleaseAddress is sent; the gateway always), every
CHECK passes, and at a pause half-way (no call in flight) the kernel and the stores agree
exactly with the model: ports of each bridge, masquerade sets, lease files, the containers'
addresses; containers ping each other and the gateway. At the end, after DEL of everything: no
lease, no veth, no nft table, no cache or state entry, and a host snapshot equal to the one
before (apart from the CNI bridges, which the fixture removes).

Counts: TORTURE_OPS / DOCKER_HALF_CYCLES / SHARED_OPS below; PYBRIDGE_SOAK=1 runs the SOAK_*
counts, PYBRIDGE_TORTURE_OPS=N sets every count (quick runs), PYBRIDGE_TORTURE_SEED the mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import random
import re
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cni_bridge import firewall
from cni_bridge.fastpath.launcher import write_launchers
from cni_bridge.ipam.lease import parse_lease_name
from tests.support import hostsnap
from tests.support.cnitool import CniRun, CniTool, bridge_conflist
from tests.support.dockerd import plugin_call
from tests.support.host import ip_json, run
from tests.support.leaks import lease_files
from tests.support.netns import Netns
from tests.support.session import register_data_dir, session, unique_name
from tests.support.subnets import unique_subnet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SOAK = os.environ.get("PYBRIDGE_SOAK") == "1"
SEED = int(os.environ.get("PYBRIDGE_TORTURE_SEED", "8"))
WORKERS = 16
NAMESPACES = 24
# CNI operations per path (the 2,000 on both). An in-process call costs ~0.35 s of CPU
# (interpreter start and the pyroute2 import), a daemon-served one ~0.05 s: on 2 cores the
# in-process 2,000 take ~6 min on a quiet machine (more under load); quick runs set
# PYBRIDGE_TORTURE_OPS.
TORTURE_OPS = {"daemon": 2000, "in-process": 2000}
SOAK_OPS = {"daemon": 10000, "in-process": 2500}
DOCKER_HALF_CYCLES = 600   # each is "start" (RequestAddress, CreateEndpoint, Join) or "stop"
DOCKER_SOAK_HALF_CYCLES = 4000
SHARED_OPS = 800           # CNI ops and Docker half-cycles on one bridge and store
SHARED_SOAK_OPS = 5000
P_DEL_DETACHED = 0.1   # a detached pair gets DEL (a retried teardown) instead of ADD
P_CHECK = 0.5          # an attached pair gets CHECK, else DEL
P_GC = 0.02            # a CNI op is a GC of one network
P_NET_CHURN = 0.03     # a Docker op is a short-lived network's whole life
P_RECREATE = 0.03      # shared store: a Docker op removes the network and creates it again
DOCKER_LIVE = 20       # about this many endpoints live per Docker network
GATEWAY_OPTS = {"RequestAddressType": "com.docker.network.gateway"}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def ops(default: int, soak: int) -> int:
    """The op count: `soak` with PYBRIDGE_SOAK=1; PYBRIDGE_TORTURE_OPS=N overrides both."""
    if os.environ.get("PYBRIDGE_TORTURE_OPS"):
        return int(os.environ["PYBRIDGE_TORTURE_OPS"])
    return soak if SOAK else default


def host_veth(container_id: str, ifname: str) -> str:
    """The host end's name: 'veth' + 11 hex of sha256(id NUL ifname) (stable across restarts)."""
    return "veth" + hashlib.sha256(f"{container_id}\0{ifname}".encode()).hexdigest()[:11]


def links_on(bridge: str) -> set[str]:
    """Ports of `bridge` (none when it does not exist yet, or any more)."""
    try:
        return {link["ifname"] for link in ip_json("link", "show", "master", bridge)}
    except RuntimeError as exc:
        if "Device does not exist" not in str(exc):
            raise
        return set()


def host_links() -> set[str]:
    return {link["ifname"] for link in ip_json("link", "show")}


def leased(store: Path) -> set[IPAddress]:
    """Addresses with a lease file in one network's store directory."""
    if not store.is_dir():
        return set()
    return {a for p in store.iterdir() if (a := parse_lease_name(p.name)) is not None}


# --- the model ---------------------------------------------------------------------------------
class AddressBook:
    """Who holds which address of one subnet. An address is held from the answer that handed it
    out until its release is sent; handing out a held one is the bug this file hunts."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holders: dict[IPAddress, str] = {}

    def claim(self, address: IPAddress, holder: str) -> str | None:
        """Record `holder`; returns who held it already (None when it was free)."""
        with self.lock:
            before = self.holders.get(address)
            self.holders[address] = holder
        return before

    def drop(self, address: IPAddress) -> None:
        with self.lock:
            self.holders.pop(address, None)


@dataclass
class Expected:
    """What the host must show when nothing is in flight; unions over every world."""
    ports: dict[str, set[str]] = field(default_factory=dict)           # bridge -> host ends on it
    leases: dict[Path, set[IPAddress]] = field(default_factory=dict)   # store dir -> addresses
    masquerade: dict[str, set[IPAddress]] = field(default_factory=dict)  # network -> set members

    def add(self, table: dict, key: Any, values: set) -> None:
        table.setdefault(key, set()).update(values)

    def verify(self) -> None:
        for bridge, names in self.ports.items():
            assert links_on(bridge) == names, f"ports of {bridge}"
        for store, addresses in self.leases.items():
            assert leased(store) == addresses, f"leases in {store}"
        for network, addresses in self.masquerade.items():
            assert set(firewall.members(network)) == addresses, f"masquerade set of {network}"


class World:
    """One kind of client (CNI runtime, dockerd) and its model; `op` is one random operation."""
    counts: Counter[str]
    model: threading.Lock

    def count(self, what: str) -> None:
        with self.model:
            self.counts[what] += 1

    def op(self, runner: "Runner", rng: random.Random) -> None:
        raise NotImplementedError

    def expect(self, expected: Expected) -> None:
        raise NotImplementedError

    def inspect(self) -> None:
        """Checks of this world's own that need a pause (container addresses, traffic)."""


def checkpoint(*worlds: World) -> None:
    expected = Expected()
    for world in worlds:
        world.expect(expected)
    expected.verify()
    for world in worlds:
        world.inspect()


# --- the harness: N threads, a shared op budget, a pause with nothing in flight --------------
class Runner:
    """Runs a random world's `op` from `workers` threads until `total` ops were started or one
    failed. `pause()` lets calls in flight finish, holds every worker and resumes on exit: the
    checkpoint sees the host with no operation half done. Each worker has its own
    random.Random(seed, worker), so the mix is reproducible (the interleaving is not)."""

    def __init__(self, total: int, workers: int = WORKERS, seed: int = SEED) -> None:
        self.total, self.workers, self.seed = total, workers, seed
        self.started = 0
        self.inflight = 0
        self.paused = False
        self.cond = threading.Condition()
        self.failures: list[str] = []

    def fail(self, what: str) -> None:
        with self.cond:
            self.failures.append(what)
            self.cond.notify_all()

    def _claim(self) -> bool:
        with self.cond:
            while self.paused and not self.failures:
                self.cond.wait()
            if self.started >= self.total or self.failures:
                return False
            self.started += 1
            self.inflight += 1
            return True

    def _release(self) -> None:
        with self.cond:
            self.inflight -= 1
            self.cond.notify_all()

    def _worker(self, index: int, worlds: tuple[World, ...]) -> None:
        rng = random.Random(self.seed * 1009 + index)
        while self._claim():
            try:
                rng.choice(worlds).op(self, rng)
            except BaseException:  # noqa: BLE001 - recorded; the test fails on it
                self.fail(traceback.format_exc())
            finally:
                self._release()

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        with self.cond:
            self.paused = True
            while self.inflight:
                self.cond.wait()
        try:
            yield
        finally:
            with self.cond:
                self.paused = False
                self.cond.notify_all()

    def run(self, *worlds: World) -> float:
        """All ops, with a checkpoint paused half-way; fails the test on any failure. Returns
        the wall time in seconds."""
        started = time.monotonic()
        threads = [threading.Thread(target=self._worker, args=(i, worlds), name=f"torture-{i}", daemon=True)
                   for i in range(self.workers)]
        for t in threads:
            t.start()
        try:
            with self.cond:
                self.cond.wait_for(lambda: self.started >= self.total // 2 or bool(self.failures))
            if not self.failures:
                with self.pause():
                    checkpoint(*worlds)
            for t in threads:
                t.join()
        except BaseException:  # checkpoint failed, or the test timed out: stop the workers
            self.fail("stopped: checkpoint failed or the test was interrupted")
            for t in threads:
                t.join()
            raise
        self.raise_failures()
        return time.monotonic() - started

    def raise_failures(self) -> None:
        assert self.failures == [], f"{len(self.failures)} failures; first:\n" + self.failures[0]


# --- CNI ---------------------------------------------------------------------------------------
@dataclass
class Network:
    name: str
    bridge: str
    subnet: ipaddress.IPv4Network
    conf: dict[str, Any]
    ifname: str  # each container joins network i as eth<i>, as a runtime with two networks does
    book: AddressBook = field(default_factory=AddressBook)

    def __post_init__(self) -> None:
        self.book.claim(self.gateway, "the gateway")

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1


@dataclass
class Pair:
    ns: Netns
    container_id: str
    net: Network
    lock: threading.Lock = field(default_factory=threading.Lock)
    address: ipaddress.IPv4Interface | None = None  # set while attached

    @property
    def veth(self) -> str:
        return host_veth(self.container_id, self.net.ifname)

    @property
    def what(self) -> str:
        return f"{self.container_id}/{self.net.ifname}"


class CniWorld(World):
    """Two networks, NAMESPACES containers each attachable to both."""

    def __init__(self, tool: CniTool, spaces: list[Netns], nets: list[Network]) -> None:
        self.tool, self.nets = tool, nets
        self.pairs = [Pair(ns, f"{ns.name}c", net) for ns in spaces for net in nets]
        self.model = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.served: Counter[str] = Counter()

    def _checked(self, runner: Runner, what: str, cni_run: CniRun) -> bool:
        for call in cni_run.calls:
            match = re.search(r"served by (\S+)", call.stderr)
            self.count("served by " + (match.group(1) if match else "?"))
        if not cni_run.ok:
            runner.fail(f"{what}: {cni_run.error}\n" + "\n".join(c.summary() for c in cni_run.calls))
        return cni_run.ok

    def served_by(self) -> set[str]:
        return {k.split()[-1] for k in self.counts if k.startswith("served by ")}

    def op(self, runner: Runner, rng: random.Random) -> None:
        if rng.random() < P_GC:
            self.gc(runner, rng.choice(self.nets))
            return
        while True:  # a pair no other worker is driving
            pair = rng.choice(self.pairs)
            if pair.lock.acquire(blocking=False):
                break
        try:
            self._drive(runner, rng, pair)
        finally:
            pair.lock.release()

    def _drive(self, runner: Runner, rng: random.Random, pair: Pair) -> None:
        net = pair.net
        if pair.address is None and rng.random() >= P_DEL_DETACHED:
            self.count("ADD")
            result = self.tool.add(net.conf, pair.ns.path, container_id=pair.container_id,
                                   ifname=net.ifname, raise_on_error=False)
            if not self._checked(runner, f"ADD {pair.what}", result):
                return
            pair.address = ipaddress.ip_interface(result.result["ips"][0]["address"])
            holder = net.book.claim(pair.address.ip, pair.what)
            if holder is not None:
                runner.fail(f"duplicate address: {pair.address} given to {pair.what} while {holder} holds it")
            if pair.address.network != net.subnet:
                runner.fail(f"ADD {pair.what}: {pair.address} is not in {net.subnet}")
        elif pair.address is not None and rng.random() < P_CHECK:
            self.count("CHECK")
            self._checked(runner, f"CHECK {pair.what}", self.tool.check(
                net.conf, pair.ns.path, container_id=pair.container_id, ifname=net.ifname, raise_on_error=False))
        else:
            self.count("DEL" if pair.address is not None else "DEL detached")
            self.detach(runner, pair)

    def detach(self, runner: Runner, pair: Pair) -> None:
        if pair.address is not None:  # not held any more from the moment DEL is sent
            pair.net.book.drop(pair.address.ip)
            pair.address = None
        self._checked(runner, f"DEL {pair.what}", self.tool.delete(
            pair.net.conf, pair.ns.path, container_id=pair.container_id, ifname=pair.net.ifname,
            raise_on_error=False))

    def detach_all(self, runner: Runner) -> int:
        still = [p for p in self.pairs if p.address is not None]
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(lambda p: self.detach(runner, p), still))
        runner.raise_failures()
        return len(still)

    def gc(self, runner: Runner, net: Network) -> None:
        """GC with every attachment that exists or may be in the middle of a call as valid."""
        held, valid = [], []
        for pair in (p for p in self.pairs if p.net is net):
            if pair.lock.acquire(blocking=False):
                if pair.address is None:
                    held.append(pair)  # detached and now no ADD can start: not valid
                    continue
                pair.lock.release()
            valid.append((pair.container_id, net.ifname))
        try:
            self.count("GC")
            self._checked(runner, f"GC {net.name}", self.tool.gc(net.conf, valid, raise_on_error=False))
        finally:
            for pair in held:
                pair.lock.release()

    def live(self, net: Network) -> list[Pair]:
        return [p for p in self.pairs if p.net is net and p.address is not None]

    def expect(self, expected: Expected) -> None:
        for net in self.nets:
            live = self.live(net)
            expected.add(expected.ports, net.bridge, {p.veth for p in live})
            expected.add(expected.leases, self.tool.data_dir / net.name, {p.address.ip for p in live})
            expected.add(expected.masquerade, net.name, {p.address.ip for p in live})

    def inspect(self) -> None:
        """Each container has its address; two of them and the gateway talk."""
        for net in self.nets:
            live = self.live(net)
            for pair in live:
                assert pair.ns.addresses(net.ifname) == [str(pair.address)], pair.what
            if len(live) >= 2:
                a, b = live[:2]
                assert a.ns.ping(b.address.ip, timeout=10), f"{a.what} cannot reach {b.what}"
                assert b.ns.ping(net.gateway, timeout=10), f"{b.what} cannot reach the gateway"
        self.counts["CNI live at the checkpoint"] = sum(len(self.live(net)) for net in self.nets)

    def assert_all_gone(self) -> None:
        assert lease_files(self.tool.data_dir) == []
        assert self.tool.cached_attachments() == []
        assert not host_links() & {p.veth for p in self.pairs}
        for net in self.nets:
            assert not firewall.table_exists(net.name)
        for ns in {id(p.ns): p.ns for p in self.pairs}.values():
            assert ns.link_names() == ["lo"]


@pytest.fixture
def cni_world(netns: Callable[..., Netns], tmp_path: Path) -> Iterator[Callable[[dict[str, str]], CniWorld]]:
    """Factory: the networks, namespaces and a CniTool with the given extra environment. The
    teardown DELs whatever is still cached, drops leftover tables and deletes the bridges."""
    spaces = [netns() for _ in range(NAMESPACES)]
    bin_dir = tmp_path / "bin"
    write_launchers(str(bin_dir), sys.executable)  # what install.sh puts in /opt/cni/bin
    data_dir = register_data_dir(tmp_path / "cni-data")
    nets = []
    for i in range(2):
        name, bridge, subnet = unique_name("tn"), unique_name("tbr"), unique_subnet(4, 24)
        conf = bridge_conflist(name, bridge=bridge, subnets=str(subnet), data_dir=data_dir, plugin_type="pybridge",
                               ipam_type="pybridge-ipam", ip_masq=True, is_default_gateway=(i == 0),
                               cni_version="1.1.0")
        nets.append(Network(name, bridge, subnet, conf, f"eth{i}"))
    tools: list[CniTool] = []

    def make(env: dict[str, str]) -> CniWorld:
        tool = CniTool(tmp_path / "cni-cache", path=[str(bin_dir)], data_dir=data_dir,
                       env={"PYBRIDGE_FASTPATH_DEBUG": "1", **env})
        tools.append(tool)
        return CniWorld(tool, spaces, nets)

    yield make
    for tool in tools:
        tool.cleanup()
    for net in nets:
        firewall.delete_table(net.name, net.bridge)
        run(["ip", "link", "del", net.bridge], check=False)


def assert_host_unchanged(before: hostsnap.HostSnapshot, bridges: list[str] = ()) -> None:
    """Nothing outside this test changed, apart from `bridges` (their links, addresses, routes)."""
    after = hostsnap.snapshot()
    hostsnap.assert_unchanged(before, after, only=hostsnap.mine(), ignore=[re.escape(b) for b in bridges],
                              sections=("links", "addresses", "routes"))
    hostsnap.assert_unchanged(before, after, only=hostsnap.mine(), sections=("nft", "iptables"))


def torture_cni(world: CniWorld, total: int, served_by: str) -> None:
    before = hostsnap.snapshot()
    runner = Runner(total)
    elapsed = runner.run(world)
    left = world.detach_all(runner)
    print(f"\n{served_by}: {total} ops in {elapsed:.0f}s, {left} DELs at the end: {dict(world.counts)}")
    assert world.served_by() == {served_by}, world.counts
    world.assert_all_gone()
    for net in world.nets:
        assert links_on(net.bridge) == set()
    assert_host_unchanged(before, [net.bridge for net in world.nets])


def test_cni_in_process(cni_world: Callable[[dict[str, str]], CniWorld], tmp_path: Path) -> None:
    """Fast path off: every call a separate process doing the work itself."""
    run_dir = tmp_path / "run"
    world = cni_world({"PYBRIDGE_FASTPATH_SOCKET": "off", "PYBRIDGE_RUN_DIR": str(run_dir)})
    torture_cni(world, ops(TORTURE_OPS["in-process"], SOAK_OPS["in-process"]), "in-process")


def test_cni_daemon(cni_world: Callable[[dict[str, str]], CniWorld], fastpath_daemon: tuple[str, str]) -> None:
    """Every call forwarded to one warm daemon (threads of one process)."""
    path, run_dir = fastpath_daemon
    world = cni_world({"PYBRIDGE_FASTPATH_SOCKET": path, "PYBRIDGE_RUN_DIR": run_dir})
    torture_cni(world, ops(TORTURE_OPS["daemon"], SOAK_OPS["daemon"]), "daemon")


# --- Docker ------------------------------------------------------------------------------------
@dataclass
class DockerNet:
    nid: str
    bridge: str
    subnet: ipaddress.IPv4Network
    pool_options: dict[str, str] = field(default_factory=dict)  # --ipam-opt
    book: AddressBook = field(default_factory=AddressBook)
    pool_id: str = ""
    gateway: str = ""  # "10.x.y.1/24", as IPAM answered
    live: dict[str, dict[str, str]] = field(default_factory=dict)  # endpoint id -> endpoint
    cond: threading.Condition = field(default_factory=threading.Condition)
    users: int = 0            # ops starting or stopping endpoints on it right now
    recreating: bool = False  # `docker network rm` + `create` in progress: no endpoint ops

    def store(self, settings: Any) -> Path:
        """The lease directory of the pool (docs/docker.md: `docker-<subnet>` by default)."""
        if self.pool_options:
            return Path(self.pool_options["dataDir"]) / self.pool_options["network"]
        return settings.ipam_data_dir / ("docker-" + str(self.subnet).replace("/", "-"))


def docker_net() -> DockerNet:
    """Ids and names with the session prefix; not thread-safe (unique_name, unique_subnet)."""
    return DockerNet(unique_name("nid") + uuid.uuid4().hex[:20], unique_name("dbr"), unique_subnet(4, 24))


class DockerWorld(World):
    """dockerd's side: networks, and endpoints started and stopped on them."""

    def __init__(self, sock: Path, settings: Any, nets: list[DockerNet], spare: list[DockerNet] = (),
                 p_recreate: float = 0.0) -> None:
        self.sock, self.settings, self.nets = sock, settings, nets
        self.spare = list(spare)  # made up front, for short-lived networks
        self.p_recreate = p_recreate  # an op removes a network and creates it again
        self.churned: list[DockerNet] = []
        self.model = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.made: set[str] = set()  # every link name an endpoint had

    def call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        status, reply = plugin_call(self.sock, method, body, timeout=120)
        self.count(method)
        assert status == 200 and isinstance(reply, dict) and "Err" not in reply, f"{method} {body}: {status} {reply}"
        return reply

    def create_network(self, net: DockerNet) -> None:
        """What dockerd does for `docker network create -d pybridge --ipam-driver pybridge`."""
        net.pool_id = self.call("IpamDriver.RequestPool", {"AddressSpace": "pybridge-local", "Pool": str(net.subnet),
                                                           "SubPool": "", "Options": net.pool_options,
                                                           "V6": False})["PoolID"]
        net.gateway = self.call("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": "",
                                                              "Options": GATEWAY_OPTS})["Address"]
        net.book.claim(ipaddress.ip_interface(net.gateway).ip, "the gateway")
        self.call("NetworkDriver.CreateNetwork", {
            "NetworkID": net.nid, "Options": {"com.docker.network.generic": {"bridge": net.bridge},
                                              "com.docker.network.enable_ipv6": False},
            "IPv4Data": [{"AddressSpace": "pybridge-local", "Pool": str(net.subnet), "Gateway": net.gateway,
                          "AuxAddresses": {}}], "IPv6Data": []})

    def delete_network(self, net: DockerNet) -> None:
        self.call("NetworkDriver.DeleteNetwork", {"NetworkID": net.nid})
        gateway = ipaddress.ip_interface(net.gateway).ip
        net.book.drop(gateway)
        self.call("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": str(gateway)})
        self.call("IpamDriver.ReleasePool", {"PoolID": net.pool_id})
        net.pool_id = ""

    def op(self, runner: Runner, rng: random.Random) -> None:
        if rng.random() < P_NET_CHURN:
            with self.model:
                net = self.spare.pop() if self.spare else None
                if net is not None:
                    self.churned.append(net)
            if net is not None:
                self.churn(runner, net)
                return
        net = rng.choice(self.nets)
        if rng.random() < self.p_recreate:
            self.recreate(net)
            return
        with self.using(net):
            with self.model:  # claim an endpoint to stop, or start one
                victim = None
                if net.live and rng.random() < len(net.live) / (2 * DOCKER_LIVE):
                    victim = net.live.pop(rng.choice(sorted(net.live)))
            if victim is None:
                self.start(runner, net)
            else:
                self.stop(net, victim)

    @contextlib.contextmanager
    def using(self, net: DockerNet) -> Iterator[None]:
        with net.cond:
            net.cond.wait_for(lambda: not net.recreating)
            net.users += 1
        try:
            yield
        finally:
            with net.cond:
                net.users -= 1
                net.cond.notify_all()

    def recreate(self, net: DockerNet) -> None:
        """Stop its endpoints, `docker network rm` (the last ReleasePool of its pool), `docker
        network create` again with a new id; no endpoint op on it meanwhile."""
        with net.cond:
            net.cond.wait_for(lambda: not net.recreating)
            net.recreating = True
            net.cond.wait_for(lambda: net.users == 0)
        try:
            with self.model:
                endpoints = list(net.live.values())
                net.live.clear()
            for endpoint in endpoints:
                self.stop(net, endpoint)
            self.delete_network(net)
            net.nid = session().prefix + uuid.uuid4().hex
            self.create_network(net)
            self.count("networks re-created")
        finally:
            with net.cond:
                net.recreating = False
                net.cond.notify_all()

    def start(self, runner: Runner, net: DockerNet) -> None:
        eid = session().prefix + uuid.uuid4().hex
        address = self.call("IpamDriver.RequestAddress",
                            {"PoolID": net.pool_id, "Address": "", "Options": {}})["Address"]
        ip = ipaddress.ip_interface(address).ip
        holder = net.book.claim(ip, f"endpoint {eid[:16]}")
        if holder is not None:
            runner.fail(f"duplicate address {address} given to endpoint {eid[:16]} while {holder} holds it")
        self.call("NetworkDriver.CreateEndpoint", {
            "NetworkID": net.nid, "EndpointID": eid, "Options": {},
            "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": ""}})
        join = self.call("NetworkDriver.Join", {"NetworkID": net.nid, "EndpointID": eid,
                                                "SandboxKey": f"/var/run/docker/netns/{eid[:12]}", "Options": {}})
        assert join["Gateway"] == str(ipaddress.ip_interface(net.gateway).ip), join
        info = self.call("NetworkDriver.EndpointOperInfo", {"NetworkID": net.nid, "EndpointID": eid})["Value"]
        with self.model:
            net.live[eid] = {"ip": str(ip), "eid": eid, "veth": info["hostIfname"], "src": info["srcName"]}
            self.made.update((info["hostIfname"], info["srcName"]))

    def stop(self, net: DockerNet, endpoint: dict[str, str]) -> None:
        self.call("NetworkDriver.Leave", {"NetworkID": net.nid, "EndpointID": endpoint["eid"]})
        self.call("NetworkDriver.DeleteEndpoint", {"NetworkID": net.nid, "EndpointID": endpoint["eid"]})
        net.book.drop(ipaddress.ip_address(endpoint["ip"]))
        self.call("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": endpoint["ip"]})

    def stop_all(self) -> int:
        left = [(net, e) for net in self.nets for e in net.live.values()]
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(lambda item: self.stop(*item), left))
        for net in self.nets:
            net.live.clear()
        return len(left)

    def churn(self, runner: Runner, net: DockerNet) -> None:
        self.create_network(net)
        for _ in range(2):
            self.start(runner, net)
        for endpoint in list(net.live.values()):
            self.stop(net, endpoint)
        net.live.clear()
        self.delete_network(net)
        self.count("short-lived networks")

    def expect(self, expected: Expected) -> None:
        for net in self.nets:
            live = net.live.values()
            expected.add(expected.ports, net.bridge, {e["veth"] for e in live})
            expected.add(expected.leases, net.store(self.settings),
                         {ipaddress.ip_address(e["ip"]) for e in live} | {ipaddress.ip_interface(net.gateway).ip})
            expected.add(expected.masquerade, net.nid, {ipaddress.ip_address(e["ip"]) for e in live})

    def inspect(self) -> None:
        """The container ends wait on the host for dockerd to move them; one record each."""
        endpoints = [e for net in self.nets for e in net.live.values()]
        assert {e["src"] for e in endpoints} <= host_links()
        assert len(list((self.settings.state_dir / "endpoints").iterdir())) == len(endpoints)
        self.counts["Docker live at the checkpoint"] = len(endpoints)

    def cleanup(self) -> None:
        """After a failure: remove what is left the way dockerd would, and the bridges."""
        for net in self.nets + self.churned:
            if net.pool_id:
                with contextlib.suppress(AssertionError, OSError):
                    self.delete_network(net)
            run(["ip", "link", "del", net.bridge], check=False)

    def assert_all_gone(self) -> None:
        nets = self.nets + self.churned
        assert not host_links() & ({net.bridge for net in nets} | self.made)
        assert not any(firewall.table_exists(net.nid) for net in nets)
        for kind in ("networks", "endpoints", "pools"):
            assert list((self.settings.state_dir / kind).iterdir()) == [], kind
        assert lease_files(self.settings.ipam_data_dir) == []
        assert list(self.settings.ipam_data_dir.iterdir()) == []  # default-named stores go with their pool


def test_docker_driver(served_driver: Any) -> None:
    """libnetwork's calls for containers starting and stopping in parallel, against 3 gunicorn
    worker processes x 2 threads (state and leases shared through files and flock)."""
    sock, settings, _, start = served_driver
    start(workers=3, threads=2)
    total = ops(DOCKER_HALF_CYCLES, DOCKER_SOAK_HALF_CYCLES)
    world = DockerWorld(sock, settings, [docker_net() for _ in range(2)],
                        [docker_net() for _ in range(int(total * P_NET_CHURN * 2) + 2)])
    before = hostsnap.snapshot()
    try:
        for net in world.nets:
            world.create_network(net)
        elapsed = Runner(total).run(world)
        left = world.stop_all()
        for net in world.nets:
            world.delete_network(net)
        print(f"\ndocker: {total} half-cycles in {elapsed:.0f}s, {left} endpoints stopped at the end: "
              f"{dict(world.counts)}")
    finally:
        world.cleanup()
    world.assert_all_gone()
    assert_host_unchanged(before)


def test_cni_and_docker_share_a_bridge_and_store(cni_world: Callable[[dict[str, str]], CniWorld],
                                                  fastpath_daemon: tuple[str, str], served_driver: Any) -> None:
    """A Docker network on the first CNI network's bridge, subnet and lease store
    (`--ipam-opt network=NAME --ipam-opt dataDir=...`): CNI ADD/DEL/CHECK/GC through the daemon
    and Docker endpoints at the same time never share an address, and each side's masquerade
    set holds exactly its own containers. Now and then the Docker network is removed and created
    again (its last ReleasePool frees Docker's leftovers in the shared store) while CNI goes on."""
    path, run_dir = fastpath_daemon
    cni = cni_world({"PYBRIDGE_FASTPATH_SOCKET": path, "PYBRIDGE_RUN_DIR": run_dir})
    sock, settings, _, start = served_driver
    start(workers=2, threads=2)
    shared = cni.nets[0]
    net = DockerNet(unique_name("nid") + uuid.uuid4().hex[:20], shared.bridge, shared.subnet,
                    {"network": shared.name, "dataDir": str(cni.tool.data_dir)}, shared.book)
    docker = DockerWorld(sock, settings, [net], p_recreate=P_RECREATE)
    before = hostsnap.snapshot()
    total = ops(SHARED_OPS, SHARED_SOAK_OPS)
    try:
        docker.create_network(net)
        first = Runner(0)  # a CNI GC that lists no attachment must leave Docker's leases alone
        docker.start(first, net)
        cni.gc(first, shared)
        first.raise_failures()
        checkpoint(cni, docker)
        elapsed = Runner(total).run(cni, docker)
        left = docker.stop_all()
        del_left = cni.detach_all(Runner(0))
        print(f"\nshared: {total} ops in {elapsed:.0f}s, {left} endpoints and {del_left} attachments removed at "
              f"the end: {dict(cni.counts)} {dict(docker.counts)}")
        checkpoint(cni, docker)  # only the gateway's lease is left
        docker.delete_network(net)
    finally:
        docker.cleanup()
    assert cni.served_by() == {"daemon"}, cni.counts
    cni.assert_all_gone()
    docker.assert_all_gone()
    assert_host_unchanged(before, [net.bridge for net in cni.nets])
