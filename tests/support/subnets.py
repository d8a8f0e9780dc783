"""Subnets no route on the host and no other live test session uses.

Why: bridges of concurrent sessions share the root namespace, so a test's container subnet must
not overlap a route of the host or a subnet another live session registered.
"""

from __future__ import annotations

import ipaddress
import random

from tests.support.host import ip_json
from tests.support.session import IPNetwork, session, sessions_on_host

__all__ = ["CONTAINER_POOL4", "OUTSIDE_POOL4", "routes_on_host", "unique_subnet"]

# Container subnets (bridge gateways live in the root namespace) and "outside world" subnets.
CONTAINER_POOL4 = ipaddress.ip_network("10.128.0.0/9")
OUTSIDE_POOL4 = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544 benchmarking range


def routes_on_host() -> list[IPNetwork]:
    nets: list[IPNetwork] = []
    for fam in ("-4", "-6"):
        try:
            routes = ip_json(fam, "route", "show", "table", "all")
        except (RuntimeError, ValueError):
            continue
        for r in routes:
            dst = r.get("dst", "")
            if not dst or dst == "default":
                continue
            try:
                nets.append(ipaddress.ip_network(dst, strict=False))
            except ValueError:
                pass
    return nets


def unique_subnet(version: int = 4, prefixlen: int | None = None, *, pool: str | None = None) -> IPNetwork:
    """A subnet no route on the host and no other live session uses, recorded for this session.

    IPv4 comes from 10.128.0.0/9 (or `pool`, e.g. OUTSIDE_POOL4), /24 by default; IPv6 from the
    session's random ULA /48, /64 by default.
    """
    s = session()
    if version == 4:
        base = ipaddress.ip_network(pool) if pool else CONTAINER_POOL4
        plen = prefixlen or 24
    else:
        base = ipaddress.ip_network(pool) if pool else s.v6_base
        plen = prefixlen or 64
    taken: list[IPNetwork] = list(s.subnets) + routes_on_host()
    for rec in sessions_on_host():
        if rec.alive:
            taken.extend(rec.subnets)
    count = 2 ** (plen - base.prefixlen)
    rng = random.Random()
    for attempt in range(4096):
        # IPv6: skip subnet id 0 so the printed form never collapses the prefix into '::'.
        idx = rng.randrange(1 if version == 6 else 0, count) if attempt < 4000 else attempt % count
        net = ipaddress.ip_network((int(base.network_address) + idx * 2 ** (base.max_prefixlen - plen), plen))
        if any(net.version == t.version and net.overlaps(t) for t in taken):
            continue
        s.subnets.append(net)
        if s.registered:
            s.register()
        return net
    raise RuntimeError(f"no free /{plen} left in {base}")
