"""How pybridge names what it puts in the packet filter, so that it only ever touches its own."""

from __future__ import annotations

import hashlib
import re

RULE_COMMENT_PREFIX = "pybridge:"
# Tables every pybridge network shares (portmap.py, isolation.py); a network's own table always
# ends in a hash (table_name), so no network's table can be named like these.
SHARED_TABLES = ("pybridge_ports", "pybridge_isolation", "pybridge_internal")


def table_name(network: str) -> str:
    """nft identifiers allow [A-Za-z0-9_]; network names also allow '.' and '-'. A short hash
    of the real name keeps two names that sanitise alike apart."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", network)[:40]
    digest = hashlib.sha1(network.encode()).hexdigest()[:6]
    return f"pybridge_{safe}_{digest}"
