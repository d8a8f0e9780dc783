"""Network namespaces, unique names and subnets, the "uplink" topology, and leak checks.

Why: every integration test builds real kernel state (namespaces, bridges, veths, nft tables,
leases) on a host that other test sessions may share at the same moment. So:

* each test session gets a prefix `pbt` + 4 hex chars, registered in /run/pybridge-tests with its
  pid; every name a test creates comes from `unique_name()` and carries that prefix, so leftovers
  are attributable and a crashed session's leftovers can be swept by the next one;
* subnets come from `unique_subnet()`, chosen not to overlap any route on the host or another
  live session's subnets (bridges of concurrent sessions share the root namespace);
* `find_leaks()` lists what a session left behind and `remove_leaks()` removes it.

Everything shells out to `ip`, `nft` and `iptables` with argument lists (never a shell): no
pyroute2 import cost, and no fork-inside-asyncio surprises (pyroute2 0.9 `netns.create` forks).
"""

from __future__ import annotations

import atexit
import dataclasses
import ipaddress
import json
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

NETNS_DIR = Path("/run/netns")
REGISTRY_DIR = Path("/run/pybridge-tests")
PREFIX_RE = re.compile(r"^pbt[0-9a-f]{4}$")
ANY_PREFIX_RE = re.compile(r"pbt[0-9a-f]{4}")
IFNAMSIZ = 15  # kernel link names: at most 15 bytes
# Container subnets (bridge gateways live in the root namespace) and "outside world" subnets.
CONTAINER_POOL4 = ipaddress.ip_network("10.128.0.0/9")
OUTSIDE_POOL4 = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544 benchmarking range
# Directories where runtimes and plugins keep per-network state by default; entries whose name
# carries the session prefix are leaks (host-local's default dataDir, libcni's result cache, ...).
KNOWN_STATE_DIRS = (
    "/var/lib/cni/networks",
    "/var/lib/cni/results",
    "/var/lib/pybridge",
    "/run/pybridge",
)

__all__ = [
    "Leak",
    "Netns",
    "TestSession",
    "Uplink",
    "create_netns",
    "create_uplink",
    "find_leaks",
    "foreign_patterns",
    "is_root",
    "lease_files",
    "quick_inventory",
    "register_data_dir",
    "register_lease_detector",
    "remove_leaks",
    "run",
    "session",
    "settle",
    "sweep_stale_sessions",
    "unique_name",
    "unique_subnet",
]


def is_root() -> bool:
    return os.geteuid() == 0


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
    error: type[Exception] = RuntimeError,
) -> subprocess.CompletedProcess[str]:
    """subprocess.run with text I/O; a failure or a timeout raises `error` with a message that
    carries the command, its stdout and its stderr (stdin is empty unless `input` is given)."""
    try:
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False,
            env=None if env is None else dict(env), stdin=subprocess.DEVNULL if input is None else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise error(f"timed out after {exc.timeout}s: {shlex.join(argv)}\n"
                    f"stdout: {exc.stdout!r}\nstderr: {exc.stderr!r}") from None
    if check and proc.returncode != 0:
        raise error(
            f"command failed (exit {proc.returncode}): {shlex.join(argv)}\n"
            f"stdout: {proc.stdout.strip()[-3000:]}\nstderr: {proc.stderr.strip()[-3000:]}"
        )
    return proc


def _ip_json(*args: str, netns: str | None = None) -> list[dict[str, Any]]:
    argv = ["ip", "-j"] + (["-n", netns] if netns else []) + list(args)
    for attempt in range(5):
        try:
            out = run(argv).stdout.strip()
            break
        except RuntimeError as exc:  # a dump racing with link changes elsewhere (EINTR): again
            if "Dump was interrupted" not in str(exc) or attempt == 4:
                raise
    return json.loads(out) if out else []


# ----- the session -------------------------------------------------------------------------
def _proc_starttime(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: tells a live session from a recycled pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@dataclasses.dataclass
class TestSession:
    """This process's share of the host: a prefix, its subnets, its dataDirs, its names."""

    __test__ = False  # not a pytest test class, despite the name

    prefix: str
    pid: int = dataclasses.field(default_factory=os.getpid)
    subnets: list[IPNetwork] = dataclasses.field(default_factory=list)
    data_dirs: list[Path] = dataclasses.field(default_factory=list)
    names: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> test that made it
    baseline_nft: set[tuple[str, str]] | None = None  # (family, table) at session start
    current_test: str = ""
    v6_base: ipaddress.IPv6Network = dataclasses.field(default_factory=lambda: _random_ula48())
    registered: bool = False
    _counter: int = 0

    @property
    def registry_file(self) -> Path:
        return REGISTRY_DIR / f"{self.prefix}.json"

    def register(self) -> None:
        """Announce this session (prefix, pid, subnets) to concurrent and later sessions."""
        if not is_root():
            return
        REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
        data = {
            "prefix": self.prefix,
            "pid": self.pid,
            "starttime": _proc_starttime(self.pid),
            "subnets": [str(n) for n in self.subnets],
            "data_dirs": [str(d) for d in self.data_dirs],
        }
        tmp = self.registry_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.registry_file)
        self.registered = True

    def unregister(self) -> None:
        if self.registered:
            self.registry_file.unlink(missing_ok=True)
            self.registered = False

    def unique_name(self, kind: str = "x") -> str:
        """`<prefix><kind><n>`: fits IFNAMSIZ, valid as a netns, link, nft and CNI name."""
        kind = re.sub(r"[^a-z0-9]", "", kind.lower()) or "x"
        self._counter += 1
        n = _base36(self._counter)
        room = IFNAMSIZ - len(self.prefix) - len(n)
        if room < 1:
            raise RuntimeError("unique name space of this session is exhausted")
        name = f"{self.prefix}{kind[:room]}{n}"
        self.names[name] = self.current_test
        return name

    def owned_patterns(self) -> list[str]:
        """Regexes that mark text (rules, set elements, comments) as this session's."""
        return [re.escape(self.prefix)] + [_subnet_regex(n) for n in self.subnets]


def _random_ula48() -> ipaddress.IPv6Network:
    """fdXX:XXXX:XXXX::/48 with no all-zero group, so printed addresses keep all 4 groups."""
    while True:
        groups = ["fd" + secrets.token_hex(1), secrets.token_hex(2), secrets.token_hex(2)]
        if all(int(g, 16) for g in groups):
            return ipaddress.IPv6Network(":".join(groups) + "::/48")


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def _subnet_regex(net: IPNetwork) -> str:
    """A regex matching addresses of `net` as `ip`/`nft`/`iptables` print them (octet/group
    aligned prefixes only; /24-/8 and /64-/16 are what tests allocate)."""
    if net.version == 4:
        octets = str(net.network_address).split(".")[: max(1, net.prefixlen // 8)]
        return r"(?<![\d.])" + r"\.".join(octets) + r"\."
    groups = net.network_address.exploded.split(":")[: max(1, net.prefixlen // 16)]
    text = ":".join(g.lstrip("0") or "0" for g in groups)
    return r"(?<![0-9a-f:])" + re.escape(text) + r":"


_session: TestSession | None = None


def _names_in_use() -> set[str]:
    names = set(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else set()
    try:
        names |= {link["ifname"] for link in _ip_json("link", "show")}
    except (RuntimeError, OSError, ValueError):
        pass
    return names


def session() -> TestSession:
    """The process-wide session, created (and registered) on first use.

    `PYBRIDGE_TEST_PREFIX=pbtXXXX` forces the prefix (a test that runs an inner pytest uses it to
    know what the inner session will name things).
    """
    global _session
    if _session is None:
        forced = os.environ.get("PYBRIDGE_TEST_PREFIX", "")
        if forced:
            if not PREFIX_RE.match(forced):
                raise ValueError(f"PYBRIDGE_TEST_PREFIX must look like pbt1a2b, got {forced!r}")
            prefix = forced
        else:
            taken = _names_in_use()
            registered = {p.stem for p in REGISTRY_DIR.glob("pbt*.json")} if REGISTRY_DIR.is_dir() else set()
            while True:
                prefix = "pbt" + secrets.token_hex(2)
                if prefix not in registered and not any(prefix in n for n in taken):
                    break
        _session = TestSession(prefix=prefix)
        _session.register()
        atexit.register(_session.unregister)
    return _session


def unique_name(kind: str = "x") -> str:
    """A session-unique name of at most 15 bytes, e.g. unique_name('br') -> 'pbt1a2bbr3'."""
    return session().unique_name(kind)


def register_data_dir(path: str | os.PathLike) -> Path:
    """Have the session-end leak check look for leases under this IPAM dataDir."""
    s = session()
    p = Path(path)
    if p not in s.data_dirs:
        s.data_dirs.append(p)
        if s.registered:
            s.register()
    return p


# ----- registry of sessions ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SessionRecord:
    prefix: str
    pid: int
    alive: bool
    subnets: tuple[IPNetwork, ...]
    data_dirs: tuple[Path, ...]
    path: Path


def sessions_on_host() -> list[SessionRecord]:
    """Every registered test session, with whether its process still runs."""
    out = []
    if not REGISTRY_DIR.is_dir():
        return out
    for f in sorted(REGISTRY_DIR.glob("pbt*.json")):
        try:
            data = json.loads(f.read_text())
            pid = int(data["pid"])
            prefix = str(data["prefix"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not PREFIX_RE.match(prefix):
            continue
        start = _proc_starttime(pid)
        alive = start is not None and (data.get("starttime") in (None, start))
        nets = []
        for s in data.get("subnets", []):
            try:
                nets.append(ipaddress.ip_network(s))
            except ValueError:
                pass
        dirs = tuple(Path(d) for d in data.get("data_dirs", []))
        out.append(SessionRecord(prefix, pid, alive, tuple(nets), dirs, f))
    return out


def foreign_patterns(me: TestSession | None = None) -> list[str]:
    """Regexes for what other *live* sessions own (their prefix and subnets)."""
    me = me if me is not None else _session
    pats: list[str] = []
    for rec in sessions_on_host():
        if not rec.alive or (me is not None and rec.prefix == me.prefix):
            continue
        pats.append(re.escape(rec.prefix))
        pats.extend(_subnet_regex(n) for n in rec.subnets)
    return pats


def _routes_on_host() -> list[IPNetwork]:
    nets: list[IPNetwork] = []
    for fam in ("-4", "-6"):
        try:
            routes = _ip_json(fam, "route", "show", "table", "all")
        except (RuntimeError, ValueError):
            continue
        for r in routes:
            dst = r.get("dst", "")
            if not dst or dst == "default":
                continue
            try:
                nets.append(ipaddress.ip_network(dst, strict=False))
            except ValueError:
                pass
    return nets


def unique_subnet(version: int = 4, prefixlen: int | None = None, *, pool: str | None = None) -> IPNetwork:
    """A subnet no route on the host and no other live session uses, recorded for this session.

    IPv4 comes from 10.128.0.0/9 (or `pool`, e.g. OUTSIDE_POOL4), /24 by default; IPv6 from the
    session's random ULA /48, /64 by default.
    """
    s = session()
    if version == 4:
        base = ipaddress.ip_network(pool) if pool else CONTAINER_POOL4
        plen = prefixlen or 24
    else:
        base = ipaddress.ip_network(pool) if pool else s.v6_base
        plen = prefixlen or 64
    taken: list[IPNetwork] = list(s.subnets) + _routes_on_host()
    for rec in sessions_on_host():
        if rec.alive:
            taken.extend(rec.subnets)
    count = 2 ** (plen - base.prefixlen)
    rng = random.Random()
    for attempt in range(4096):
        # IPv6: skip subnet id 0 so the printed form never collapses the prefix into '::'.
        idx = rng.randrange(1 if version == 6 else 0, count) if attempt < 4000 else attempt % count
        net = ipaddress.ip_network((int(base.network_address) + idx * 2 ** (base.max_prefixlen - plen), plen))
        if any(net.version == t.version and net.overlaps(t) for t in taken):
            continue
        s.subnets.append(net)
        if s.registered:
            s.register()
        return net
    raise RuntimeError(f"no free /{plen} left in {base}")


# ----- namespaces --------------------------------------------------------------------------
_PING = shutil.which("ping")


@dataclasses.dataclass
class Netns:
    """A named network namespace (/run/netns/<name>) that a test owns."""

    name: str
    procs: list[subprocess.Popen] = dataclasses.field(default_factory=list, repr=False)

    @property
    def path(self) -> str:
        return str(NETNS_DIR / self.name)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def run(
        self,
        *argv: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace (`ip netns exec`, argument list, no shell)."""
        return run(["ip", "netns", "exec", self.name, *argv], check=check, input=input, timeout=timeout)

    def popen(self, *argv: str, **kwargs: Any) -> subprocess.Popen:
        """Start a background process in the namespace (servers, tcpdump); killed on delete."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        p = subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kwargs)
        self.procs.append(p)
        return p

    def ip(self, *args: str, check: bool = True) -> str:
        """`ip -n <ns> ARGS` (no exec into the namespace: faster than run('ip', ...))."""
        return run(["ip", "-n", self.name, *args], check=check).stdout

    def ip_json(self, *args: str) -> list[dict[str, Any]]:
        return _ip_json(*args, netns=self.name)

    def ping(
        self,
        addr: str | IPAddress,
        count: int = 1,
        timeout: float = 2.0,
        *,
        interval: float = 0.2,
        min_replies: int = 1,
    ) -> bool:
        """True if `addr` answers from inside this namespace before `timeout` runs out.

        Sends `count` echo requests per attempt and retries (about once a second) until at
        least `min_replies` came back in one attempt or `timeout` (plus count * interval) has
        passed; so a first packet dropped while a neighbour entry is re-resolved does not make a
        reachable address look unreachable. Uses iputils `ping` if installed, else busybox's.
        """
        wait = 1  # per attempt, seconds (both tools take whole seconds)
        per_attempt = wait + (int((count - 1) * interval + 0.999) if count > 1 else 0)
        tool = [_PING] if _PING else ["busybox", "ping"]
        argv = [*tool, "-c", str(count), "-W", str(wait), "-w", str(per_attempt)]
        if count > 1:
            argv += ["-i", str(interval)]
        give_up = time.monotonic() + max(timeout, wait) + count * interval
        while True:
            proc = self.run(*argv, str(addr), check=False, timeout=per_attempt + 10)
            # Not the exit status: with -c and -w both tools fail unless *every* reply came back.
            m = re.search(r"(\d+) (?:packets )?received", proc.stdout)
            if m and int(m.group(1)) >= min_replies:
                return True
            if time.monotonic() + 0.1 + wait > give_up:  # no room for another full attempt
                return False
            time.sleep(0.1)

    def addresses(self, ifname: str | None = None, *, family: int | None = None) -> list[str]:
        """'addr/prefixlen' strings of global-scope addresses (all links, or one)."""
        args = ["addr", "show"] + (["dev", ifname] if ifname else [])
        out = []
        for link in self.ip_json(*args):
            for a in link.get("addr_info", []):
                if a.get("scope") != "global":
                    continue
                if family == 4 and a.get("family") != "inet" or family == 6 and a.get("family") != "inet6":
                    continue
                out.append(f"{a['local']}/{a['prefixlen']}")
        return out

    def link_names(self) -> list[str]:
        return [link["ifname"] for link in self.ip_json("link", "show")]

    def pids(self) -> list[int]:
        proc = run(["ip", "netns", "pids", self.name], check=False)
        return [int(p) for p in proc.stdout.split() if p.isdigit()]

    def delete(self) -> None:
        """Kill what the test started in it, then remove the namespace (idempotent)."""
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.communicate(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
        self.procs.clear()
        if not self.exists():
            return
        _kill_netns_pids(self.name)
        run(["ip", "netns", "delete", self.name], check=False)
        if self.exists():
            raise RuntimeError(f"network namespace {self.name} could not be removed")


def _kill_netns_pids(name: str) -> None:
    """A namespace (and the veths in it) outlives `ip netns del` while a process is in it."""
    proc = run(["ip", "netns", "pids", name], check=False)
    for pid in (int(p) for p in proc.stdout.split() if p.isdigit()):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def create_netns(name: str | None = None) -> Netns:
    """A fresh namespace with `lo` up; the name defaults to a unique one."""
    ns = Netns(name or unique_name("ns"))
    run(["ip", "netns", "add", ns.name])
    try:
        run(["ip", "-n", ns.name, "link", "set", "lo", "up"])
    except Exception:
        run(["ip", "netns", "delete", ns.name], check=False)
        raise
    return ns


# ----- the uplink topology -----------------------------------------------------------------
@dataclasses.dataclass
class Uplink:
    """A stand-in for a physical NIC: `host_if` in the root namespace (use it as `master` /
    `uplink`); its peer `outside_if` lives in `outside`, a namespace playing the outside world."""

    host_if: str
    outside: Netns
    outside_if: str
    subnet: ipaddress.IPv4Network
    outside_ip: ipaddress.IPv4Address
    host_ip: ipaddress.IPv4Address | None
    subnet6: ipaddress.IPv6Network | None = None
    outside_ip6: ipaddress.IPv6Address | None = None
    host_ip6: ipaddress.IPv6Address | None = None

    def delete(self) -> None:
        run(["ip", "link", "delete", self.host_if], check=False)  # takes the peer with it
        self.outside.delete()


def create_uplink(
    outside_cidr: str | None = None,
    *,
    host_addr: bool = True,
    ipv6: bool = True,
    outside_gateway: str | None = None,
) -> Uplink:
    """Make the veth pair and the outside namespace.

    `outside_cidr` (e.g. '198.18.7.2/24') is the outside end's address; default: .2 of a fresh
    /24 from 198.18.0.0/15. With `host_addr` the root end gets .1 (the host's "public" address,
    what a masqueraded container appears as); turn it off when the uplink will be enslaved to a
    bridge. `outside_gateway` adds a default route in the outside namespace (only there).
    """
    if outside_cidr:
        iface = ipaddress.ip_interface(outside_cidr)
        subnet = iface.network
        outside_ip = iface.ip
        s = session()
        s.subnets.append(subnet)
        if s.registered:
            s.register()
    else:
        subnet = unique_subnet(4, 24, pool=str(OUTSIDE_POOL4))
        outside_ip = subnet.network_address + 2
    host_ip = subnet.network_address + 1 if host_addr else None
    if host_ip == outside_ip:
        host_ip = subnet.network_address + 2
    outside = create_netns(unique_name("out"))
    host_if = unique_name("up")
    outside_if = "ext0"
    up = Uplink(host_if, outside, outside_if, subnet, outside_ip, host_ip)
    try:
        run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", outside_if, "netns", outside.name])
        outside.ip("addr", "add", f"{outside_ip}/{subnet.prefixlen}", "dev", outside_if)
        outside.ip("link", "set", outside_if, "up")
        if host_ip is not None:
            run(["ip", "addr", "add", f"{host_ip}/{subnet.prefixlen}", "dev", host_if])
        if ipv6:
            up.subnet6 = unique_subnet(6)
            up.outside_ip6 = up.subnet6.network_address + 2
            outside.ip("addr", "add", f"{up.outside_ip6}/64", "dev", outside_if, "nodad")
            if host_addr:
                up.host_ip6 = up.subnet6.network_address + 1
                run(["ip", "addr", "add", f"{up.host_ip6}/64", "dev", host_if, "nodad"])
        if outside_gateway:
            outside.ip("route", "add", "default", "via", outside_gateway)
        run(["ip", "link", "set", host_if, "up"])
    except Exception:
        up.delete()
        raise
    return up


# ----- leak detection ----------------------------------------------------------------------
LeaseDetector = Callable[[Path], list[Path]]


def _host_local_leases(data_dir: Path) -> list[Path]:
    """host-local's format: one file per address, named by the address."""
    out = []
    if not data_dir.is_dir():
        return out
    for p in data_dir.rglob("*"):
        if p.is_file():
            try:
                ipaddress.ip_address(p.name)
            except ValueError:
                continue
            out.append(p)
    return out


def _pybridge_owner_files(data_dir: Path) -> list[Path]:
    """pybridge-ipam's per-attachment index (`owner.<cid>+<ifname>`), removed on release."""
    if not data_dir.is_dir():
        return []
    return [p for p in data_dir.glob("*/owner.*") if p.is_file()]


_lease_detectors: list[LeaseDetector] = [_host_local_leases, _pybridge_owner_files]


def register_lease_detector(fn: LeaseDetector) -> None:
    """Teach the leak check another on-disk lease format (fn(dataDir) -> lease files)."""
    if fn not in _lease_detectors:
        _lease_detectors.append(fn)


def lease_files(data_dir: str | os.PathLike) -> list[Path]:
    """Every lease file under `data_dir`, by every registered detector."""
    found: dict[Path, None] = {}
    for det in _lease_detectors:
        for p in det(Path(data_dir)):
            found[p] = None
    return sorted(found)


@dataclasses.dataclass
class Leak:
    """Something a session left behind. `remove` undoes it; None means report-only."""

    kind: str  # netns | link | nft-table | nft-content | iptables-rule | lease | state
    name: str
    detail: str = ""
    owner: str = ""  # the test that created it, when known
    remove: Callable[[], None] | None = dataclasses.field(default=None, repr=False)
    fatal: bool = True  # False: ambiguous (another session may own it): warn only

    def __str__(self) -> str:
        s = f"{self.kind} {self.name}"
        if self.detail:
            s += f" ({self.detail})"
        if self.owner:
            s += f" [from {self.owner}]"
        if not self.fatal:
            s += " [ambiguous: another test session is running; not removed]"
        return s


def _nft_tables(netns: str | None = None) -> list[tuple[str, str]]:
    argv = (["ip", "netns", "exec", netns] if netns else []) + ["nft", "-j", "list", "tables"]
    if not shutil.which("nft"):
        return []
    proc = run(argv, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    out = []
    for item in json.loads(proc.stdout).get("nftables", []):
        t = item.get("table")
        if t:
            out.append((t["family"], t["name"]))
    return out


def settle(prefix: str | None = None, baseline: set[str] | frozenset[str] = frozenset(),
           timeout: float = 3.0, stable_for: float = 0.25) -> set[str]:
    """Wait until what is prefixed beyond `baseline` is gone or stops changing; return it.

    Destroying a namespace is asynchronous in the kernel (cleanup_net): the host ends of veths
    whose peers were inside can outlive `ip netns delete` by some milliseconds.
    """
    deadline = time.monotonic() + timeout
    current = quick_inventory(prefix) - set(baseline)
    while current and time.monotonic() < deadline:
        time.sleep(stable_for)
        again = quick_inventory(prefix) - set(baseline)
        if again == current:
            break
        current = again
    return current


def quick_inventory(prefix: str | None = None) -> set[str]:
    """Cheap listing of prefixed namespaces, root links and nft tables (per-test attribution)."""
    prefix = prefix or session().prefix
    items = set()
    if NETNS_DIR.is_dir():
        items |= {f"netns {n}" for n in os.listdir(NETNS_DIR) if prefix in n}
    for link in _ip_json("link", "show"):
        if prefix in link["ifname"] or prefix in link.get("master", ""):
            items.add(f"link {link['ifname']}")
    items |= {f"nft-table {f} {n}" for f, n in _nft_tables() if prefix in n}
    return items


def _remove_netns(name: str) -> Callable[[], None]:
    def remove() -> None:
        _kill_netns_pids(name)
        run(["ip", "netns", "delete", name], check=False)
    return remove


def _remove_link(name: str) -> Callable[[], None]:
    def remove() -> None:
        run(["ip", "link", "delete", name], check=False)
    return remove


def _remove_nft_table(family: str, name: str) -> Callable[[], None]:
    def remove() -> None:
        run(["nft", "delete", "table", family, name], check=False)
    return remove


def _remove_path(p: Path) -> Callable[[], None]:
    def remove() -> None:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return remove


def _iptables_leaks(owned: re.Pattern[str]) -> list[Leak]:
    """Rules whose text names our prefix or subnets (e.g. the Go bridge's ipMasq rules and
    their CNI-xxxx chains, portmap's DNAT rules)."""
    leaks: list[Leak] = []
    for save, cmd in (("iptables-save", "iptables"), ("ip6tables-save", "ip6tables")):
        if not shutil.which(save):
            continue
        for table in ("nat", "filter", "mangle"):
            proc = run([save, "-t", table], check=False)
            if proc.returncode != 0:
                continue
            rules = [ln for ln in proc.stdout.splitlines() if ln.startswith("-A ")]
            ours = [ln for ln in rules if owned.search(ln)]
            if not ours:
                continue
            targets: set[str] = set()
            for ln in ours:
                argv = shlex.split(ln)
                for flag in ("-j", "-g"):
                    if flag in argv:
                        targets.add(argv[argv.index(flag) + 1])

            def remove(cmd: str = cmd, table: str = table, ours: list[str] = ours,
                       targets: set[str] = targets) -> None:
                for ln in ours:
                    argv = shlex.split(ln)
                    run([cmd, "-w", "-t", table, "-D", *argv[1:]], check=False)
                builtin = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}
                for chain in sorted(targets - builtin):
                    saved = run([save, "-t", table], check=False).stdout
                    if re.search(rf"(-j|-g) {re.escape(chain)}(\s|$)", saved):
                        continue  # still referenced by someone else's rule
                    if f":{chain} " not in saved:
                        continue  # a target like MASQUERADE, or already gone
                    run([cmd, "-w", "-t", table, "-F", chain], check=False)
                    run([cmd, "-w", "-t", table, "-X", chain], check=False)

            leaks.append(Leak("iptables-rule", f"{cmd} -t {table}", "; ".join(ours)[:500], remove=remove))
    return leaks


def find_leaks(
    prefix: str | None = None,
    *,
    subnets: Iterable[IPNetwork] = (),
    data_dirs: Iterable[Path] = (),
    baseline_nft: set[tuple[str, str]] | None = None,
    names: dict[str, str] | None = None,
) -> list[Leak]:
    """What the session with `prefix` left behind (default: this session, all its records).

    Looks at: namespaces and root links whose name has the prefix, links enslaved to such a
    bridge (plugin-named veths), nft tables with the prefix in their name, `pybridge*` nft tables
    that were not there at session start (`baseline_nft`), iptables rules naming the prefix or the
    subnets, lease files under `data_dirs`, and prefixed entries in KNOWN_STATE_DIRS.
    """
    if prefix is None:
        s = session()
        prefix, subnets, data_dirs = s.prefix, s.subnets, s.data_dirs
        baseline_nft = s.baseline_nft if baseline_nft is None else baseline_nft
        names = s.names if names is None else names
    names = names or {}
    subnets = list(subnets)
    owned = re.compile("|".join([re.escape(prefix)] + [_subnet_regex(n) for n in subnets]))
    me = _session if _session is not None and _session.prefix == prefix else None
    foreign = foreign_patterns(me) if me is not None else [
        re.escape(r.prefix) for r in sessions_on_host() if r.alive and r.prefix != prefix]
    foreign_re = re.compile("|".join(foreign)) if foreign else None
    leaks: list[Leak] = []

    def owner(name: str) -> str:
        for n, test in names.items():
            if n in name:
                return test
        return ""

    if NETNS_DIR.is_dir():
        for n in sorted(os.listdir(NETNS_DIR)):
            if prefix in n:
                leaks.append(Leak("netns", n, owner=owner(n), remove=_remove_netns(n)))

    links = _ip_json("-d", "link", "show")
    prefixed = {link["ifname"] for link in links if prefix in link["ifname"]}
    slaves = [link for link in links if link.get("master") in prefixed and link["ifname"] not in prefixed]
    for link in slaves:  # first, so deleting the bridge cannot orphan them unnoticed
        leaks.append(Leak("link", link["ifname"], f"enslaved to {link['master']}",
                          owner=owner(link["master"]), remove=_remove_link(link["ifname"])))
    for link in links:
        if link["ifname"] in prefixed:
            kind = link.get("linkinfo", {}).get("info_kind", "")
            leaks.append(Leak("link", link["ifname"], kind, owner=owner(link["ifname"]),
                              remove=_remove_link(link["ifname"])))

    for family, table in _nft_tables():
        if prefix in table:
            leaks.append(Leak("nft-table", f"{family} {table}", owner=owner(table),
                              remove=_remove_nft_table(family, table)))
            continue
        if not table.startswith("pybridge"):
            continue
        body = run(["nft", "list", "table", family, table], check=False).stdout
        new = baseline_nft is not None and (family, table) not in baseline_nft
        mine = bool(owned.search(body))
        theirs = bool(foreign_re and foreign_re.search(body))
        if new and not theirs and (mine or not foreign):
            leaks.append(Leak("nft-table", f"{family} {table}", "created during this session",
                              remove=_remove_nft_table(family, table)))
        elif new and not mine and foreign and not theirs:
            leaks.append(Leak("nft-table", f"{family} {table}", "created during this session",
                              fatal=False))
        elif mine:
            lines = [ln.strip() for ln in body.splitlines() if owned.search(ln)]
            leaks.append(Leak("nft-content", f"{family} {table}", "; ".join(lines)[:500]))

    leaks.extend(_iptables_leaks(owned))

    for d in data_dirs:
        for p in lease_files(d):
            leaks.append(Leak("lease", str(p), " ".join(p.read_text(errors="replace").split())[:100],
                              remove=_remove_path(p)))
    for root in KNOWN_STATE_DIRS:
        rp = Path(root)
        if rp.is_dir():
            for p in sorted(rp.iterdir()):
                if prefix in p.name:
                    leaks.append(Leak("state", str(p), owner=owner(p.name), remove=_remove_path(p)))
    return leaks


def remove_leaks(leaks: Iterable[Leak]) -> list[str]:
    """Remove what can be removed, in the order found; returns errors (never raises)."""
    errors = []
    for leak in leaks:
        if leak.remove is None or not leak.fatal:
            continue
        try:
            leak.remove()
        except Exception as exc:  # noqa: BLE001 - cleanup must go on
            errors.append(f"{leak}: {exc}")
    return errors


def sweep_stale_sessions() -> list[Leak]:
    """Remove leftovers of registered sessions whose process is gone (killed, crashed runs)."""
    removed: list[Leak] = []
    me = _session.prefix if _session else None
    for rec in sessions_on_host():
        if rec.alive or rec.prefix == me:
            continue
        leaks = find_leaks(rec.prefix, subnets=rec.subnets, data_dirs=rec.data_dirs, names={})
        remove_leaks(leaks)
        removed.extend(leaks)
        rec.path.unlink(missing_ok=True)
    return removed


def wait_for(pred: Callable[[], bool], timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Poll `pred` until true or `timeout`; for kernel state that settles asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
