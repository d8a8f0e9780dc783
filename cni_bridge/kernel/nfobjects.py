"""nftables tables, sets, chains and rules as nfnetlink messages, for one batch
(`NfConversation.batch`) that creates a table with everything in it.

Why: a network's first ADD creates its masquerade table. Through libnftables that is one
script, but libnftables first loads a cache of the host's whole ruleset (every table, chain
and set: about ten dumps, more work the bigger a Docker host's ruleset) and parses the text;
the same objects as one batch are one round trip. The messages are those `nft -f` sends for
the equivalent script (`nft --debug=mnl`), attribute for attribute, so nft lists the result
exactly as if it had written it (the sets' user data carries the key byte order and
`auto-merge`, which later `add element` commands through libnftables rely on).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Iterable, Sequence

from cni_bridge.kernel.nfnetlink import NLA_F_NESTED, _element, nfgen
from cni_bridge.kernel.nlsock import F_ACK, F_CREATE, attr

NFT_MSG_NEWTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE, NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM = 0, 3, 6, 9, 12
F_APPEND = 0x800
NFTA_TABLE_NAME, NFTA_TABLE_FLAGS = 1, 2
NFTA_CHAIN_TABLE, NFTA_CHAIN_HOOK, NFTA_CHAIN_POLICY, NFTA_CHAIN_NAME, NFTA_CHAIN_TYPE = 1, 4, 5, 3, 7
NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY = 1, 2
NFTA_SET_TABLE, NFTA_SET_NAME, NFTA_SET_FLAGS, NFTA_SET_KEY_TYPE, NFTA_SET_KEY_LEN = 1, 2, 3, 4, 5
NFTA_SET_ID, NFTA_SET_USERDATA = 10, 13
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_SET_ELEM_LIST_SET_ID = 4
NFTA_LIST_ELEM, NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_USERDATA, NFTA_DATA_VALUE = 1, 1, 3, 6, 1
NFT_SET_ELEM_INTERVAL_END = 1
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS = 1, 2, 4
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NFT_SET_INTERVAL = 0x4
NFT_REG_1 = 1
NF_ACCEPT = 1
TYPE_IPADDR, TYPE_IP6ADDR = 7, 8  # nft datatype ids (`type ipv4_addr`, `type ipv6_addr`)
# libnftnl set user data records: (type, length, value as a host-order u32)
NFTNL_UDATA_SET_KEYBYTEORDER, NFTNL_UDATA_SET_MERGE_ELEMENTS = 0, 2
NFTNL_UDATA_SET_ELEM_FLAGS, NFTNL_SET_ELEM_F_INTERVAL_OPEN = 1, 1  # element user data
BYTEORDER_BIG_ENDIAN = 2
NFT_META_NFPROTO = 15
NFT_PAYLOAD_NETWORK_HEADER = 1
NFT_CMP_EQ, NFT_CMP_NEQ = 0, 1
NFT_LOOKUP_F_INV = 1
_U32 = struct.Struct(">I")
_UDATA_U32 = struct.Struct("=BBI")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Message = tuple[int, int, bytes]


def _name(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def table(family: int, name: str) -> Message:
    """`add table` (no error if it exists)."""
    return NFT_MSG_NEWTABLE, F_CREATE | F_ACK, nfgen(family) + _name(NFTA_TABLE_NAME, name) \
        + attr(NFTA_TABLE_FLAGS, _U32.pack(0))


def address_set(family: int, table_name: str, name: str, set_id: int, version: int, *,
                interval: bool = False) -> Message:
    """`add set ... { type ipv4_addr|ipv6_addr; [flags interval; auto-merge;] }`; `set_id`
    (unique in the batch) lets rules and elements of the same batch refer to it."""
    udata = _UDATA_U32.pack(NFTNL_UDATA_SET_KEYBYTEORDER, 4, BYTEORDER_BIG_ENDIAN)
    if interval:
        udata += _UDATA_U32.pack(NFTNL_UDATA_SET_MERGE_ELEMENTS, 4, 1)
    return NFT_MSG_NEWSET, F_CREATE | F_ACK, nfgen(family) + _name(NFTA_SET_TABLE, table_name) \
        + _name(NFTA_SET_NAME, name) + attr(NFTA_SET_FLAGS, _U32.pack(NFT_SET_INTERVAL if interval else 0)) \
        + attr(NFTA_SET_KEY_TYPE, _U32.pack(TYPE_IPADDR if version == 4 else TYPE_IP6ADDR)) \
        + attr(NFTA_SET_KEY_LEN, _U32.pack(4 if version == 4 else 16)) + attr(NFTA_SET_ID, _U32.pack(set_id)) \
        + attr(NFTA_SET_USERDATA, udata)


def _key_element(key: bytes, flags: int = 0, *, open_end: bool = False) -> bytes:
    body = (attr(NFTA_SET_ELEM_FLAGS, _U32.pack(flags)) if flags else b"") \
        + attr(NFTA_SET_ELEM_KEY | NLA_F_NESTED, attr(NFTA_DATA_VALUE, key))
    if open_end:  # a range up to the top of the address space has no end element: nft says so here
        body += attr(NFTA_SET_ELEM_USERDATA, _UDATA_U32.pack(NFTNL_UDATA_SET_ELEM_FLAGS, 4, NFTNL_SET_ELEM_F_INTERVAL_OPEN))
    return attr(NFTA_LIST_ELEM | NLA_F_NESTED, body)


def elements(family: int, table_name: str, name: str, set_id: int, listed: bytes) -> Message:
    return NFT_MSG_NEWSETELEM, F_CREATE | F_ACK, nfgen(family) + _name(NFTA_SET_ELEM_LIST_TABLE, table_name) \
        + _name(NFTA_SET_ELEM_LIST_SET, name) + attr(NFTA_SET_ELEM_LIST_SET_ID, _U32.pack(set_id)) \
        + attr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, listed)


def address_elements(addrs: Iterable[tuple[IPAddress, str]]) -> bytes:
    """Plain elements, each with its comment (empty: none)."""
    return b"".join(attr(NFTA_LIST_ELEM | NLA_F_NESTED, _element(a, comment)) for a, comment in addrs)


def interval_elements(nets: Sequence[IPNetwork]) -> bytes:
    """The elements nft writes into a new, empty interval set for these networks (one family):
    overlapping and adjacent networks merged (`auto-merge`), each range as its start and an
    end-flagged element just past it (none when it reaches the top of the address space: the
    start says "open" in its user data instead), and
    in front an end-flagged zero key unless the first range starts at zero."""
    ranges: list[list[int]] = []
    for net in sorted(nets, key=lambda n: int(n.network_address)):
        low, high = int(net.network_address), int(net.broadcast_address)
        if ranges and low <= ranges[-1][1] + 1:
            ranges[-1][1] = max(ranges[-1][1], high)
        else:
            ranges.append([low, high])
    if not ranges:
        return b""
    size = nets[0].max_prefixlen // 8
    top = (1 << nets[0].max_prefixlen) - 1
    out = [] if ranges[0][0] == 0 else [_key_element(bytes(size), NFT_SET_ELEM_INTERVAL_END)]
    for low, high in ranges:
        out.append(_key_element(low.to_bytes(size, "big"), open_end=high == top))
        if high < top:
            out.append(_key_element((high + 1).to_bytes(size, "big"), NFT_SET_ELEM_INTERVAL_END))
    return b"".join(out)


def base_chain(family: int, table_name: str, name: str, chain_type: str, hooknum: int, priority: int) -> Message:
    """`add chain ... { type T hook H priority P; policy accept; }`."""
    return NFT_MSG_NEWCHAIN, F_CREATE | F_ACK, nfgen(family) + _name(NFTA_CHAIN_TABLE, table_name) \
        + _name(NFTA_CHAIN_NAME, name) + _name(NFTA_CHAIN_TYPE, chain_type) \
        + attr(NFTA_CHAIN_POLICY, _U32.pack(NF_ACCEPT)) \
        + attr(NFTA_CHAIN_HOOK | NLA_F_NESTED, attr(NFTA_HOOK_HOOKNUM, _U32.pack(hooknum))
               + attr(NFTA_HOOK_PRIORITY, struct.pack(">i", priority)))


def rule(family: int, table_name: str, chain: str, expressions: bytes) -> Message:
    """`add rule` (appended) with these expressions (`expression()`s, joined)."""
    return NFT_MSG_NEWRULE, F_CREATE | F_APPEND | F_ACK, nfgen(family) + _name(NFTA_RULE_TABLE, table_name) \
        + _name(NFTA_RULE_CHAIN, chain) + attr(NFTA_RULE_EXPRESSIONS | NLA_F_NESTED, expressions)


# --- expressions (the attribute order is nft's) --------------------------------------------------
def expression(name: str, *data: bytes) -> bytes:
    return attr(NFTA_LIST_ELEM | NLA_F_NESTED, _name(NFTA_EXPR_NAME, name)
                + attr(NFTA_EXPR_DATA | NLA_F_NESTED, b"".join(data)))


def _value(kind: int, data: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, attr(NFTA_DATA_VALUE, data))


def meta(key: int) -> bytes:
    """meta load key => reg 1"""
    return expression("meta", attr(2, _U32.pack(key)), attr(1, _U32.pack(NFT_REG_1)))


def cmp(op: int, data: bytes) -> bytes:
    """cmp op reg 1 data"""
    return expression("cmp", attr(1, _U32.pack(NFT_REG_1)), attr(2, _U32.pack(op)), _value(3, data))


def payload(offset: int, length: int) -> bytes:
    """payload load length @ network header + offset => reg 1"""
    return expression("payload", attr(1, _U32.pack(NFT_REG_1)), attr(2, _U32.pack(NFT_PAYLOAD_NETWORK_HEADER)),
                      attr(3, _U32.pack(offset)), attr(4, _U32.pack(length)))


def lookup(set_name: str, set_id: int, inverted: bool = False) -> bytes:
    """lookup reg 1 set NAME [inverted]"""
    return expression("lookup", attr(2, _U32.pack(NFT_REG_1)), _name(1, set_name), attr(4, _U32.pack(set_id)),
                      *([attr(5, _U32.pack(NFT_LOOKUP_F_INV))] if inverted else []))


def bitwise(mask: bytes, xor: bytes) -> bytes:
    """bitwise reg 1 = (reg 1 & mask) ^ xor"""
    return expression("bitwise", attr(1, _U32.pack(NFT_REG_1)), attr(2, _U32.pack(NFT_REG_1)),
                      attr(3, _U32.pack(len(mask))), _value(4, mask), _value(5, xor))


def masq() -> bytes:
    return expression("masq")
