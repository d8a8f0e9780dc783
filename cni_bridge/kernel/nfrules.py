"""Rules of one nftables chain over NETLINK_NETFILTER, without libnftables: list a chain's
rules (a dump the kernel filters to that chain), insert rules that accept an interface's
traffic, delete rules by handle.

Why: every libnftables call first loads a ruleset cache; on a Docker host that means its
tables, chains and rules on each of the four calls a network's first ADD made for its FORWARD
accepts (list and insert, per family: ~0.9 ms, growing with the host's ruleset). Here the same
work is two keyed reads, two dumps of the FORWARD chain alone and one batch.

The rules written are byte for byte what `nft insert rule <family> filter FORWARD iifname "br"
counter accept comment "c"` writes (`nft --debug=netlink`), so nft and iptables-nft show them
as before (`-A FORWARD -i br -m comment --comment "c" -j ACCEPT`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cni_bridge.kernel.nfnetlink import NLA_F_NESTED, NfConversation, comment_udata, nfgen, udata_comment
from cni_bridge.kernel.nlsock import F_ACK, F_CREATE, attr, attrs, each_attr

NFPROTO_IPV4, NFPROTO_IPV6 = 2, 10
NFT_MSG_GETCHAIN, NFT_MSG_NEWRULE, NFT_MSG_GETRULE, NFT_MSG_DELRULE = 4, 6, 7, 8
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME = 1, 3
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_HANDLE, NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA = 1, 2, 3, 4, 7
NFTA_LIST_ELEM, NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 1, 2
NFTA_META_DREG, NFTA_META_KEY = 1, 2
NFTA_CMP_SREG, NFTA_CMP_OP, NFTA_CMP_DATA = 1, 2, 3
NFTA_IMMEDIATE_DREG, NFTA_IMMEDIATE_DATA = 1, 2
NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_VERDICT_CODE = 1, 2, 1
NFT_META_IIFNAME, NFT_META_OIFNAME = 6, 7
NFT_REG_VERDICT, NFT_REG_1, NFT_CMP_EQ, NF_ACCEPT = 0, 1, 0, 1
IFNAMSIZ = 16
COMMENT_MAX = 128  # nft's limit (NFTNL_UDATA_COMMENT_MAXLEN); longer comments need iptables
META_KEYS = {"iifname": NFT_META_IIFNAME, "oifname": NFT_META_OIFNAME}
_U32 = struct.Struct(">I")


@dataclass(frozen=True)
class Rule:
    """One rule as listed: its handle, its expressions (name, attributes) in order, and its
    comment (None: no nft comment, e.g. written by iptables with `-m comment`)."""
    handle: int
    expressions: tuple[tuple[str, dict[int, bytes]], ...]
    comment: str | None

    def accepts_interface(self, key: str, ifname: str) -> bool:
        """`iifname "ifname" ... accept` (key "iifname") or the oifname one: the interface
        compared whole (nft pads it to 16 bytes, iptables-nft sends it with its NUL; a wildcard
        `br*` has no NUL and is another rule), and the last verdict accept."""
        if len(self.expressions) < 3:
            return False
        (meta_name, meta), (cmp_name, cmp), (last_name, last) = self.expressions[:2] + self.expressions[-1:]
        if (meta_name, cmp_name, last_name) != ("meta", "cmp", "immediate"):
            return False
        if meta.get(NFTA_META_KEY) != _U32.pack(META_KEYS[key]) or cmp.get(NFTA_CMP_OP) != _U32.pack(NFT_CMP_EQ) \
                or meta.get(NFTA_META_DREG) != cmp.get(NFTA_CMP_SREG):
            return False
        value = attrs(cmp.get(NFTA_CMP_DATA, b""), 0).get(NFTA_DATA_VALUE, b"")
        name = ifname.encode()
        if not (len(name) < len(value) and value.startswith(name) and not value[len(name):].strip(b"\0")):
            return False
        verdict = attrs(attrs(last.get(NFTA_IMMEDIATE_DATA, b""), 0).get(NFTA_DATA_VERDICT, b""), 0)
        return last.get(NFTA_IMMEDIATE_DREG) == _U32.pack(NFT_REG_VERDICT) \
            and verdict.get(NFTA_VERDICT_CODE) == _U32.pack(NF_ACCEPT)


def _expression(name: str, *data: bytes) -> bytes:
    return attr(NFTA_LIST_ELEM | NLA_F_NESTED, attr(NFTA_EXPR_NAME, name.encode() + b"\0")
                + attr(NFTA_EXPR_DATA | NLA_F_NESTED, b"".join(data)))


def interface_accept(key: str, ifname: str) -> bytes:
    """The expressions of `<key> "ifname" counter accept` (key: iifname or oifname)."""
    return b"".join([
        _expression("meta", attr(NFTA_META_KEY, _U32.pack(META_KEYS[key])), attr(NFTA_META_DREG, _U32.pack(NFT_REG_1))),
        _expression("cmp", attr(NFTA_CMP_SREG, _U32.pack(NFT_REG_1)), attr(NFTA_CMP_OP, _U32.pack(NFT_CMP_EQ)),
                    attr(NFTA_CMP_DATA | NLA_F_NESTED, attr(NFTA_DATA_VALUE, ifname.encode().ljust(IFNAMSIZ, b"\0")))),
        _expression("counter"),
        _expression("immediate", attr(NFTA_IMMEDIATE_DREG, _U32.pack(NFT_REG_VERDICT)),
                    attr(NFTA_IMMEDIATE_DATA | NLA_F_NESTED, attr(NFTA_DATA_VERDICT | NLA_F_NESTED,
                                                                  attr(NFTA_VERDICT_CODE, _U32.pack(NF_ACCEPT))))),
    ])


def _names(table: str, chain: str) -> bytes:
    """The table and chain attributes of a rule message."""
    return attr(NFTA_RULE_TABLE, table.encode() + b"\0") + attr(NFTA_RULE_CHAIN, chain.encode() + b"\0")


class ChainRules(NfConversation):
    """Reads and writes of the rules of chains (any family) on one pooled socket."""

    def __enter__(self) -> "ChainRules":
        return self

    def chain_exists(self, family: int, table: str, chain: str) -> bool:
        return self.exists(NFT_MSG_GETCHAIN, nfgen(family) + attr(NFTA_CHAIN_TABLE, table.encode() + b"\0")
                           + attr(NFTA_CHAIN_NAME, chain.encode() + b"\0"))

    def rules(self, family: int, table: str, chain: str, mentioning: str = "") -> list[Rule]:
        """The chain's rules in order (the kernel filters the dump by table and chain; a
        missing chain lists as empty: ask chain_exists). `mentioning`: only the rules whose
        message contains that name (e.g. an interface compared in the rule) are decoded; on
        a host with many FORWARD rules that skips decoding the others."""
        out = []
        needle = mentioning.encode()
        for payload in self.dump(NFT_MSG_GETRULE, nfgen(family) + _names(table, chain)):
            if needle not in payload:
                continue
            rule = attrs(payload, 0)
            expressions = []
            for _kind, elem in each_attr(rule.get(NFTA_RULE_EXPRESSIONS, b"")):
                fields = attrs(elem, 0)
                expressions.append((fields.get(NFTA_EXPR_NAME, b"").split(b"\0", 1)[0].decode(errors="replace"),
                                    attrs(fields.get(NFTA_EXPR_DATA, b""), 0)))
            handle = struct.unpack(">Q", rule[NFTA_RULE_HANDLE])[0] if NFTA_RULE_HANDLE in rule else 0
            out.append(Rule(handle, tuple(expressions), udata_comment(rule.get(NFTA_RULE_USERDATA, b""))))
        return out

    @staticmethod
    def insert_message(family: int, table: str, chain: str, expressions: bytes,
                       comment: str) -> tuple[int, int, bytes]:
        """A NEWRULE for `batch`: the rule goes first in the chain (nft's `insert rule`)."""
        return (NFT_MSG_NEWRULE, F_CREATE | F_ACK, nfgen(family) + _names(table, chain)
                + attr(NFTA_RULE_EXPRESSIONS | NLA_F_NESTED, expressions)
                + attr(NFTA_RULE_USERDATA, comment_udata(comment.encode())))

    @staticmethod
    def delete_message(family: int, table: str, chain: str, handle: int) -> tuple[int, int, bytes]:
        return (NFT_MSG_DELRULE, F_ACK, nfgen(family) + _names(table, chain)
                + attr(NFTA_RULE_HANDLE, struct.pack(">Q", handle)))
