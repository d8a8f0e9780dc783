"""Published ports: DNAT from a host port to a container's port, for `docker run -p` and the
CNI `portMappings` capability.

One nftables table that every pybridge network shares, `inet pybridge_ports`, because a host
port is a host-wide resource. The rule count is fixed; every mapping is a map element, so a
lookup (and an ADD) costs the same with 1 or 1,000 ports:

    map any4 / any6        proto . host port : addr . port      bound to every local address
    map host4 / 6          host addr . proto . host port : ...  bound to one host address
    set taken4 / taken6    proto . host port                    who holds the port in the family:
                           comment "<owner>" (a wildcard binding) or "*<n>" (n bindings to
                           single host addresses)
    set hairpin4 / 6       subnet . bridge                      networks the table serves
    set localnet           bridge                               ditto; route_localnet=1 set by us

    prerouting (dstnat) and output (-100): `fib daddr type local` -> pub (traffic to one of the
    host's own addresses only, never traffic passing through to another machine)
    pub: dnat through host4, then any4 (host6, any6)
    postrouting (srcnat): masquerade DNATed connections
      - from a subnet back into its own bridge (hairpin: a container reaching its own network
        through the host's address; without it the reply would bypass the host's conntrack),
      - from 127.0.0.0/8 (the host's `curl 127.0.0.1:port`; the container cannot answer
        127.0.0.1 itself). Routing such a packet out of a bridge needs route_localnet on it.
    guard (input filter): drops new connections to 127.0.0.0/8 that arrive on anything but lo,
      which route_localnet would otherwise let a neighbour open (CVE-2020-8558).

Traffic from outside is only DNATed, never SNATed: the container sees the real client address.
IPv6 has no route_localnet: `[::1]:port` cannot be DNATed to a container and is refused.

Who may hold a port (per family and protocol, as sockets on one host): one owner per (host
address, port); a wildcard binding (every address: 0.0.0.0, ::, or none given) excludes every
other binding of the port, and a binding to one address excludes a wildcard one. Every writer
holds the host-wide lock `LOCK`, so the check (keyed reads of the maps and of `taken`) and the
write (one transaction) cannot interleave with another publisher's.

Owners are "<network>/<host veth name>" (`owner_tag`), so that DEL and GC can remove one
attachment's mappings without knowing them, and GC of one network leaves the others alone.

Life of the table: created by the first publish on the host; a network's entries (hairpin,
localnet, route_localnet) come with its first publish, the localnet element tagged with a hash
of the subnets its hairpin entries hold. A publish whose network is tagged with its subnets is
keyed reads plus one raw nfnetlink batch (`kernel/nfnetlink.py`: ~0.05 ms, no libnftables
parse); an unpublish removes map elements the same way, so the next container of the network
publishes without a script. A network's entries go with the network (`release_network`: its
last member left; DeleteNetwork, GC), and the table when it then holds nothing: no mapping and
no other network's entries. Creating and deleting the table is a libnftables script each
(~0.4 / ~0.2 ms, the base chains' hooks); the slow path (no table, untagged network, no
nfnetlink) writes the same elements in nft syntax.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

from cni_bridge.errors import INTERNAL, PluginError, config_error
from cni_bridge.firewall.names import SHARED_TABLES
from cni_bridge.kernel.nfnetlink import ElementOp, SetElements, concat_key, ifname_key
from cni_bridge.kernel.nft import NftError, nft
from cni_bridge.kernel.nlsock import NetlinkError
from cni_bridge.kernel.sysctl import set_route_localnet
from cni_bridge.locks import network_lock

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

TABLE = SHARED_TABLES[0]
_T = f"inet {TABLE}"
LOCK = "pybridge.ports"  # network_lock name of the table (serialises check-and-write)
PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}
EPHEMERAL_FALLBACK = (32768, 60999)
SPECIFIC = "*"  # `taken` comment prefix: "*<n>", n bindings of the port to single host addresses


@dataclass(frozen=True)
class PortMapping:
    """One published port. `host_port` 0: any free port of the ephemeral range; `host_port_end`
    above `host_port`: any free port of that range (Docker's `-p 8080-8090:80`). `publish`
    returns the mappings with the port it chose."""
    protocol: str
    host_port: int
    container_ip: IPAddress
    container_port: int
    host_ip: IPAddress | None = None   # None: every local address of the container's family
    host_port_end: int = 0

    @property
    def version(self) -> int:
        return self.container_ip.version

    def describe_host(self) -> str:
        """`127.0.0.1:8080/tcp`, `[2001:db8::1]:8080/tcp`, `8080/tcp (IPv4)` for a wildcard."""
        if self.host_ip is None:
            return f"{self.host_port}/{self.protocol} (IPv{self.version})"
        host = f"[{self.host_ip}]" if self.version == 6 else str(self.host_ip)
        return f"{host}:{self.host_port}/{self.protocol}"

    def describe(self) -> str:
        host = "" if self.host_ip is None else (f"[{self.host_ip}]:" if self.version == 6 else f"{self.host_ip}:")
        return f"{host}{self.host_port}/{self.protocol} -> {self.container_ip}:{self.container_port}"


def owner_tag(network: str, host_ifname: str) -> str:
    return f"{network}/{host_ifname}"[:127]


def check_mapping(m: PortMapping) -> PortMapping:
    """Validate one mapping's values (front ends parse their wire format into PortMapping)."""
    if m.protocol not in PROTOCOLS:
        raise config_error(f"port mapping protocol must be one of {', '.join(PROTOCOLS)}, got {m.protocol!r}")
    for what, port, low in (("host port", m.host_port, 0), ("container port", m.container_port, 1)):
        if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 65535:
            raise config_error(f"port mapping {what} must be an integer from {low} to 65535, got {port!r}")
    if m.host_port_end and not m.host_port <= m.host_port_end <= 65535:
        raise config_error(f"port mapping host port range {m.host_port}-{m.host_port_end} is invalid")
    if m.host_ip is not None:
        if m.host_ip.version != m.version:
            raise config_error(f"host address {m.host_ip} and container address {m.container_ip} "
                               "are of different IP versions")
        if m.host_ip.is_unspecified:
            return replace(m, host_ip=None)
        if m.host_ip.version == 6 and m.host_ip.is_loopback:
            raise config_error("publishing on [::1] is not supported (IPv6 has no route_localnet); "
                               "publish on :: or a global address")
    return m


# --- the table -----------------------------------------------------------------------------------
def _table_script() -> str:
    """The whole table; `add` is idempotent, the chains are flushed and rewritten."""
    l4 = "meta l4proto { tcp, udp, sctp }"
    return "\n".join([
        f"add table {_T}",
        f"add set {_T} taken4 {{ type inet_proto . inet_service; }}",
        f"add set {_T} taken6 {{ type inet_proto . inet_service; }}",
        f"add map {_T} any4 {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}",
        f"add map {_T} any6 {{ type inet_proto . inet_service : ipv6_addr . inet_service; }}",
        f"add map {_T} host4 {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}",
        f"add map {_T} host6 {{ type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; }}",
        f"add set {_T} hairpin4 {{ type ipv4_addr . ifname; flags interval; }}",
        f"add set {_T} hairpin6 {{ type ipv6_addr . ifname; flags interval; }}",
        f"add set {_T} localnet {{ type ifname; }}",
        f"add chain {_T} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}",
        f"add chain {_T} output {{ type nat hook output priority -100; policy accept; }}",
        f"add chain {_T} pub",
        f"add chain {_T} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}",
        f"add chain {_T} guard {{ type filter hook input priority filter; policy accept; }}",
        *(f"flush chain {_T} {c}" for c in ("prerouting", "output", "pub", "postrouting", "guard")),
        f"add rule {_T} prerouting fib daddr type local jump pub",
        f"add rule {_T} output fib daddr type local jump pub",
        f"add rule {_T} pub {l4} dnat ip to ip daddr . meta l4proto . th dport map @host4",
        f"add rule {_T} pub {l4} dnat ip to meta l4proto . th dport map @any4",
        f"add rule {_T} pub {l4} dnat ip6 to ip6 daddr . meta l4proto . th dport map @host6",
        f"add rule {_T} pub {l4} dnat ip6 to meta l4proto . th dport map @any6",
        f"add rule {_T} postrouting ct status dnat ip saddr . oifname @hairpin4 masquerade",
        f"add rule {_T} postrouting ct status dnat ip6 saddr . oifname @hairpin6 masquerade",
        f"add rule {_T} postrouting ct status dnat ip saddr 127.0.0.0/8 masquerade",
        f'add rule {_T} guard iifname != "lo" ip daddr 127.0.0.0/8 ct state new drop',
    ]) + "\n"


def _listing() -> dict[str, list]:
    """Every set's elements, by set name (empty when there is no table). One listing: each
    costs a full fetch of the table's elements."""
    try:
        text = nft.run(f"list table {_T}", json=True)
    except NftError:
        return {}
    out: dict[str, list] = {}
    for item in json.loads(text).get("nftables", []):
        body = item.get("set") or item.get("map")
        if body and body.get("table") == TABLE:
            out[body["name"]] = body.get("elem", [])
    return out


def _parse_key(raw: object) -> tuple[list, str]:
    """(concat values, comment) of one element's key as libnftables' JSON shows it."""
    comment = ""
    if isinstance(raw, dict) and "elem" in raw:
        comment = raw["elem"].get("comment", "")
        raw = raw["elem"]["val"]
    values = list(raw["concat"]) if isinstance(raw, dict) and "concat" in raw else [raw]
    return values, comment


def _protocol(value: object) -> str:
    """libnftables shows inet_proto values by name; a number for one it cannot name."""
    if isinstance(value, str):
        return value
    return {v: k for k, v in PROTOCOLS.items()}.get(value, str(value))


def _mappings(listing: dict[str, list]) -> list[tuple[str, PortMapping]]:
    """(owner, mapping) of every element of the four maps."""
    out = []
    for version in (4, 6):
        for name, with_ip in ((f"any{version}", False), (f"host{version}", True)):
            for key, value in listing.get(name, []):
                parts, owner = _parse_key(key)
                host_ip = ipaddress.ip_address(parts.pop(0)) if with_ip else None
                target = value["concat"]
                out.append((owner, PortMapping(_protocol(parts[0]), int(parts[1]), ipaddress.ip_address(target[0]),
                                               int(target[1]), host_ip)))
    return out


def published(owner_prefix: str = "") -> list[tuple[str, PortMapping]]:
    """(owner, mapping) of every published port, or of the owners starting with `owner_prefix`."""
    return [(o, m) for o, m in _mappings(_listing()) if o.startswith(owner_prefix)]


# --- publish / unpublish -------------------------------------------------------------------------
def ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return EPHEMERAL_FALLBACK


def _port_key(m: PortMapping) -> bytes:
    """`proto . host port` as the kernel stores it (taken and any maps)."""
    return concat_key(bytes([PROTOCOLS[m.protocol]]), m.host_port.to_bytes(2, "big"))


def _host_key(m: PortMapping) -> bytes:
    return concat_key(m.host_ip.packed, bytes([PROTOCOLS[m.protocol]]), m.host_port.to_bytes(2, "big"))


@dataclass(frozen=True)
class _Write:
    """One element write, sent as raw nfnetlink (`op`, ~0.05 ms a batch) or, on the slow path
    (no table yet, no nfnetlink), as nft syntax (`nft`) in a libnftables script."""
    add: bool
    set_name: str
    key_text: str
    key: bytes
    data_text: str = ""
    data: bytes | None = None
    comment: str = ""

    def nft(self) -> str:
        if not self.add:
            return f"delete element {_T} {self.set_name} {{ {self.key_text} }}"
        comment = f' comment "{self.comment}"' if self.comment else ""
        data = f" : {self.data_text}" if self.data_text else ""
        return f"create element {_T} {self.set_name} {{ {self.key_text}{comment}{data} }}"

    def op(self) -> ElementOp:
        return ElementOp(self.add, self.set_name, self.key, self.data, self.comment)


def _map_write(m: PortMapping, owner: str, add: bool) -> _Write:
    """The mapping's element of any4/6 (wildcard) or host4/6 (one host address)."""
    port = f"{m.protocol} . {m.host_port}"
    if m.host_ip is None:
        name, key_text, key = f"any{m.version}", port, _port_key(m)
    else:
        name, key_text, key = f"host{m.version}", f"{m.host_ip} . {port}", _host_key(m)
    if not add:
        return _Write(False, name, key_text, key)
    data = concat_key(m.container_ip.packed, m.container_port.to_bytes(2, "big"))
    return _Write(True, name, key_text, key, f"{m.container_ip} . {m.container_port}", data, owner)


def _taken_writes(m: PortMapping, old: str | None, new: str | None) -> list[_Write]:
    """Replace the port's `taken` element (delete and create in the same transaction)."""
    if old == new:
        return []
    key_text, key = f"{m.protocol} . {m.host_port}", _port_key(m)
    out = [] if old is None else [_Write(False, f"taken{m.version}", key_text, key)]
    return out + ([] if new is None else [_Write(True, f"taken{m.version}", key_text, key, comment=new)])


def _subnets_tag(subnets: Iterable[IPNetwork]) -> str:
    """The localnet element's comment: the subnets the network's hairpin entries hold, so that
    a publish with these subnets needs no libnftables script and `release_network` needs no
    listing; a hash when they do not fit in a comment."""
    text = ",".join(sorted(set(map(str, subnets))))
    return text if len(text) <= 120 else "n:" + hashlib.sha1(text.encode()).hexdigest()[:16]


def _tagged(tag: str | None) -> set[str] | None:
    """The subnets a localnet tag names (None: no element; a hash names none)."""
    if tag is None or tag.startswith("n:"):
        return None
    return set(filter(None, tag.split(",")))


def _specifics(comment: str | None) -> int:
    """The number of single-address bindings a `taken` comment counts (0: none, or a wildcard)."""
    if comment and comment.startswith(SPECIFIC):
        try:
            return int(comment[len(SPECIFIC):])
        except ValueError:
            return 0
    return 0


class _Holders:
    """Who holds what, for the mappings of one request: keyed reads of the kernel's sets (flat
    cost), or a listing (`_ListedHolders`). `note` records a write of the same request, so
    that its later mappings see it."""

    def __init__(self, nl: SetElements) -> None:
        self.nl = nl
        self._cache: dict[tuple, str | None] = {}

    def _read(self, set_name: str, key: bytes) -> str | None:
        if (set_name, key) not in self._cache:
            self._cache[(set_name, key)] = self.nl.key_owner(set_name, key)
        return self._cache[(set_name, key)]

    def wildcard(self, m: PortMapping) -> str | None:
        return self._read(f"any{m.version}", _port_key(m))

    def specific(self, m: PortMapping) -> str | None:
        return self._read(f"host{m.version}", _host_key(m))

    def taken(self, m: PortMapping) -> str | None:
        return self._read(f"taken{m.version}", _port_key(m))

    def note(self, m: PortMapping, owner: str | None, taken: str | None) -> None:
        if m.host_ip is None:
            self._cache[(f"any{m.version}", _port_key(m))] = owner
        else:
            self._cache[(f"host{m.version}", _host_key(m))] = owner
        self._cache[(f"taken{m.version}", _port_key(m))] = taken


class _ListedHolders(_Holders):
    """The same answers from one listing of the table (no nfnetlink, or a search for a free port)."""

    def __init__(self, listing: dict[str, list]) -> None:
        super().__init__(None)  # type: ignore[arg-type]
        for owner, m in _mappings(listing):
            if m.host_ip is None:
                self._cache[(f"any{m.version}", _port_key(m))] = owner
            else:
                self._cache[(f"host{m.version}", _host_key(m))] = owner
        for version in (4, 6):
            for raw in listing.get(f"taken{version}", []):
                parts, comment = _parse_key(raw)
                key = PortMapping(_protocol(parts[0]), int(parts[1]), _ANY[version], 1)
                self._cache[(f"taken{version}", _port_key(key))] = comment

    def _read(self, set_name: str, key: bytes) -> str | None:
        return self._cache.get((set_name, key))


_ANY = {4: ipaddress.ip_address("0.0.0.0"), 6: ipaddress.ip_address("::")}


def _conflict(holders: _Holders, m: PortMapping, owner: str) -> str | None:
    """Who keeps `owner` from publishing `m` ("" when it is free or already `owner`'s)."""
    wildcard = holders.wildcard(m)
    if m.host_ip is None:
        if wildcard not in (None, owner):
            return _who(wildcard)
        taken = holders.taken(m)
        if _specifics(taken):
            return "bindings to single host addresses"
        return None if taken in (None, owner) else _who(taken)
    specific = holders.specific(m)
    if specific not in (None, owner):
        return _who(specific)
    if wildcard is not None:
        return _who(wildcard) + " on every host address"
    taken = holders.taken(m)
    return None if taken is None or _specifics(taken) else _who(taken) + " on every host address"


def _who(owner: str) -> str:
    network, _, attachment = owner.partition("/")
    return f"pybridge network {network[:20]} (attachment {attachment})"


def _choose_ports(mappings: Sequence[PortMapping], owner: str) -> list[PortMapping]:
    """Give every mapping that asks for "any port" (0, or a range) a free one. A port chosen
    for a (protocol, container port) is reused for its other addresses (v4 and v6 alike)."""
    if all(m.host_port and not m.host_port_end > m.host_port for m in mappings):
        return list(mappings)
    holders = _ListedHolders(_listing())
    chosen: dict[tuple[str, int, int, int], int] = {}
    out = []
    for m in mappings:
        if m.host_port and not m.host_port_end > m.host_port:
            out.append(m)
            _note_published(holders, m, owner)
            continue
        request = (m.protocol, m.container_port, m.host_port, m.host_port_end)
        low, high = (m.host_port, m.host_port_end) if m.host_port else ephemeral_range()
        candidates = [chosen[request]] if request in chosen else []
        start = low + int.from_bytes(os.urandom(2), "big") % (high - low + 1) if not m.host_port else low
        candidates += [*range(start, high + 1), *range(low, start)]
        for port in candidates:
            if _conflict(holders, replace(m, host_port=port, host_port_end=0), owner) is None:
                break
        else:
            raise PluginError(INTERNAL, f"no free host port for {m.protocol} in {low}-{high}")
        chosen[request] = port
        m = replace(m, host_port=port, host_port_end=0)
        _note_published(holders, m, owner)
        out.append(m)
    return out


def _note_published(holders: _Holders, m: PortMapping, owner: str) -> None:
    taken = holders.taken(m)
    holders.note(m, owner, owner if m.host_ip is None else f"{SPECIFIC}{_specifics(taken) + 1}")


def publish(owner: str, bridge: str | None, subnets: Iterable[IPNetwork],
            mappings: Sequence[PortMapping]) -> list[PortMapping]:
    """Publish `mappings` for `owner` in one atomic transaction: either all of them or none
    (a host port held by another owner is a clear error, and nothing is changed). Idempotent
    for the same owner. Returns the mappings with their chosen host ports. (A container that
    reaches its own published port also needs hairpin mode on its bridge port, under
    br_netfilter: the mode sets it, see modes/bridge.py `publish`.)"""
    mappings = [check_mapping(m) for m in mappings]
    if not mappings:
        return []
    subnets = list(subnets)
    tag = _subnets_tag(subnets)
    with network_lock(LOCK):
        mappings = _choose_ports(mappings, owner)
        _refuse_duplicates(mappings)
        exists, writes = True, None
        try:  # fast path: the table and the network's entries exist: keyed reads, one raw batch
            with SetElements(TABLE) as nl:
                writes = _publish_writes(_Holders(nl), owner, mappings)
                old = nl.key_owner("localnet", ifname_key(bridge)) if bridge else None
                if not bridge or old is not None and (old == tag or {str(n) for n in subnets} <= (_tagged(old) or set())):
                    if writes:
                        nl.write_batch([w.op() for w in writes])
                    return mappings
                if _tagged(old) is not None:  # more subnets: the tag names all of them
                    tag = _subnets_tag([*subnets, *map(ipaddress.ip_network, _tagged(old))])
                exists = nl.has_set("taken4")
        except (NetlinkError, OSError):  # no table yet, no nfnetlink (a seccomp profile), a race
            writes = None
        if writes is None:  # keyed reads were refused: one listing instead
            writes = _publish_writes(_ListedHolders(_listing() if exists else {}), owner, mappings)
        script = "\n".join(_network_lines(bridge, subnets, tag, exists) + [w.nft() for w in writes]) + "\n"
        try:
            _run_creating_table(script if exists else _table_script() + script)
        except NftError as exc:
            raise PluginError(INTERNAL, "cannot publish ports", str(exc)) from None
    if bridge:
        set_route_localnet(bridge, True)
    return mappings


def _network_lines(bridge: str | None, subnets: Sequence[IPNetwork], tag: str, exists: bool) -> list[str]:
    """The network's entries: its subnets for the hairpin masquerade (idempotent adds), its
    bridge in localnet, tagged with the subnets (replaced in a table that `exists`: add,
    delete, add)."""
    if not bridge:
        return []
    lines = [f'add element {_T} hairpin{net.version} {{ {net} . "{bridge}" }}' for net in subnets]
    if exists:
        lines += [f'add element {_T} localnet {{ "{bridge}" }}', f'delete element {_T} localnet {{ "{bridge}" }}']
    return lines + [f'add element {_T} localnet {{ "{bridge}" comment "{tag}" }}']


def _publish_writes(holders: _Holders, owner: str, mappings: Sequence[PortMapping]) -> list[_Write]:
    """The element writes of a publish, after the checks (PluginError naming the holder)."""
    writes, taken = [], _TakenChanges(holders)
    for m in mappings:
        holder = _conflict(holders, m, owner)
        if holder is not None:
            raise PluginError(INTERNAL, f"host port {m.describe_host()} is already published by {holder}; "
                              "nothing was published")
        if (holders.wildcard(m) if m.host_ip is None else holders.specific(m)) == owner:
            continue  # already ours (a repeated request)
        writes.append(_map_write(m, owner, True))
        taken.set(m, owner if m.host_ip is None else f"{SPECIFIC}{_specifics(holders.taken(m)) + 1}", owner)
    return writes + taken.writes()


class _TakenChanges:
    """The `taken` elements a request rewrites: first value read, last value wanted (one
    delete and one create per port, whatever the number of its mappings in the request)."""

    def __init__(self, holders: _Holders) -> None:
        self.holders = holders
        self.changes: dict[tuple[int, str, int], tuple[PortMapping, str | None, str | None]] = {}

    def set(self, m: PortMapping, new: str | None, owner: str | None) -> None:
        key = (m.version, m.protocol, m.host_port)
        first = self.changes[key][1] if key in self.changes else self.holders.taken(m)
        self.changes[key] = (m, first, new)
        self.holders.note(m, owner, new)

    def writes(self) -> list[_Write]:
        return [w for m, old, new in self.changes.values() for w in _taken_writes(m, old, new)]


def _refuse_duplicates(mappings: Sequence[PortMapping]) -> None:
    """The same host port twice in one request, to different container ports: refused (the
    kernel would keep one of them silently)."""
    seen: dict[tuple, PortMapping] = {}
    for m in mappings:
        key = (m.version, m.protocol, m.host_port, m.host_ip)
        other = seen.setdefault(key, m)
        if (other.container_ip, other.container_port) != (m.container_ip, m.container_port):
            raise config_error(f"host port {m.host_port}/{m.protocol} is mapped twice: "
                               f"{other.describe()} and {m.describe()}")


def _run_creating_table(script: str) -> None:
    """Run an element script (the caller prepends the table when it found none); creates the
    table when it vanished meanwhile (ENOENT: a firewall reload)."""
    try:
        nft.run(script)
    except NftError as exc:
        if "No such file or directory" not in str(exc):
            raise
        nft.run(_table_script() + script)


def unpublish(owner: str, known: Sequence[PortMapping] = (), bridge: str | None = None) -> list[PortMapping]:
    """Remove every mapping of `owner` (idempotent); the table and the network's entries stay
    for its next container (`release_network` removes them; a table that serves no network
    goes with its last mapping). Returns what was removed.
    `known`: the mappings the caller believes the owner has (only protocol, host port, host
    address and family matter): removed by key, so the cost does not grow with the ports
    published on the host; anything else of the owner is left to GC. `bridge`: the owner's
    network's bridge; without `known`, a network that has no entries in the table (it
    published nothing since its last member left) has no mappings: no listing then."""
    if not known and bridge and not _serves(bridge):
        return []
    with network_lock(LOCK):
        removed = _remove_known(owner, known) if known else None
        if removed is None:
            listing = _listing()
            removed = _remove(listing, {owner}) if listing else []
        if removed:
            _delete_if_empty()  # mappings without a network (bridge None) keep no table
        return removed


def _remove_known(owner: str, known: Sequence[PortMapping]) -> list[PortMapping] | None:
    """unpublish by key: keyed reads of each port's holders, one raw delete batch. None when
    nfnetlink is refused or the batch fails (the caller lists instead)."""
    try:
        with SetElements(TABLE) as nl:
            holders = _Holders(nl)
            writes, mine, taken = [], [], _TakenChanges(holders)
            for m in dict.fromkeys(known):
                if (holders.wildcard(m) if m.host_ip is None else holders.specific(m)) != owner:
                    continue
                mine.append(m)
                writes.append(_map_write(m, owner, False))
                count = _specifics(holders.taken(m))
                taken.set(m, None if m.host_ip is None or count <= 1 else f"{SPECIFIC}{count - 1}", None)
            writes += taken.writes()
            if writes:
                nl.write_batch([w.op() for w in writes])
    except (NetlinkError, OSError):
        return None
    return mine


def unpublish_stale(owner_prefix: str, keep: set[str]) -> list[PortMapping]:
    """GC: remove the mappings of owners starting with `owner_prefix` that are not in `keep`."""
    with network_lock(LOCK):
        listing = _listing()
        owners = {o for o, _ in _mappings(listing) if o.startswith(owner_prefix) and o not in keep}
        owners |= {o for o in _taken_owners(listing) if o.startswith(owner_prefix) and o not in keep}
        if not owners:
            return []
        removed = _remove(listing, owners)
        _delete_if_empty()  # the networks' last members may have gone before their mappings
        return removed


def _taken_owners(listing: dict[str, list]) -> set[str]:
    """Owners named by `taken` comments (a wildcard holder; counts are no owners)."""
    out = set()
    for version in (4, 6):
        for raw in listing.get(f"taken{version}", []):
            comment = _parse_key(raw)[1]
            if comment and not comment.startswith(SPECIFIC):
                out.add(comment)
    return out


def _remove(listing: dict[str, list], owners: set[str]) -> list[PortMapping]:
    """Remove the owners' map elements and rewrite the `taken` elements of the ports they held
    from what remains (also repairs a `taken` element that disagrees with the maps)."""
    everything = _mappings(listing)
    removed = [(o, m) for o, m in everything if o in owners]
    remaining = [(o, m) for o, m in everything if o not in owners]
    lines = [_map_write(m, owner, False).nft() for owner, m in removed]
    current: dict[tuple[int, str, int], str] = {}
    for version in (4, 6):
        for raw in listing.get(f"taken{version}", []):
            parts, comment = _parse_key(raw)
            current[(version, _protocol(parts[0]), int(parts[1]))] = comment
    wanted: dict[tuple[int, str, int], str] = {}
    for owner, m in remaining:
        key = (m.version, m.protocol, m.host_port)
        wanted[key] = owner if m.host_ip is None else f"{SPECIFIC}{_specifics(wanted.get(key)) + 1}"
    for key in sorted(set(current) | set(wanted)):
        if current.get(key) != wanted.get(key) and (key in wanted or key in current):
            version, protocol, port = key
            lines += [w.nft() for w in _taken_writes(PortMapping(protocol, port, _ANY[version], 1),
                                                     current.get(key), wanted.get(key))]
    if lines:
        try:
            nft.run("\n".join(lines) + "\n")
        except NftError as exc:
            raise PluginError(INTERNAL, "cannot remove published ports", str(exc)) from None
    return [m for _, m in removed]


def _serves(bridge: str) -> bool:
    """Whether the table holds the network's entries (a keyed read; True when it cannot tell)."""
    try:
        with SetElements(TABLE) as nl:
            return nl.key_owner("localnet", ifname_key(bridge)) is not None
    except (NetlinkError, OSError):
        return True


def release_network(bridge: str) -> bool:
    """The network of `bridge` has no members any more: its entries go (hairpin, localnet,
    route_localnet), and the table with them when it then holds nothing else (no mapping, no
    other network). One keyed read when the network never published (or there is no table).
    True when something was removed."""
    try:
        with SetElements(TABLE) as nl:
            if nl.key_owner("localnet", ifname_key(bridge)) is None:
                return False
    except (NetlinkError, OSError):
        return False  # no nfnetlink: drop_network lists instead
    with network_lock(LOCK):
        _release_network(bridge)
    return True


def _hairpin_lines(bridge: str, listed: bool = False) -> list[str]:
    """Deletes of the bridge's hairpin entries: from its localnet tag (no listing), else (or
    with `listed`) from a listing of the hairpin sets."""
    subnets = None
    try:
        with SetElements(TABLE) as nl:
            subnets = None if listed else _tagged(nl.key_owner("localnet", ifname_key(bridge)))
    except (NetlinkError, OSError):
        pass
    if subnets is not None:
        return [f'delete element {_T} hairpin{ipaddress.ip_network(n).version} {{ {n} . "{bridge}" }}'
                for n in sorted(subnets)]
    lines = []
    for version in (4, 6):
        try:
            text = nft.run(f"list set {_T} hairpin{version}", json=True)
        except NftError:
            continue
        for item in json.loads(text).get("nftables", []):
            for raw in (item.get("set") or {}).get("elem", []):
                parts, _ = _parse_key(raw)
                if len(parts) == 2 and parts[1] == bridge and isinstance(parts[0], dict) and "prefix" in parts[0]:
                    prefix = parts[0]["prefix"]
                    lines.append(f'delete element {_T} hairpin{version} '
                                 f'{{ {prefix["addr"]}/{prefix["len"]} . "{bridge}" }}')
    return lines


def _release_network(bridge: str) -> None:
    """Under LOCK."""
    try:
        with SetElements(TABLE) as nl:
            alone = nl.keys("localnet") == [ifname_key(bridge)] and not nl.any("taken4") and not nl.any("taken6")
    except (NetlinkError, OSError):
        alone = False
    if alone:  # the common case, one network on the host: no listing
        try:
            nft.run(f"delete table {_T}\n")
        except NftError:
            pass
        set_route_localnet(bridge, False)
        return
    for listed in (False, True):  # listed: a hairpin entry the tag names is gone (a shared one)
        try:
            nft.run("\n".join([*_hairpin_lines(bridge, listed), f'delete element {_T} localnet {{ "{bridge}" }}']) + "\n")
            break
        except NftError:
            pass
    set_route_localnet(bridge, False)
    _delete_if_empty()


def _delete_if_empty() -> None:
    """The table goes when it holds no mapping and serves no network (under LOCK)."""
    try:
        with SetElements(TABLE) as nl:
            if nl.any("localnet") or nl.any("taken4") or nl.any("taken6"):  # the smallest first
                return
    except (NetlinkError, OSError):
        listing = _listing()
        if not listing or any(listing.get(name) for name in ("taken4", "taken6", "localnet")):
            return
    try:
        nft.run(f"delete table {_T}\n")
    except NftError:
        pass


def drop_network(network: str, bridge: str | None) -> None:
    """A network is going: remove whatever mappings it still has, and its entries."""
    with network_lock(LOCK):
        listing = _listing()
        if not listing:
            return
        owners = {o for o, _ in _mappings(listing) if o.startswith(network + "/")}
        owners |= {o for o in _taken_owners(listing) if o.startswith(network + "/")}
        if owners:
            _remove(listing, owners)
        if bridge:
            _release_network(bridge)
        else:
            _delete_if_empty()
