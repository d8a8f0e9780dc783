"""Packet-filter policy: the only place that decides which rules pybridge writes. The kernel
side (libnftables, raw nfnetlink, iptables execs) is cni_bridge.kernel; these modules say what
the rules mean.

    names        table and rule-comment names, so that only our own rules are ever touched
    masquerade   one nft table per network: address sets and one masquerade rule per family
    forward      FORWARD accept rules for a network's bridge, for hosts with a DROP policy
    internal     the drops that wall off internal networks (Docker --internal), in `inet pybridge_internal`
    portmap      published ports: DNAT through maps in the shared table `inet pybridge_ports`
    isolation    drops between isolated networks, in the shared table `inet pybridge_isolation`
(these two are imported lazily by their callers: ADDs that use neither never load them)

The callers' API is re-exported here (`firewall.add_members(...)`).
"""

from cni_bridge.firewall.forward import forward_accept
from cni_bridge.firewall.masquerade import (
                                            Masquerade,
                                            add_members,
                                            delete_table,
                                            members,
                                            network_rules,
                                            pybridge_tables,
                                            remove_members,
                                            table_exists,
)
from cni_bridge.firewall.names import RULE_COMMENT_PREFIX, table_name

__all__ = ["Masquerade", "RULE_COMMENT_PREFIX", "add_members", "delete_table", "forward_accept", "members", "network_rules",
           "pybridge_tables", "remove_members", "table_exists", "table_name"]
