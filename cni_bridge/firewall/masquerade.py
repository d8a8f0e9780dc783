"""Masquerade: one nftables table per network (`inet pybridge_<id>`) holding a set of container
addresses per family (`masq4`/`masq6`, each element tagged with its owner), the network's
subnets (`nets4`/`nets6`, interval sets) and, when the network masquerades, one constant rule per
family: `saddr @masq4 daddr != @nets4 ... masquerade`.

The rule count is therefore flat in the number of containers; ADD and DEL only add or remove a
set element. The exclusion list is a set that only grows while the table lives, so a network with
several subnets (or per-request ranges) never masquerades traffic between its own subnets,
whichever ADD came last (the rule text does not depend on the attachment).

Every bridge attachment with addresses is a member, masquerading or not: the table is how
pybridge knows that a network has containers, so the network's FORWARD accept rules
(forward.py, for hosts with a DROP policy) come with its first container and go with its last.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from cni_bridge.errors import INTERNAL, PluginError
from cni_bridge.firewall import internal as internal_networks
from cni_bridge.firewall.forward import forward_accept
from cni_bridge.firewall.names import SHARED_TABLES, table_name
from cni_bridge.kernel import nfobjects
from cni_bridge.kernel.nfnetlink import NFPROTO_INET, NfConversation, SetElements
from cni_bridge.kernel.nfrules import NFPROTO_IPV4, NFPROTO_IPV6
from cni_bridge.kernel.nft import NftError, nft
from cni_bridge.kernel.nlsock import NetlinkError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Masquerade:
    """What one network's table needs: its name, its bridge (None: FORWARD rules are not tied to
    the table's life), the attachment's subnets, and whether to masquerade at all."""
    network: str
    bridge: str | None
    subnets: tuple[IPNetwork, ...]
    enabled: bool = True
    internal: bool = False

    @property
    def table(self) -> str:
        return table_name(self.network)


def _elements(addrs: Iterable[IPAddress], version: int) -> list[str]:
    return [str(a) for a in addrs if a.version == version]


def _rule_lines(m: Masquerade) -> list[str]:
    """The same two rules for every network that masquerades; none for one that does not."""
    if not m.enabled:
        return []
    t = f"inet {m.table}"
    return [f"add rule {t} postrouting ip saddr @masq4 ip daddr != @nets4 ip daddr != 224.0.0.0/4 masquerade",
            f"add rule {t} postrouting ip6 saddr @masq6 ip6 daddr != @nets6 ip6 daddr != ff00::/8 masquerade"]


def _subnet_lines(m: Masquerade) -> list[str]:
    t = f"inet {m.table}"
    return [f"add element {t} nets{version} {{ {', '.join(nets)} }}"
            for version in (4, 6) if (nets := [str(s) for s in m.subnets if s.version == version])]


def table_exists(network: str) -> bool:
    try:
        nft.run(f"list table inet {table_name(network)}")
        return True
    except NftError:
        return False


def _rules_signature(m: Masquerade) -> str:
    """Name of a one-element set created once these subnets are in the nets sets and the rules
    are those of `m.enabled` (`rm_`: masquerade, `rn_`: members only). Several can coexist: one
    per subnet set a network's ADDs have used."""
    subnets = ",".join(sorted(str(s) for s in m.subnets))
    return ("rm_" if m.enabled else "rn_") + hashlib.sha1(subnets.encode()).hexdigest()[:12]


def _stale_signatures(m: Masquerade, table_text: str) -> set[str]:
    """Marker sets that no longer describe the rules: the other mode's, and the per-attachment
    `r_` markers of releases whose rule listed the subnets inline."""
    wrong = "rn_" if m.enabled else "rm_"
    return {name for name in re.findall(r"\bset (r[mn]?_[0-9a-f]+)\b", table_text)
            if name.startswith((wrong, "r_"))}


_MARKER = ipaddress.ip_address("127.0.0.1")  # the one element of a rules-signature set
NF_INET_POST_ROUTING, NF_IP_PRI_NAT_SRC = 4, 100  # `hook postrouting priority srcnat`


def add_members(m: Masquerade, addrs: Sequence[IPAddress], owner: str) -> None:
    """Ensure the network's table, sets and rules exist and that `addrs` are in the sets, each
    element tagged with its owner (the attachment's host-side name) so that DEL and GC can
    remove it without knowing the address. One atomic batch; idempotent.

    Fast path (every ADD but a network's first): one transaction that adds the elements plus a
    marker element to the set `rm_`/`rn_<hash of the subnets>`, which exists only once these
    subnets are in the nets sets and the rules are this mode's. Flat whatever the set size, because adding elements
    needs no ruleset cache, whereas listing the table or rewriting the chain makes libnftables
    fetch every element (~5 ms with 1,000 containers). Sent as a raw nfnetlink batch (~0.05 ms;
    the same `add element` through libnftables, the fallback, ~0.4 ms). If the marker set is missing
    (first container, subnets changed, table removed: a keyed read says so first), the full
    script below rebuilds the table and the chain; for a network's first container (no table:
    a GETTABLE says so) the same objects go in one raw batch (`_create_raw`), so that neither
    ADD path loads libnftables' cache of the host's ruleset."""
    t = f"inet {m.table}"
    signature = _rules_signature(m)
    by_set = {set_name: [(a, owner) for a in addrs if a.version == version]
              for version, set_name in ((4, "masq4"), (6, "masq6"))}
    by_set = {set_name: items for set_name, items in by_set.items() if items}
    elements = [f"add element {t} {set_name} {{ " + ", ".join(f'{a} comment "{o}"' for a, o in items) + " }"
                for set_name, items in by_set.items()]  # the same, for libnftables
    table_missing = None  # not known
    if by_set:
        marker_missing = False
        try:  # the same transaction as raw nfnetlink; libnftables below if that is refused
            with SetElements(m.table) as writer:
                marker_missing = not writer.has_set(signature)
                if not marker_missing:
                    writer.write(True, {signature: [(_MARKER, "")], **by_set})
                    return
                table_missing = not writer.table_exists(NFPROTO_INET, m.table)
        except (NetlinkError, OSError):
            pass
        if not marker_missing:
            try:
                nft.run("\n".join([f"add element {t} {signature} {{ {_MARKER} }}", *elements]) + "\n")
                return
            except NftError:
                pass
    if table_missing and _create_raw(m, signature, by_set):
        if m.bridge:
            network_rules(m.network, m.bridge, m.internal, True)
        return
    existing = None if table_missing else _table_text(m.network)
    created = existing is None
    stale = _stale_signatures(m, existing or "")
    script = [
        f"add table {t}",
        f"add set {t} masq4 {{ type ipv4_addr; }}",
        f"add set {t} masq6 {{ type ipv6_addr; }}",
        f"add set {t} nets4 {{ type ipv4_addr; flags interval; auto-merge; }}",
        f"add set {t} nets6 {{ type ipv6_addr; flags interval; auto-merge; }}",
        *_subnet_lines(m),
        *(f"delete set {t} {name}" for name in sorted(stale)),
        f"add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}",
        f"flush chain {t} postrouting",
        *_rule_lines(m),
        f"add set {t} {signature} {{ type ipv4_addr; }}",
        f"add element {t} {signature} {{ {_MARKER} }}",
        *elements,
    ]
    try:
        nft.run("\n".join(script) + "\n")
    except NftError as exc:
        raise PluginError(INTERNAL, f"cannot install masquerade for network {m.network}", str(exc)) from None
    if created and m.bridge:
        network_rules(m.network, m.bridge, m.internal, True)


_SET_IDS = {"masq4": 1, "masq6": 2, "nets4": 3, "nets6": 4}
_SIGNATURE_ID = 5


@functools.cache
def _masquerade_rules(enabled: bool) -> tuple[bytes, ...]:
    """The expressions of `_rule_lines(m)`, as nft compiles them (`nft --debug=netlink`); the
    same for every network (the set ids are fixed), so encoded once."""
    if not enabled:
        return ()
    return tuple(b"".join(rule) for rule in [
        [nfobjects.meta(nfobjects.NFT_META_NFPROTO), nfobjects.cmp(nfobjects.NFT_CMP_EQ, bytes([NFPROTO_IPV4])),
         nfobjects.payload(12, 4), nfobjects.lookup("masq4", _SET_IDS["masq4"]),
         nfobjects.payload(16, 4), nfobjects.lookup("nets4", _SET_IDS["nets4"], inverted=True),
         nfobjects.payload(16, 4), nfobjects.bitwise(b"\xf0\0\0\0", bytes(4)),  # 224.0.0.0/4
         nfobjects.cmp(nfobjects.NFT_CMP_NEQ, b"\xe0\0\0\0"), nfobjects.masq()],
        [nfobjects.meta(nfobjects.NFT_META_NFPROTO), nfobjects.cmp(nfobjects.NFT_CMP_EQ, bytes([NFPROTO_IPV6])),
         nfobjects.payload(8, 16), nfobjects.lookup("masq6", _SET_IDS["masq6"]),
         nfobjects.payload(24, 16), nfobjects.lookup("nets6", _SET_IDS["nets6"], inverted=True),
         nfobjects.payload(24, 1), nfobjects.cmp(nfobjects.NFT_CMP_NEQ, b"\xff"),  # ff00::/8
         nfobjects.masq()],
    ])


def _create_raw(m: Masquerade, signature: str, by_set: dict[str, list[tuple[IPAddress, str]]]) -> bool:
    """A network's first member when its table does not exist: the table of the full script of
    add_members (nothing stale can be in a new table) as one nfnetlink batch, instead of a
    libnftables call that first loads a cache of the host's whole ruleset. False when the
    kernel refuses it (nothing was created: a batch is all or nothing); the script then runs."""
    t, inet = m.table, NFPROTO_INET
    messages = [nfobjects.table(inet, t)]
    messages += [nfobjects.address_set(inet, t, name, set_id, int(name[-1]), interval=name.startswith("nets"))
                 for name, set_id in _SET_IDS.items()]
    for version in (4, 6):
        if nets := [s for s in m.subnets if s.version == version]:
            messages.append(nfobjects.elements(inet, t, f"nets{version}", _SET_IDS[f"nets{version}"],
                                               nfobjects.interval_elements(nets)))
    messages.append(nfobjects.base_chain(inet, t, "postrouting", "nat", NF_INET_POST_ROUTING, NF_IP_PRI_NAT_SRC))
    messages += [nfobjects.rule(inet, t, "postrouting", expressions) for expressions in _masquerade_rules(m.enabled)]
    messages.append(nfobjects.address_set(inet, t, signature, _SIGNATURE_ID, 4))
    messages.append(nfobjects.elements(inet, t, signature, _SIGNATURE_ID, nfobjects.address_elements([(_MARKER, "")])))
    messages += [nfobjects.elements(inet, t, name, _SET_IDS[name], nfobjects.address_elements(items))
                 for name, items in by_set.items()]
    try:
        with NfConversation() as nl:
            nl.batch(messages)
        return True
    except (NetlinkError, OSError):
        return False


def _table_text(network: str) -> str | None:
    try:
        return nft.run(f"list table inet {table_name(network)}")
    except NftError:
        return None


_ELEMENT_RE = re.compile(r'([0-9A-Fa-f:.]+)(?:\s+comment\s+"([^"]*)")?')


def members(network: str) -> dict[IPAddress, str]:
    """Addresses in the network's masquerade sets with their owner tags (empty when no table)."""
    return _members_in(_table_text(network) or "")


_SET_RE = re.compile(r"set masq[46]\s*\{[^}]*?elements\s*=\s*\{([^}]*)\}", re.S)


def _members_in(table_text: str) -> dict[IPAddress, str]:
    """Parse both sets out of one `list table` (each listing fetches the whole ruleset cache,
    ~5 ms with 1,000 elements: one listing instead of three)."""
    out: dict[IPAddress, str] = {}
    for block in _SET_RE.findall(table_text):
        for item in block.replace("\n", " ").split(","):
            match = _ELEMENT_RE.search(item.strip())
            if match:
                out[ipaddress.ip_address(match.group(1))] = match.group(2) or ""
    return out


def _remove_known(m: Masquerade, owners: set[str], addrs: set[IPAddress]) -> bool | None:
    """remove_members for a DEL that knows its addresses, without listing the sets: each address
    is removed if owned by `owners` (or untagged), then the table goes if both sets are empty.
    None when it cannot decide (table gone, nfnetlink refused): the caller lists instead.
    Elements of `owners` under other addresses are left to GC (an ADD never leaves any)."""
    try:  # no nfnetlink (e.g. a seccomp profile), table gone: list instead
        with SetElements(m.table) as reader:
            doomed: dict[str, list[tuple[IPAddress, str]]] = {}
            for addr in addrs:
                set_name = "masq4" if addr.version == 4 else "masq6"
                owner = reader.owner(set_name, addr)
                if owner is not None and (owner in owners or not owner):
                    doomed.setdefault(set_name, []).append((addr, ""))
            if doomed:
                reader.write(False, doomed)
            if reader.any("masq4") or reader.any("masq6"):
                return False
            reader.delete_table(NFPROTO_INET, m.table)  # it exists: its sets were just read
    except (NetlinkError, OSError):
        return None
    if m.bridge:
        network_rules(m.network, m.bridge, m.internal, False)
    return True


def remove_members(m: Masquerade, owners: Iterable[str] = (), addrs: Iterable[IPAddress] = ()) -> bool:
    """Remove the elements of the given owners (and/or addresses); delete the whole table when
    no element is left. Idempotent. Returns True when the table was removed. Callers hold the
    network lock."""
    owners, addrs = set(owners), set(addrs)
    if owners and addrs:  # DEL: constant cost, whatever the number of containers
        removed = _remove_known(m, owners, addrs)
        if removed is not None:
            return removed
    text = _table_text(m.network)
    if text is None:  # gone already (last DEL repeated, or removed by hand): its FORWARD rules too
        if m.bridge:
            network_rules(m.network, m.bridge, m.internal, False)
        return False
    current = _members_in(text)
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
        network_rules(m.network, m.bridge, m.internal, False)
    return not remaining


def delete_table(network: str, bridge: str | None, internal: bool = False) -> None:
    """Drop everything pybridge installed for a network (network removal, GC)."""
    try:
        nft.run(f"delete table inet {table_name(network)}\n")
    except NftError:
        pass
    if bridge:
        network_rules(network, bridge, internal, False)


def network_rules(network: str, bridge: str, internal: bool, enable: bool) -> None:
    """The rules a bridge network has while it has members (CNI) or exists (Docker): FORWARD
    accepts for DROP-policy hosts, and for an internal network the drops that wall it off."""
    forward_accept(network, bridge, enable)
    if internal:
        (internal_networks.add if enable else internal_networks.remove)(bridge)


def pybridge_tables() -> list[str]:
    try:
        text = nft.run("list tables inet")
    except (NftError, PluginError):
        return []
    return [t for t in re.findall(r"table inet (pybridge_\S+)", text) if t not in SHARED_TABLES]
