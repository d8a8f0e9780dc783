"""The only place that writes packet-filter rules.

Masquerade design: one nftables table per network (`inet pybridge_<id>`) holding a set of
container addresses per family and a single masquerade rule per family that matches the set.
The rule count is therefore flat in the number of containers; ADD and DEL only add or remove a
set element. The table goes away with the network's last container.

nftables is driven through libnftables (in-process, sub-millisecond) when the shared library is
there, else through the `nft` executable with the same script. Where neither exists, masquerade
is unavailable and STATUS says so (code 50).

Hosts where Docker runs have the iptables FORWARD policy set to DROP. An accept in our own nft
table cannot override a drop in another base chain, so for networks we own we insert (and later
remove) two ACCEPT rules for the bridge into the `filter FORWARD` chain, tagged with a comment.
We never touch rules we did not create.
"""

from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from typing import Iterable, Sequence

from cni_bridge.errors import PluginError, INTERNAL, NOT_AVAILABLE

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

RULE_COMMENT_PREFIX = "pybridge:"


class NftError(Exception):
    pass


class _Nft:
    """Runs nft scripts: libnftables via ctypes when available, else `nft -f -`."""

    def __init__(self) -> None:
        self._lib = None
        self._local = threading.local()
        try:
            lib = ctypes.CDLL("libnftables.so.1")
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
            self._lib = lib
        except OSError:
            self._lib = None

    def available(self) -> bool:
        return self._lib is not None or shutil.which("nft") is not None

    def _ctx(self) -> int:
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = self._lib.nft_ctx_new(0)
            self._lib.nft_ctx_buffer_output(ctx)
            self._lib.nft_ctx_buffer_error(ctx)
            self._local.ctx = ctx
        return ctx

    def run(self, script: str) -> str:
        if self._lib is not None:
            ctx = self._ctx()
            rc = self._lib.nft_run_cmd_from_buffer(ctx, script.encode())
            out = (self._lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
            err = (self._lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
            if rc != 0:
                raise NftError(err.strip() or f"nft failed (rc {rc})")
            return out
        nft = shutil.which("nft")
        if nft is None:
            raise PluginError(NOT_AVAILABLE, "nftables is not available (no libnftables and no nft executable)")
        proc = subprocess.run([nft, "-f", "-"], input=script, capture_output=True, text=True)
        if proc.returncode != 0:
            raise NftError(proc.stderr.strip() or f"nft failed (rc {proc.returncode})")
        return proc.stdout


nft = _Nft()


def table_name(network: str) -> str:
    """nft identifiers allow [A-Za-z0-9_]; network names also allow '.' and '-'. A short hash
    of the real name keeps two names that sanitise alike apart."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", network)[:40]
    digest = hashlib.sha1(network.encode()).hexdigest()[:6]
    return f"pybridge_{safe}_{digest}"


@dataclass(frozen=True)
class Masquerade:
    """What one network's masquerade needs: its name, its bridge and its subnets."""
    network: str
    bridge: str | None
    subnets: tuple[IPNetwork, ...]

    @property
    def table(self) -> str:
        return table_name(self.network)


def _elements(addrs: Iterable[IPAddress], version: int) -> list[str]:
    return [str(a) for a in addrs if a.version == version]


def _rule_lines(m: Masquerade) -> list[str]:
    t = f"inet {m.table}"
    lines = []
    v4 = [str(s) for s in m.subnets if s.version == 4]
    v6 = [str(s) for s in m.subnets if s.version == 6]
    if v4:
        lines.append(f"add rule {t} postrouting ip saddr @masq4 ip daddr != {{ {', '.join(v4)} }} "
                     f"ip daddr != 224.0.0.0/4 masquerade")
    if v6:
        lines.append(f"add rule {t} postrouting ip6 saddr @masq6 ip6 daddr != {{ {', '.join(v6)} }} "
                     f"ip6 daddr != ff00::/8 masquerade")
    return lines


def table_exists(network: str) -> bool:
    try:
        nft.run(f"list table inet {table_name(network)}")
        return True
    except NftError:
        return False


def add_members(m: Masquerade, addrs: Sequence[IPAddress], owner: str) -> None:
    """Ensure the network's table, sets and rules exist and that `addrs` are in the sets, each
    element tagged with its owner (the attachment's host-side name) so that DEL and GC can
    remove it without knowing the address. One atomic batch; idempotent (the chain is
    rewritten in the same transaction)."""
    t = f"inet {m.table}"
    created = not table_exists(m.network)
    script = [
        f"add table {t}",
        f"add set {t} masq4 {{ type ipv4_addr; }}",
        f"add set {t} masq6 {{ type ipv6_addr; }}",
        f"add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}",
        f"flush chain {t} postrouting",
        *_rule_lines(m),
    ]
    for version, set_name in ((4, "masq4"), (6, "masq6")):
        elems = _elements(addrs, version)
        if elems:
            tagged = ", ".join(f'{e} comment "{owner}"' for e in elems)
            script.append(f"add element {t} {set_name} {{ {tagged} }}")
    try:
        nft.run("\n".join(script) + "\n")
    except NftError as exc:
        raise PluginError(INTERNAL, f"cannot install masquerade for network {m.network}", str(exc)) from None
    if created and m.bridge:
        forward_accept(m.network, m.bridge, True)


_ELEMENT_RE = re.compile(r'([0-9A-Fa-f:.]+)(?:\s+comment\s+"([^"]*)")?')


def members(network: str) -> dict[IPAddress, str]:
    """Addresses in the network's masquerade sets with their owner tags (empty when no table)."""
    t = f"inet {table_name(network)}"
    out: dict[IPAddress, str] = {}
    for set_name in ("masq4", "masq6"):
        try:
            text = nft.run(f"list set {t} {set_name}")
        except NftError:
            continue
        block = re.search(r"elements\s*=\s*\{([^}]*)\}", text, re.S)
        if block:
            for item in block.group(1).replace("\n", " ").split(","):
                match = _ELEMENT_RE.search(item.strip())
                if match:
                    out[ipaddress.ip_address(match.group(1))] = match.group(2) or ""
    return out


def remove_members(m: Masquerade, owners: Iterable[str] = (), addrs: Iterable[IPAddress] = ()) -> bool:
    """Remove the elements of the given owners (and/or addresses); delete the whole table when
    no element is left. Idempotent. Returns True when the table was removed. Callers hold the
    network lock."""
    if not table_exists(m.network):
        return False
    current = members(m.network)
    owners, addrs = set(owners), set(addrs)
    doomed = [a for a, owner in current.items() if owner in owners or (a in addrs and not owner)]
    remaining = set(current) - set(doomed)
    t = f"inet {m.table}"
    try:
        if not remaining:
            nft.run(f"delete table {t}\n")
        elif doomed:
            script = []
            for version, set_name in ((4, "masq4"), (6, "masq6")):
                elems = _elements(doomed, version)
                if elems:
                    script.append(f"delete element {t} {set_name} {{ {', '.join(elems)} }}")
            nft.run("\n".join(script) + "\n")
    except NftError as exc:
        raise PluginError(INTERNAL, f"cannot remove masquerade entries of network {m.network}", str(exc)) from None
    if not remaining and m.bridge:
        forward_accept(m.network, m.bridge, False)
    return not remaining


def delete_table(network: str, bridge: str | None) -> None:
    """Drop everything pybridge installed for a network (network removal, GC)."""
    try:
        nft.run(f"delete table inet {table_name(network)}\n")
    except NftError:
        pass
    if bridge:
        forward_accept(network, bridge, False)


def pybridge_tables() -> list[str]:
    try:
        text = nft.run("list tables inet")
    except (NftError, PluginError):
        return []
    return re.findall(r"table inet (pybridge_\S+)", text)


# --- FORWARD accept for hosts with a DROP policy (Docker) -------------------------------------
def _iptables(binary: str, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "-w", *args], capture_output=True, text=True)


def forward_accept(network: str, bridge: str, enable: bool) -> None:
    """Insert (or remove) `-i br -j ACCEPT` and `-o br -j ACCEPT` in filter/FORWARD, only when
    that chain exists. Rules carry our comment so that only ours are ever removed."""
    comment = f"{RULE_COMMENT_PREFIX}{network}"[:255]
    for binary in ("iptables", "ip6tables"):
        path = shutil.which(binary)
        if path is None:
            continue
        family = "ip" if binary == "iptables" else "ip6"
        try:  # no filter table means nobody can have set a DROP policy: add nothing
            nft.run(f"list chain {family} filter FORWARD")
        except (NftError, PluginError):
            continue
        for direction in ("-i", "-o"):
            rule = ["FORWARD", direction, bridge, "-m", "comment", "--comment", comment, "-j", "ACCEPT"]
            present = _iptables(path, ["-t", "filter", "-C", *rule]).returncode == 0
            if enable and not present:
                _iptables(path, ["-t", "filter", "-I", *rule])
            elif not enable:
                while present:
                    _iptables(path, ["-t", "filter", "-D", *rule])
                    present = _iptables(path, ["-t", "filter", "-C", *rule]).returncode == 0
