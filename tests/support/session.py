"""This test session's share of a host that other test sessions use at the same moment.

Why: every test builds real kernel state (namespaces, bridges, veths, nft tables, leases). Each
session gets a prefix `pbt` + 4 hex chars, registered with its pid in /run/pybridge-tests; every
name a test creates comes from `unique_name()` and carries that prefix, so leftovers are
attributable and a crashed session's leftovers can be swept by the next one (tests.support.leaks).
The registry also tells each session which subnets the live others use (tests.support.subnets).
"""

from __future__ import annotations

import atexit
import dataclasses
import ipaddress
import json
import os
import re
import secrets
from pathlib import Path
from typing import Union

from tests.support.host import NETNS_DIR, ip_json, is_root

__all__ = ["IFNAMSIZ", "IPNetwork", "REGISTRY_DIR", "SessionRecord", "TestSession", "current_session",
           "foreign_patterns", "register_data_dir", "session", "sessions_on_host", "subnet_regex", "unique_name"]

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

REGISTRY_DIR = Path("/run/pybridge-tests")
PREFIX_RE = re.compile(r"^pbt[0-9a-f]{4}$")
IFNAMSIZ = 15  # kernel link names: at most 15 bytes


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
        return [re.escape(self.prefix)] + [subnet_regex(n) for n in self.subnets]


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


def subnet_regex(net: IPNetwork) -> str:
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
        names |= {link["ifname"] for link in ip_json("link", "show")}
    except (RuntimeError, OSError, ValueError):
        pass
    return names


def current_session() -> TestSession | None:
    """The process-wide session if one was created (by `session()`), else None."""
    return _session


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
        pats.extend(subnet_regex(n) for n in rec.subnets)
    return pats
