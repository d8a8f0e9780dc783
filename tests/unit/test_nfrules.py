"""The FORWARD accept rules as raw nfnetlink (cni_bridge.kernel.nfrules): the bytes match what
`nft insert rule ip filter FORWARD iifname "pbxbr" counter accept comment "pybridge:netx"`
sends (`nft --debug=mnl`), and a listed rule is recognised as "accepts this interface" whether
nft (name padded to 16 bytes) or iptables-nft (name and its NUL) wrote it, never for a wildcard
or another interface. No root, no kernel."""

from __future__ import annotations

import struct

from cni_bridge.kernel.nfrules import (
    NFPROTO_IPV4,
    NFTA_RULE_EXPRESSIONS,
    NFTA_RULE_USERDATA,
    ChainRules,
    Rule,
    _expression,
    interface_accept,
)
from cni_bridge.kernel.nlsock import attr, attrs, each_attr


def _rule(expressions: bytes, comment: str | None = None, handle: int = 7) -> Rule:
    """Parse expression bytes the way ChainRules.rules() parses a dumped rule."""
    parsed = []
    for _kind, elem in each_attr(expressions):
        fields = attrs(elem, 0)
        parsed.append((fields[1].split(b"\0", 1)[0].decode(), attrs(fields.get(2, b""), 0)))
    return Rule(handle, tuple(parsed), comment)


def test_interface_accept_is_the_bytes_nft_sends() -> None:
    # From `nft --debug=mnl insert rule ip filter FORWARD iifname "pbxbr" counter accept ...`
    # (nftables 1.0.9): meta key 6 -> reg 1; cmp reg 1 eq "pbxbr" padded to 16; counter; accept.
    expected = (
        "24000180" "09000100" "6d657461" "00000000" "14000280" "08000200" "00000006" "08000100" "00000001"
        "38000180" "08000100" "636d7000" "2c000280" "08000100" "00000001" "08000200" "00000000"
        "18000380" "14000100" "70627862" "72000000" "00000000" "00000000"
        "14000180" "0c000100" "636f756e" "74657200" "04000280"
        "30000180" "0e000100" "696d6d65" "64696174" "65000000" "1c000280" "08000100" "00000000"
        "10000280" "0c000280" "08000100" "00000001"
    )
    assert interface_accept("iifname", "pbxbr").hex() == expected


def test_insert_message_carries_the_comment_as_nft_user_data() -> None:
    kind, _flags, body = ChainRules.insert_message(NFPROTO_IPV4, "filter", "FORWARD",
                                                   interface_accept("iifname", "pbxbr"), "pybridge:netx")
    fields = attrs(body, 4)
    assert kind == 6 and body[0] == NFPROTO_IPV4
    assert fields[NFTA_RULE_USERDATA] == b"\x00\x0epybridge:netx\x00"
    assert fields[NFTA_RULE_EXPRESSIONS] == interface_accept("iifname", "pbxbr")


def test_a_listed_rule_accepts_its_interface_only() -> None:
    rule = _rule(interface_accept("iifname", "pbxbr"), "pybridge:netx")
    assert rule.accepts_interface("iifname", "pbxbr")
    assert not rule.accepts_interface("oifname", "pbxbr")
    assert not rule.accepts_interface("iifname", "pbxb")
    assert not rule.accepts_interface("iifname", "pbxbr0")
    assert _rule(interface_accept("oifname", "pbxbr")).accepts_interface("oifname", "pbxbr")


def test_iptables_written_rule_and_wildcard() -> None:
    """iptables-nft sends the name with its NUL only, and puts an xt match between; a wildcard
    `pbxbr*` is the name without NUL: another rule."""
    u32 = struct.Struct(">I").pack

    def rule_with(name: bytes) -> Rule:
        return _rule(b"".join([
            _expression("meta", attr(2, u32(6)), attr(1, u32(1))),
            _expression("cmp", attr(1, u32(1)), attr(2, u32(0)), attr(3 | 0x8000, attr(1, name))),
            _expression("match", attr(1, b"comment\0")),
            _expression("counter"),
            _expression("immediate", attr(1, u32(0)), attr(2 | 0x8000, attr(2 | 0x8000, attr(1, u32(1))))),
        ]))

    assert rule_with(b"pbxbr\0").accepts_interface("iifname", "pbxbr")
    assert not rule_with(b"pbxbr").accepts_interface("iifname", "pbxbr")
