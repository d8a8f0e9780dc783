"""Published ports: DNAT from a host port to a container's port, for `docker run -p` and the
CNI `portMappings` capability.

One nftables table that every pybridge network shares, `inet pybridge_ports`, because a host
port is a host-wide resource: the kernel itself refuses a second owner of a port (`create
element` fails with EEXIST), whichever network or front end asks. The rule count is fixed;
every mapping is a map element, so a lookup (and an ADD) costs the same with 1 or 1,000 ports:

    set taken4 / taken6    proto . host port                    who holds it (comment: owner)
    map any4 / any6        proto . host port : addr . port      bound to every local address
    map host4 / 6          host addr . proto . host port : ...  bound to one host address
    set hairpin4 / 6       subnet . bridge                      networks that have mappings
    set localnet           bridge                               route_localnet=1 set by us

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
IPv6 has no route_localnet: `[::1]:port` is not published (any other host address is).

Owners are "<network>/<host veth name>" (`owner_tag`), so that DEL and GC can remove one
attachment's mappings without knowing them, and GC of one network leaves the others alone.
A (family, protocol, host port) has one owner: two containers cannot share a host port even on
different host addresses. The table goes with its last mapping.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

from cni_bridge.errors import INTERNAL, PluginError, config_error
from cni_bridge.firewall.names import SHARED_TABLES
from cni_bridge.kernel.nfnetlink import SetElements, concat_key
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

    def _element(self, owner: str) -> tuple[str, str, str]:
        """(map name, map element, taken element) in nft syntax."""
        key = f"{self.protocol} . {self.host_port}"
        taken = f'{key} comment "{owner}"'
        value = f"{self.container_ip} . {self.container_port}"
        if self.host_ip is None:
            return f"any{self.version}", f"{taken} : {value}", taken
        return f"host{self.version}", f"{self.host_ip} . {taken} : {value}", taken

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


def _taken(listing: dict[str, list]) -> dict[tuple[int, str, int], str]:
    out = {}
    for version in (4, 6):
        for raw in listing.get(f"taken{version}", []):
            parts, owner = _parse_key(raw)
            out[(version, _protocol(parts[0]), int(parts[1]))] = owner
    return out


def _choose_ports(mappings: Sequence[PortMapping], owner: str) -> list[PortMapping]:
    """Give every mapping that asks for "any port" (0, or a range) a free one. A port chosen
    for a (protocol, container port) is reused for its other addresses (v4 and v6 alike)."""
    if all(m.host_port and not m.host_port_end > m.host_port for m in mappings):
        return list(mappings)
    taken = _taken(_listing())
    chosen: dict[tuple[str, int, int, int], int] = {}
    out = []
    for m in mappings:
        if m.host_port and not m.host_port_end > m.host_port:
            out.append(m)
            taken[(m.version, m.protocol, m.host_port)] = owner
            continue
        request = (m.protocol, m.container_port, m.host_port, m.host_port_end)
        low, high = (m.host_port, m.host_port_end) if m.host_port else ephemeral_range()
        candidates = [chosen[request]] if request in chosen else []
        start = low + int.from_bytes(os.urandom(2), "big") % (high - low + 1) if not m.host_port else low
        candidates += [*range(start, high + 1), *range(low, start)]
        for port in candidates:
            if taken.get((m.version, m.protocol, port), owner) == owner:
                break
        else:
            raise PluginError(INTERNAL, f"no free host port for {m.protocol} in {low}-{high}")
        chosen[request] = port
        taken[(m.version, m.protocol, port)] = owner
        out.append(replace(m, host_port=port, host_port_end=0))
    return out


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
    with network_lock(LOCK):
        mappings = _choose_ports(mappings, owner)
        _refuse_duplicates(mappings)
        script = _publish_script(owner, bridge, subnets, mappings, create=True)
        try:
            _run_creating_table(script)
        except NftError as exc:
            if "File exists" not in str(exc):
                raise PluginError(INTERNAL, "cannot publish ports", str(exc)) from None
            _refuse_taken(owner, mappings)  # else: all ours already (a repeated request)
            _run_creating_table(_publish_script(owner, bridge, subnets, mappings, create=False))
    if bridge and any(m.version == 4 for m in mappings):
        set_route_localnet(bridge, True)
    return mappings


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


def _publish_script(owner: str, bridge: str | None, subnets: Sequence[IPNetwork],
                    mappings: Sequence[PortMapping], *, create: bool) -> str:
    verb = "create" if create else "add"
    lines, taken_done = [], set()
    for m in mappings:
        name, element, taken = m._element(owner)
        if (m.version, taken) not in taken_done:  # one owner may bind a port on several addresses
            taken_done.add((m.version, taken))
            lines.append(f"{verb} element {_T} taken{m.version} {{ {taken} }}")
        lines.append(f"add element {_T} {name} {{ {element} }}")
    if bridge:
        versions = {m.version for m in mappings}
        for net in subnets:
            if net.version in versions:
                lines.append(f'add element {_T} hairpin{net.version} {{ {net} . "{bridge}" }}')
        if 4 in versions:
            lines.append(f'add element {_T} localnet {{ "{bridge}" }}')
    return "\n".join(lines) + "\n"


def _run_creating_table(script: str) -> None:
    """Run an element script; with the table in the same transaction when it is missing (the
    host's first mapping): a failed batch costs an RCU grace period, a keyed read ~0.05 ms."""
    if not _table_exists():
        script = _table_script() + script
    try:
        nft.run(script)
    except NftError as exc:
        if "No such file or directory" not in str(exc):
            raise
        nft.run(_table_script() + script)


def _table_exists() -> bool:
    try:
        with SetElements(TABLE) as reader:
            return reader.has_set("taken4")
    except (NetlinkError, OSError):
        return True  # cannot tell: the ENOENT path above creates it


def _refuse_taken(owner: str, mappings: Sequence[PortMapping]) -> None:
    taken = _taken(_listing())
    for m in mappings:
        holder = taken.get((m.version, m.protocol, m.host_port), owner)
        if holder != owner:
            network, _, attachment = holder.partition("/")
            raise PluginError(INTERNAL, f"host port {m.host_port}/{m.protocol} (IPv{m.version}) is already "
                              f"published by pybridge network {network[:20]} (attachment {attachment}); "
                              "nothing was published")


def unpublish(owner: str, known: Sequence[PortMapping] = ()) -> list[PortMapping]:
    """Remove every mapping of `owner` (idempotent); the table goes with its last mapping.
    Returns what was removed. `known`: the mappings the caller believes the owner has (only
    protocol, host port, host address and family matter): removed by key, so the cost does
    not grow with the ports published on the host; anything else of the owner is left to GC."""
    with network_lock(LOCK):
        if known:
            removed = _remove_known(owner, known)
            if removed is not None:
                return removed
        listing = _listing()
        if not listing:
            return []
        return _remove(listing, {owner})


def _taken_key(m: PortMapping) -> bytes:
    return concat_key(bytes([PROTOCOLS[m.protocol]]), m.host_port.to_bytes(2, "big"))


def _remove_known(owner: str, known: Sequence[PortMapping]) -> list[PortMapping] | None:
    """unpublish by key: a keyed read of each port's owner, one delete transaction, then the
    table goes if nothing is left. None when nfnetlink is refused (the caller lists instead)."""
    try:
        with SetElements(TABLE) as nl:
            mine = [m for m in dict.fromkeys(known) if nl.key_owner(f"taken{m.version}", _taken_key(m)) == owner]
            lines, taken_done = [], set()
            for m in mine:
                name, element, _ = m._element(owner)
                lines.append(f"delete element {_T} {name} {{ {element.split(' comment ')[0]} }}")
                if (m.version, m.protocol, m.host_port) not in taken_done:
                    taken_done.add((m.version, m.protocol, m.host_port))
                    lines.append(f"delete element {_T} taken{m.version} {{ {m.protocol} . {m.host_port} }}")
            if lines:
                try:
                    nft.run("\n".join(lines) + "\n")
                except NftError:
                    return None  # e.g. a host-address element the caller did not know: list instead
            if nl.any("taken4") or nl.any("taken6"):
                return mine
    except (NetlinkError, OSError):
        return None
    _delete_table(_listing())
    return mine


def unpublish_stale(owner_prefix: str, keep: set[str]) -> list[PortMapping]:
    """GC: remove the mappings of owners starting with `owner_prefix` that are not in `keep`."""
    with network_lock(LOCK):
        listing = _listing()
        owners = {o for o, _ in _mappings(listing) if o.startswith(owner_prefix) and o not in keep}
        owners |= {o for o in _taken(listing).values() if o.startswith(owner_prefix) and o not in keep}
        return _remove(listing, owners) if owners else []


def _remove(listing: dict[str, list], owners: set[str]) -> list[PortMapping]:
    removed = [(o, m) for o, m in _mappings(listing) if o in owners]
    taken = _taken(listing)
    doomed_taken = {k for k, o in taken.items() if o in owners}
    if len(doomed_taken) == len(taken):
        _delete_table(listing)
        return [m for _, m in removed]
    lines = []
    for owner, m in removed:
        name, element, _ = m._element(owner)
        lines.append(f"delete element {_T} {name} {{ {element.split(' comment ')[0]} }}")
    for version, protocol, port in sorted(doomed_taken):
        lines.append(f"delete element {_T} taken{version} {{ {protocol} . {port} }}")
    if lines:
        try:
            nft.run("\n".join(lines) + "\n")
        except NftError as exc:
            raise PluginError(INTERNAL, "cannot remove published ports", str(exc)) from None
    return [m for _, m in removed]


def _delete_table(listing: dict[str, list]) -> None:
    try:
        nft.run(f"delete table {_T}\n")
    except NftError:
        pass
    for raw in listing.get("localnet", []):
        bridge, _ = _parse_key(raw)
        set_route_localnet(str(bridge[0]), False)


def drop_network(network: str, bridge: str | None) -> None:
    """A network is going: remove whatever mappings it still has, and its hairpin and
    localnet entries."""
    with network_lock(LOCK):
        listing = _listing()
        owners = {o for o, _ in _mappings(listing) if o.startswith(network + "/")}
        owners |= {o for o in _taken(listing).values() if o.startswith(network + "/")}
        if owners:
            _remove(listing, owners)
            listing = _listing()
        if not listing or not bridge:
            return
        lines = []
        for version in (4, 6):
            for raw in listing.get(f"hairpin{version}", []):
                parts, _ = _parse_key(raw)
                if len(parts) == 2 and parts[1] == bridge and isinstance(parts[0], dict) and "prefix" in parts[0]:
                    prefix = parts[0]["prefix"]
                    lines.append(f'delete element {_T} hairpin{version} '
                                 f'{{ {prefix["addr"]}/{prefix["len"]} . "{bridge}" }}')
        if any(_parse_key(raw)[0] == [bridge] for raw in listing.get("localnet", [])):
            lines.append(f'delete element {_T} localnet {{ "{bridge}" }}')
            set_route_localnet(bridge, False)
        if lines:
            try:
                nft.run("\n".join(lines) + "\n")
            except NftError:
                pass
