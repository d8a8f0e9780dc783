"""`cni-bridge gc`: find (and with --apply remove) what pybridge left behind.

What counts as stale, judged from `cni_bridge.inventory` (see `cni-bridge status`):
- a lease (CNI attachment) whose host veth is gone and whose container interface / netns is gone,
  older than --grace: the lease is released and its masquerade entries are removed;
- a masquerade set element whose owner (the attachment's host veth name) no longer exists on the
  host: the element is removed (the network's table goes with its last element);
- a masquerade table of a known network that has no elements;
- a pybridge host veth (`veth` + 11 hex) on the bridge of a pybridge bridge network whose lease
  store is known, that no lease and no Docker endpoint claims: the link is deleted.
Never touched: leases of the Docker IPAM driver and Docker endpoints (dockerd owns them), leases
of attachments that are still attached or cannot be judged ("unknown" in `status`), tables of
networks not found on this host (reported only).

Exit codes: 0 nothing stale (or everything applied), 1 stale items found (dry run), 2 usage
error, 3 some removals failed.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cni_bridge.commands.status import add_source_options, collect

EXIT_CLEAN, EXIT_FOUND, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3
HOST_VETH = re.compile(r"^veth[0-9a-f]{11}$")
log = logging.getLogger("cni_bridge.cli")


@dataclass
class Finding:
    network: str
    what: str
    why: str
    fix: Callable[[], None]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "gc", help="find (and with --apply remove) stale leases, links and masquerade entries",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n", 1)[1].rsplit("\n\nExit codes", 1)[0],
        epilog="Dry run by default: prints what would be removed.\n"
               "exit codes: 0 nothing stale (or all removed), 1 stale items found (dry run), "
               "2 usage error, 3 some removals failed")
    add_source_options(p)
    p.add_argument("--apply", action="store_true", help="remove what is stale (default: only report)")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(func=run)


def _release_lease(net, ep) -> Callable[[], None]:
    def fix() -> None:
        from cni_bridge import firewall
        from cni_bridge.ipam.store import LeaseStore
        from cni_bridge.kernel import netlink
        from cni_bridge.locks import network_lock
        with netlink.root() as host:
            if ep.host_ifname and host.link(ep.host_ifname) is not None:
                raise RuntimeError(f"{ep.host_ifname} reappeared; left alone")
        with network_lock(net.name):
            if ep.host_ifname and net.table_present:
                bridge = net.bridge if net.mode in (None, "bridge") and not net.docker_id else None
                firewall.remove_members(firewall.Masquerade(net.name, bridge, ()), owners=[ep.host_ifname])
        LeaseStore(Path(ep.data_dir), net.name).release(ep.container_id, ep.ifname)
    return fix


def _remove_element(net, owner: str) -> Callable[[], None]:
    def fix() -> None:
        from cni_bridge import firewall
        from cni_bridge.kernel import netlink
        from cni_bridge.locks import network_lock
        with network_lock(net.name):
            with netlink.root() as host:
                if host.link(owner) is not None:
                    raise RuntimeError(f"{owner} reappeared; left alone")
            bridge = net.bridge if net.mode in (None, "bridge") and not net.docker_id else None
            firewall.remove_members(firewall.Masquerade(net.name, bridge, ()), owners=[owner])
    return fix


def _delete_table(net) -> Callable[[], None]:
    def fix() -> None:
        from cni_bridge import firewall
        from cni_bridge.locks import network_lock
        with network_lock(net.name):
            if firewall.members(net.name):
                raise RuntimeError("the table has entries again; left alone")
            firewall.delete_table(net.name, net.bridge if not net.docker_id else None)
    return fix


def _delete_link(name: str) -> Callable[[], None]:
    def fix() -> None:
        from cni_bridge.kernel import netlink
        with netlink.root() as host:
            host.delete_link(name)
    return fix


def findings(inv) -> list[Finding]:
    """Everything stale in the inventory, each with the function that removes it."""
    out: list[Finding] = []
    claimed: dict[str, set[str]] = {}   # bridge -> host veth names some lease or endpoint claims
    for net in inv.networks:
        for ep in net.endpoints:
            if ep.host_ifname and net.bridge:
                claimed.setdefault(net.bridge, set()).add(ep.host_ifname)
    for net in inv.networks:
        live = set()
        for ep in net.endpoints:
            if ep.state == "stale" and ep.source == "cni":
                out.append(Finding(net.name, f"lease {','.join(ep.leased)} of {ep.container_id} {ep.ifname}"
                                   + (f" (+ masquerade {', '.join(ep.masquerade)})" if ep.masquerade else ""),
                                   ep.why, _release_lease(net, ep)))
            elif ep.host_ifname:
                live.add(ep.host_ifname)
        stale_owners = {owner for owner in net.masquerade.values()
                        if owner and owner not in live and owner not in _host_links()
                        and not any(ep.state == "stale" and ep.host_ifname == owner for ep in net.endpoints)}
        for owner in sorted(stale_owners):
            addrs = sorted(a for a, o in net.masquerade.items() if o == owner)
            out.append(Finding(net.name, f"masquerade {', '.join(addrs)} (owner {owner})",
                               f"host link {owner} is gone", _remove_element(net, owner)))
        if net.table_present and not net.masquerade:
            out.append(Finding(net.name, f"empty table inet {net.table}", "no masquerade entries",
                               _delete_table(net)))
        if net.bridge and net.plugin == "pybridge" and net.mode in (None, "bridge") and net.data_dir:
            for name in sorted(_ports_of(net.bridge)):
                if HOST_VETH.match(name) and name not in claimed.get(net.bridge, set()):
                    out.append(Finding(net.name, f"host link {name} on {net.bridge}",
                                       "no lease or endpoint claims it", _delete_link(name)))
    return out


_LINKS: dict[str, object] | None = None


def _host_links() -> dict[str, object]:
    """Host link details by name (read once per run)."""
    global _LINKS
    if _LINKS is None:
        from cni_bridge.kernel import netlink
        with netlink.root() as host:
            _LINKS = {d.link.name: d for d in host.all_link_details()}
    return _LINKS


def _ports_of(bridge: str) -> list[str]:
    links = _host_links()
    master = links.get(bridge)
    if master is None:
        return []
    return [name for name, d in links.items() if d.link.master == master.link.index]


def run(args: argparse.Namespace) -> int:
    global _LINKS
    _LINKS = None
    inv = collect(args)
    found = findings(inv)
    failed = 0
    results = []
    for item in found:
        outcome = "would remove"
        if args.apply:
            try:
                item.fix()
                outcome = "removed"
                log.info("gc net=%s removed %s (%s)", item.network, item.what, item.why)
            except Exception as exc:  # noqa: BLE001 - report and go on with the others
                failed += 1
                outcome = f"failed: {exc}"
                log.warning("gc net=%s could not remove %s: %s", item.network, item.what, exc)
        results.append({"network": item.network, "what": item.what, "why": item.why, "outcome": outcome})
    if args.json:
        import json
        json.dump({"applied": args.apply, "findings": results,
                   "foreign_tables": inv.foreign_tables}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for r in results:
            print(f"{r['outcome']}: network {r['network']}: {r['what']} ({r['why']})")
        for table in inv.foreign_tables:
            print(f"left alone: nft table inet {table} (no network found for it; "
                  "pass its --conf-dir/--data-dir to judge it)")
        if not results:
            print("nothing stale")
    if failed:
        return EXIT_FAILED
    return EXIT_FOUND if found and not args.apply else EXIT_CLEAN
