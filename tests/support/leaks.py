"""What a test session left behind on the host, and removing it.

Why: tests share the host with other sessions, and a failed or killed test can leave namespaces,
links, nft tables, iptables rules and leases behind. Everything a session makes carries its
prefix or lies in its registered subnets and IPAM dataDirs (tests.support.session), so
`find_leaks()` can list exactly that and `remove_leaks()` remove it; `sweep_stale_sessions()`
does it for sessions whose process is gone. `quick_inventory()` / `settle()` serve the per-test
attribution in tests/conftest.py.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import shlex
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tests.support.host import NETNS_DIR, ip_json, run
from tests.support.netns import kill_netns_pids
from tests.support.session import IPNetwork, current_session, foreign_patterns, session, sessions_on_host, subnet_regex

__all__ = ["KNOWN_STATE_DIRS", "Leak", "find_leaks", "lease_files", "nft_tables", "quick_inventory",
           "register_lease_detector", "remove_leaks", "settle", "sweep_stale_sessions"]

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


def nft_tables(netns: str | None = None) -> list[tuple[str, str]]:
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
    for link in ip_json("link", "show"):
        if prefix in link["ifname"] or prefix in link.get("master", ""):
            items.add(f"link {link['ifname']}")
    items |= {f"nft-table {f} {n}" for f, n in nft_tables() if prefix in n}
    return items


def _remove_netns(name: str) -> Callable[[], None]:
    def remove() -> None:
        kill_netns_pids(name)
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
    """What the session with `prefix` left behind (default: this pytest run, all its records).

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
    owned = re.compile("|".join([re.escape(prefix)] + [subnet_regex(n) for n in subnets]))
    current = current_session()
    me = current if current is not None and current.prefix == prefix else None
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

    links = ip_json("-d", "link", "show")
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

    for family, table in nft_tables():
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
            leaks.append(Leak("nft-table", f"{family} {table}", "created during this pytest run",
                              remove=_remove_nft_table(family, table)))
        elif new and not mine and foreign and not theirs:
            leaks.append(Leak("nft-table", f"{family} {table}", "created during this pytest run",
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
    current = current_session()
    me = current.prefix if current else None
    for rec in sessions_on_host():
        if rec.alive or rec.prefix == me:
            continue
        leaks = find_leaks(rec.prefix, subnets=rec.subnets, data_dirs=rec.data_dirs, names={})
        remove_leaks(leaks)
        removed.extend(leaks)
        rec.path.unlink(missing_ok=True)
    return removed
