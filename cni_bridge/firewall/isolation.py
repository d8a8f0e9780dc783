"""Isolation between pybridge networks: containers of two isolated networks cannot reach each
other, in either direction, also not through the other network's gateway address (as Docker's
built-in bridge networks). Their own gateway and the outside (masqueraded) stay reachable.

One shared nftables table, `inet pybridge_isolation`; per isolated bridge one map element and
two small chains (rules grow with networks, never with containers):

    set bridges  { ifname }               the isolated bridges
    set gw4/gw6  { addr }                 their gateway addresses
    map fwd_jump / in_jump { ifname : verdict }    bridge -> jump f_<id> / i_<id>
    forward (filter - 10): iifname vmap @fwd_jump
        f_<id>: ct status dnat return       (published ports stay reachable from anywhere)
                oifname @bridges oifname != "<bridge>" drop
    input (filter - 10): iifname vmap @in_jump
        i_<id>: ip daddr @gw4 ip daddr != { own gateways } drop   (and ip6)

A drop in any base chain is final, so the FORWARD accept rules of forward.py do not undo it.
Networks with isolation off are not in the sets: they reach (and are reached by) everyone.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Sequence

from cni_bridge.errors import INTERNAL, PluginError
from cni_bridge.firewall.names import SHARED_TABLES
from cni_bridge.kernel.nft import NftError, nft
from cni_bridge.locks import network_lock

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

TABLE = SHARED_TABLES[1]
_T = f"inet {TABLE}"
LOCK = "pybridge.isolation"


def _id(bridge: str) -> str:
    return hashlib.sha1(bridge.encode()).hexdigest()[:12]


def _base_script() -> list[str]:
    return [
        f"add table {_T}",
        f"add set {_T} bridges {{ type ifname; }}",
        f"add set {_T} gw4 {{ type ipv4_addr; }}",
        f"add set {_T} gw6 {{ type ipv6_addr; }}",
        f"add map {_T} fwd_jump {{ type ifname : verdict; }}",
        f"add map {_T} in_jump {{ type ifname : verdict; }}",
        f"add chain {_T} forward {{ type filter hook forward priority filter - 10; policy accept; }}",
        f"add chain {_T} input {{ type filter hook input priority filter - 10; policy accept; }}",
        f"flush chain {_T} forward",
        f"flush chain {_T} input",
        f"add rule {_T} forward iifname vmap @fwd_jump",
        f"add rule {_T} input iifname vmap @in_jump",
    ]


def isolate(bridge: str, gateways: Sequence[IPAddress]) -> None:
    """Wall the network of `bridge` off from every other isolated network (idempotent; also
    rewrites its gateway addresses)."""
    ident = _id(bridge)
    own4 = [str(g) for g in gateways if g.version == 4]
    own6 = [str(g) for g in gateways if g.version == 6]
    script = [
        *_base_script(),
        f"add chain {_T} f_{ident}",
        f"add chain {_T} i_{ident}",
        f"flush chain {_T} f_{ident}",
        f"flush chain {_T} i_{ident}",
        f"add rule {_T} f_{ident} ct status dnat return",
        f'add rule {_T} f_{ident} oifname @bridges oifname != "{bridge}" drop',
        f"add rule {_T} i_{ident} ip daddr @gw4 " + (f"ip daddr != {{ {', '.join(own4)} }} " if own4 else "") + "drop",
        f"add rule {_T} i_{ident} ip6 daddr @gw6 " + (f"ip6 daddr != {{ {', '.join(own6)} }} " if own6 else "") + "drop",
        f'add element {_T} bridges {{ "{bridge}" }}',
        f'add element {_T} fwd_jump {{ "{bridge}" : jump f_{ident} }}',
        f'add element {_T} in_jump {{ "{bridge}" : jump i_{ident} }}',
        *(f"add element {_T} gw4 {{ {g} }}" for g in own4),
        *(f"add element {_T} gw6 {{ {g} }}" for g in own6),
    ]
    with network_lock(LOCK):
        try:
            nft.run("\n".join(script) + "\n")
        except NftError as exc:
            raise PluginError(INTERNAL, f"cannot isolate the network of bridge {bridge}", str(exc)) from None


def release(bridge: str, gateways: Sequence[IPAddress] = ()) -> None:
    """Undo `isolate` (idempotent); the table goes with the last isolated network."""
    ident = _id(bridge)
    with network_lock(LOCK):
        if not gateways:  # the own gateways are in the network's input chain
            try:
                text = nft.run(f"list chain {_T} i_{ident}")
            except (NftError, PluginError):
                text = ""
            gateways = [ipaddress.ip_address(a) for block in re.findall(r"daddr != \{([^}]*)\}", text)
                        for a in block.replace(" ", "").split(",") if a]
        for line in [
            f'delete element {_T} fwd_jump {{ "{bridge}" }}',
            f'delete element {_T} in_jump {{ "{bridge}" }}',
            f'delete element {_T} bridges {{ "{bridge}" }}',
            *(f"delete element {_T} gw{g.version} {{ {g} }}" for g in gateways),
            f"delete chain {_T} f_{ident}",
            f"delete chain {_T} i_{ident}",
        ]:
            try:  # one at a time: any of them may be gone already
                nft.run(line + "\n")
            except NftError:
                pass
        if not isolated():
            try:
                nft.run(f"delete table {_T}\n")
            except NftError:
                pass


def isolated() -> set[str]:
    """The isolated bridges (empty when there is no table)."""
    try:
        text = nft.run(f"list set {_T} bridges")
    except (NftError, PluginError):
        return set()
    if "elements" not in text:
        return set()
    body = text.split("elements = {", 1)[1].split("}", 1)[0]
    return {item.strip().strip('"') for item in body.split(",") if item.strip()}
