"""Snapshots of host networking state, compared before/after an operation.

Why: "DEL (or a crashed ADD) leaves nothing behind" is only provable by comparing everything a
plugin can touch: links, addresses, routes, nft and iptables rules, and its files on disk. Each
section is a list of normalised one-line facts (volatile parts such as nft handles, counters and
timers stripped; each line carries its context: table/chain, or the link's bridge), so `diff()`
is a readable list of `+`/`-` lines and needs no kernel knowledge to read.

Other test sessions may run on the same host at the same time; `diff()` by default drops
lines that name another live session's prefix or subnets, so their activity is not our diff.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tests.support.host import ip_json, run
from tests.support.session import foreign_patterns, session

__all__ = ["HostSnapshot", "LEASE_HINTS", "SECTIONS", "assert_unchanged", "diff", "mine", "snapshot"]

SECTIONS = ("links", "addresses", "routes", "nft", "iptables", "files", "sysctls")
_TEXT_LIMIT = 4096  # files up to this size are shown as text in diffs
# `diff(ignore=...)` pattern for lease-store bookkeeping that legitimately changes when an address
# is handed out and freed again (allocation cursor, bitmap cache): not state a crash may leak.
LEASE_HINTS = r"/(last_reserved\.\d+|bitmap\.\d+)( |$)"


@dataclasses.dataclass
class HostSnapshot:
    """Normalised host state; `sections[name]` is a list of one-line facts."""

    netns: str | None
    sections: dict[str, list[str]]

    def __getitem__(self, section: str) -> list[str]:
        return self.sections[section]

    def text(self) -> str:
        return "\n".join(f"[{k}]\n" + "\n".join(v) for k, v in self.sections.items())


def _in_ns(netns: str | None, argv: Sequence[str]) -> list[str]:
    return (["ip", "netns", "exec", netns] if netns else []) + list(argv)


def _links(netns: str | None) -> tuple[list[str], dict[str, str]]:
    """Lines `name kind=K master=M up|down mtu=N`, and name -> ' [master]' annotations."""
    lines, annot = [], {}
    for link in ip_json("-d", "link", "show", netns=netns):
        name = link["ifname"]
        kind = link.get("linkinfo", {}).get("info_kind", "") or "-"
        master = link.get("master", "")
        up = "up" if "UP" in link.get("flags", []) else "down"
        lines.append(f"{name} kind={kind} master={master or '-'} {up} mtu={link.get('mtu')}")
        annot[name] = f"[{master}]" if master else ""
    return sorted(lines), annot


def _addresses(netns: str | None, annot: dict[str, str]) -> list[str]:
    lines = []
    for link in ip_json("addr", "show", netns=netns):
        name = link["ifname"]
        for a in link.get("addr_info", []):
            lines.append(f"{name}{annot.get(name, '')} {a.get('family')} {a.get('local')}/{a.get('prefixlen')}"
                         f" scope={a.get('scope')}")
    return sorted(lines)


def _route_line(fam: str, r: dict[str, Any], annot: dict[str, str]) -> str:
    parts = [fam, r.get("type", "unicast"), r.get("dst", "?")]
    if r.get("gateway"):
        parts.append(f"via {r['gateway']}")
    if r.get("dev"):
        parts.append(f"dev {r['dev']}{annot.get(r['dev'], '')}")
    for key in ("protocol", "scope", "prefsrc", "metric"):
        if key in r:
            parts.append(f"{key} {r[key]}")
    for hop in r.get("nexthops", []):
        parts.append(f"nexthop via {hop.get('gateway')} dev {hop.get('dev')} weight {hop.get('weight')}")
    return " ".join(str(p) for p in parts)


def _routes(netns: str | None, annot: dict[str, str]) -> list[str]:
    lines = []
    for fam, flag in (("inet", "-4"), ("inet6", "-6")):
        for r in ip_json(flag, "route", "show", "table", "main", netns=netns):
            lines.append(_route_line(fam, r, annot))
    return sorted(lines)


_NFT_VOLATILE = [
    (re.compile(r"\s*# handle \d+"), ""),
    (re.compile(r"counter packets \d+ bytes \d+"), "counter"),
    (re.compile(r"\s+expires \S+"), ""),
    (re.compile(r"\s+packets \d+ bytes \d+"), ""),
]


def _nft_clean(line: str) -> str:
    for rx, sub in _NFT_VOLATILE:
        line = rx.sub(sub, line)
    return line.strip()


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside braces or brackets."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def normalize_nft(text: str) -> list[str]:
    """`nft list ruleset` -> lines like 'table inet t > chain c: ip saddr @s counter masquerade';
    one line per set element, handles/counters/timers removed."""
    lines: list[str] = []
    ctx: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = _nft_clean(raw)
        if pending:
            pending += " " + line
            if pending.count("{") > pending.count("}"):
                continue
            line, pending = pending, ""
        if not line:
            continue
        if line.startswith("elements = {") and line.count("{") > line.count("}"):
            pending = line
            continue
        where = " > ".join(ctx)
        if line.startswith("elements = {"):
            inner = line[len("elements = {"): line.rfind("}")]
            for el in _split_top(inner):
                lines.append(f"{where}: element {el}")
        elif line.endswith("{"):
            ctx.append(line[:-1].strip())
            lines.append(" > ".join(ctx))
        elif line == "}":
            if ctx:
                ctx.pop()
        else:
            lines.append(f"{where}: {line}")
    return lines


def _nft(netns: str | None) -> list[str]:
    if not shutil.which("nft"):
        return ["(nft not installed)"]
    proc = run(_in_ns(netns, ["nft", "list", "ruleset"]), check=False)
    if proc.returncode != 0:
        return [f"(nft list ruleset failed: {proc.stderr.strip()})"]
    return normalize_nft(proc.stdout)


def normalize_iptables_save(text: str, label: str) -> list[str]:
    """iptables-save output without comments, COMMIT and counters, each line labelled."""
    lines, table = [], "?"
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            table = line[1:]
            continue
        line = re.sub(r"^\[\d+:\d+\]\s*", "", line)
        line = re.sub(r"\s*\[\d+:\d+\]$", "", line)
        lines.append(f"{label} {table} | {line}")
    return lines


def _iptables(netns: str | None, ipv6: bool = True) -> list[str]:
    lines: list[str] = []
    tools = [("iptables-save", "ipv4")] + ([("ip6tables-save", "ipv6")] if ipv6 else [])
    for tool, label in tools:
        if not shutil.which(tool):
            lines.append(f"({tool} not installed)")
            continue
        for table in ("filter", "nat"):
            proc = run(_in_ns(netns, [tool, "-t", table]), check=False)
            if proc.returncode != 0:
                lines.append(f"({tool} -t {table} failed: {proc.stderr.strip()})")
                continue
            lines.extend(normalize_iptables_save(proc.stdout, label))
    return lines


def _describe_file(p: Path) -> str:
    try:
        if p.is_symlink():
            return f"-> {os.readlink(p)}"
        data = p.read_bytes()
    except OSError as exc:
        return f"(unreadable: {exc.strerror})"
    if len(data) <= _TEXT_LIMIT:
        try:
            return repr(data.decode())
        except UnicodeDecodeError:
            pass
    return f"{len(data)} bytes sha256={hashlib.sha256(data).hexdigest()[:16]}"


def _files(dirs: Iterable[str | os.PathLike]) -> list[str]:
    lines = []
    for d in dirs:
        root = Path(d)
        if not root.exists():
            lines.append(f"{root} (missing)")
            continue
        lines.append(f"{root}/")
        for p in sorted(root.rglob("*")):
            if p.is_dir() and not p.is_symlink():
                lines.append(f"{p}/")
            else:
                lines.append(f"{p} = {_describe_file(p)}")
    return lines


def _sysctls(netns: str | None, names: Iterable[str]) -> list[str]:
    lines = []
    for name in names:
        path = "/proc/sys/" + name.replace(".", "/")
        if netns:
            proc = run(["ip", "netns", "exec", netns, "cat", path], check=False)
            value = proc.stdout.strip() if proc.returncode == 0 else "(unreadable)"
        else:
            try:
                value = Path(path).read_text().strip()
            except OSError:
                value = "(unreadable)"
        lines.append(f"{name} = {value}")
    return lines


def snapshot(
    dirs: Iterable[str | os.PathLike] = (),
    *,
    netns: str | None = None,
    sysctls: Iterable[str] = (),
    ipv6_iptables: bool = True,
) -> HostSnapshot:
    """Capture links, addresses, routes (main table, v4+v6), nft ruleset, iptables filter/nat
    (v4+v6), the files under `dirs`, and the given sysctls — of the root namespace, or of
    `netns` (a name under /run/netns).

    Sysctls are opt-in: a plugin legitimately turns on ip_forward once and never back.
    """
    links, annot = _links(netns)
    sections = {
        "links": links,
        "addresses": _addresses(netns, annot),
        "routes": _routes(netns, annot),
        "nft": _nft(netns),
        "iptables": _iptables(netns, ipv6_iptables),
        "files": _files(dirs),
        "sysctls": _sysctls(netns, sysctls),
    }
    return HostSnapshot(netns, sections)


def mine(*extra: str | os.PathLike) -> list[str]:
    """Regexes for `diff(only=...)`: this pytest run's prefix and subnets, plus `extra` literal
    strings (e.g. a dataDir path). Lines of a prefixed bridge's ports carry `[<bridge>]`."""
    return session().owned_patterns() + [re.escape(str(x)) for x in extra]


def diff(
    a: HostSnapshot,
    b: HostSnapshot,
    *,
    ignore: Iterable[str | re.Pattern[str]] = (),
    only: Iterable[str | re.Pattern[str]] | None = None,
    ignore_foreign: bool = True,
    sections: Iterable[str] | None = None,
) -> list[str]:
    """Readable differences `"<section>: - line"` / `"<section>: + line"`; [] when equal.

    `ignore`: regexes; matching lines are dropped. `only`: if given, lines must match one of
    these (use `mine()` when other test runs may be changing the host at the same time).
    `ignore_foreign`: also drop lines naming another live test session's prefix or subnets.
    `sections`: compare only these.
    """
    pats = [re.compile(p) if isinstance(p, str) else p for p in ignore]
    keep = None if only is None else [re.compile(p) if isinstance(p, str) else p for p in only]
    if ignore_foreign and a.netns is None:
        pats.extend(re.compile(p) for p in foreign_patterns())

    def wanted(ln: str) -> bool:
        if any(p.search(ln) for p in pats):
            return False
        return keep is None or any(p.search(ln) for p in keep)

    out = []
    for sec in sections or SECTIONS:
        la = [ln for ln in a.sections.get(sec, []) if wanted(ln)]
        lb = [ln for ln in b.sections.get(sec, []) if wanted(ln)]
        ca, cb = Counter(la), Counter(lb)
        removed = ca - cb
        added = cb - ca
        for sign, lines, extra in (("-", la, removed), ("+", lb, added)):
            for ln in lines:  # keep the snapshot's order, report each surplus copy once
                if extra[ln] > 0:
                    extra[ln] -= 1
                    out.append(f"{sec}: {sign} {ln}")
    return out


def assert_unchanged(a: HostSnapshot, b: HostSnapshot, **kwargs: Any) -> None:
    """Raise AssertionError listing every difference (same options as `diff`)."""
    d = diff(a, b, **kwargs)
    if d:
        raise AssertionError("host state changed:\n  " + "\n  ".join(d))


def _main() -> None:  # pragma: no cover - a debugging aid: print the snapshot
    import sys

    print(snapshot(sys.argv[1:]).text())


if __name__ == "__main__":  # pragma: no cover
    _main()

