"""FORWARD accept rules for hosts with a DROP policy (Docker).

Hosts where Docker runs have the iptables FORWARD policy set to DROP. An accept in our own nft
table cannot override a drop in another base chain, so for networks we own we insert (and later
remove) two ACCEPT rules for the bridge into the `filter FORWARD` chain, tagged with a comment.
We never touch rules we did not create.
"""

from __future__ import annotations

import re

from cni_bridge.errors import PluginError
from cni_bridge.firewall.names import RULE_COMMENT_PREFIX
from cni_bridge.kernel import iptables
from cni_bridge.kernel.nfrules import COMMENT_MAX, NFPROTO_IPV4, NFPROTO_IPV6, ChainRules, interface_accept
from cni_bridge.kernel.nft import NftError, nft
from cni_bridge.kernel.nlsock import NetlinkError

FAMILIES = (("ip", NFPROTO_IPV4), ("ip6", NFPROTO_IPV6))
KEYS = ("iifname", "oifname")


def forward_accept(network: str, bridge: str, enable: bool) -> None:
    """Insert (or remove) `-i br -j ACCEPT` and `-o br -j ACCEPT` in filter/FORWARD, only when
    that chain exists. Rules carry our comment so that only ours are ever removed.

    Written as nft rules: iptables-nft shows a native nft rule `iifname "br" counter accept
    comment "pybridge:net"` as `-A FORWARD -i br -m comment --comment "pybridge:net" -j ACCEPT`
    and matches it with -C/-D, so the rules are the same ones the iptables binary would write,
    without its ~3 ms exec per call (this runs on ADD and DEL at an empty network). Over raw
    nfnetlink (kernel.nfrules: a keyed read and a dump of the chain per family, one batch);
    libnftables (`_forward_accept_nft`) if that is refused. Rules an iptables binary wrote
    (comment invisible to nft) are removed with it."""
    comment = f"{RULE_COMMENT_PREFIX}{network}"[:255]
    if len(comment.encode()) <= COMMENT_MAX:
        try:
            _forward_accept_raw(bridge, comment, enable)
            return
        except (NetlinkError, OSError):
            pass
    _forward_accept_nft(bridge, comment, enable)


def _forward_accept_raw(bridge: str, comment: str, enable: bool) -> None:
    changes, iptables_families = [], []
    with ChainRules() as rules:
        for family, nfproto in FAMILIES:
            if not rules.chain_exists(nfproto, "filter", "FORWARD"):
                continue  # no filter table means nobody can have set a DROP policy: add nothing
            ours: dict[str, list[int]] = {key: [] for key in KEYS}
            foreign_candidate = False
            for rule in rules.rules(nfproto, "filter", "FORWARD", mentioning=bridge):
                for key in KEYS:
                    if rule.accepts_interface(key, bridge):
                        if rule.comment == comment:
                            ours[key].append(rule.handle)
                        elif rule.comment is None:
                            foreign_candidate = True  # maybe ours, written by iptables (xt comment)
            if enable:
                changes += [rules.insert_message(nfproto, "filter", "FORWARD", interface_accept(key, bridge), comment)
                            for key in KEYS if not ours[key]]
            else:
                changes += [rules.delete_message(nfproto, "filter", "FORWARD", h) for hs in ours.values() for h in hs]
                if foreign_candidate:
                    iptables_families.append(family)
        if changes:
            rules.batch(changes)
    for family in iptables_families:
        _forward_accept_iptables(family, bridge, comment, enable)


def _forward_accept_nft(bridge: str, comment: str, enable: bool) -> None:
    """The same through libnftables (text listing with handles, then a script per family)."""
    for family, _nfproto in FAMILIES:
        chain = f"{family} filter FORWARD"
        try:  # no filter table means nobody can have set a DROP policy: add nothing
            text = nft.run(f"list chain {chain}", handles=True)
        except (NftError, PluginError):
            continue
        ours: dict[str, list[str]] = {"iifname": [], "oifname": []}
        foreign_candidates = set()
        for key in KEYS:
            pattern = rf'^\s*{key} "{re.escape(bridge)}"\s+(?:counter[^\n]*?)?accept(?P<rest>[^\n]*)# handle (?P<h>\d+)\s*$'
            for m in re.finditer(pattern, text, re.M):
                if f'comment "{comment}"' in m.group("rest"):
                    ours[key].append(m.group("h"))
                elif "comment" not in m.group("rest"):
                    foreign_candidates.add(key)  # maybe ours, written by iptables (xt comment)
        try:
            if enable:
                script = [f'insert rule {chain} {key} "{bridge}" counter accept comment "{comment}"'
                          for key in ("iifname", "oifname") if not ours[key]]
            else:
                script = [f"delete rule {chain} handle {h}" for hs in ours.values() for h in hs]
            if script:
                nft.run("\n".join(script) + "\n")
        except (NftError, PluginError):
            _forward_accept_iptables(family, bridge, comment, enable)
            continue
        if not enable and foreign_candidates:
            _forward_accept_iptables(family, bridge, comment, enable)


def _forward_accept_iptables(family: str, bridge: str, comment: str, enable: bool) -> None:
    """The iptables way, for rules nft cannot attribute (iptables-written comments)."""
    path = iptables.binary(family)
    if path is None:
        return
    for direction in ("-i", "-o"):
        if enable:
            if not _ours_present(path, direction, bridge, comment):
                iptables.run(path, ["-t", "filter", *_rule_args("-I", direction, bridge, comment)])
            continue
        while _ours_present(path, direction, bridge, comment):
            if iptables.run(path, ["-t", "filter", *_rule_args("-D", direction, bridge, comment)]).returncode:
                break


def _rule_args(op: str, direction: str, bridge: str, comment: str) -> list[str]:
    return [op, "FORWARD", direction, bridge, "-m", "comment", "--comment", comment, "-j", "ACCEPT"]


def _ours_present(path: str, direction: str, bridge: str, comment: str) -> bool:
    return iptables.run(path, ["-t", "filter", *_rule_args("-C", direction, bridge, comment)]).returncode == 0
