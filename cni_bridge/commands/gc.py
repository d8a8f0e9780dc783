"""`cni-bridge gc`: find (and with --apply remove) what pybridge left behind.

What counts as stale, judged from `cni_bridge.inventory` (see `cni-bridge status`):
- a lease (CNI attachment) whose host veth is gone and whose container interface / netns is gone,
  older than --grace: the lease is released and its masquerade entries are removed;
- a masquerade set element whose owner (the attachment's host veth name) no longer exists on the
  host: the element is removed (the network's table goes with its last element);
- a masquerade table of a known network that has no elements;
- a DHCP server (`dhcp: true`) none of whose entries' ports (host veth, tap) exists any more, and
  a `pbdhcp-*` namespace, `pbd` veth or pybridge dnsmasq that no network's entries claim: stopped,
  removed, its own address released; and the address of a DHCP server that is gone;
- a pybridge host veth (`veth` + 11 hex) on the bridge of a pybridge bridge network whose lease
  store is known, that no lease of any store and no Docker endpoint claims: the link is deleted.
- a pybridge ifb device (`pbifb` + 10 hex, made for bandwidth shaping) whose host veth is gone:
  the device is deleted.
Never touched: leases of the Docker IPAM driver and Docker endpoints (dockerd owns them), leases
of attachments that are still attached or cannot be judged ("unknown" in `status`), tables of
networks not found on this host (reported only). Each removal re-verifies its item right before
acting: what is in use again by then is kept.

Exit codes: 0 nothing stale (or everything applied), 1 stale items found (dry run), 2 usage
error, 3 some removals failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from cni_bridge.commands.status import add_source_options, collect
from cni_bridge.dhcp import server as dhcp_server
from cni_bridge.inventory.model import STALE, Inventory
from cni_bridge.inventory.reclaim import Kept, remove
from cni_bridge.inventory.stale import Finding, findings, held_back

EXIT_CLEAN, EXIT_FOUND, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3
WOULD, REMOVED, KEPT, FAILED = "would remove", "removed", "kept", "failed"
log = logging.getLogger("cni_bridge.cli")

__all__ = ["collect", "findings", "register", "run"]  # gather and judge steps (tests step in between)


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


def run(args: argparse.Namespace) -> int:
    """Gather (`collect`), judge (`findings`), act (`apply`), render."""
    inv = collect(args)
    found = findings(inv)
    results = [apply(item, inv) if args.apply else outcome(item, WOULD) for item in found]
    results += dhcp_results(args, inv)
    render_json(results, inv, args.apply) if args.json else render_text(results, inv)
    return exit_code(results, args.apply)


def apply(item: Finding, inv: Inventory) -> dict[str, Any]:
    """Remove one finding; the removal itself re-verifies it (inventory/reclaim.py)."""
    try:
        remove(item, inv)
    except Kept as exc:
        log.info("gc net=%s kept %s: %s", item.network, item.what, exc)
        return outcome(item, f"{KEPT}: {exc}")
    except Exception as exc:  # noqa: BLE001 - report and go on with the others
        log.warning("gc net=%s could not remove %s: %s", item.network, item.what, exc)
        return outcome(item, f"{FAILED}: {exc}")
    log.info("gc net=%s removed %s (%s)", item.network, item.what, item.why)
    return outcome(item, REMOVED)


def dhcp_results(args: argparse.Namespace, inv: Inventory) -> list[dict[str, Any]]:
    """DHCP servers (cni_bridge/dhcp) whose ports are all gone, and their leftovers (a
    namespace, veth or dnsmasq without a directory): stopped, with their address released; and
    the address a lease store still holds for a server that is gone."""
    out = []
    for net in inv.networks:
        for ep in net.endpoints:
            if ep.source != "dhcp" or ep.state != STALE or ep.data_dir is None:
                continue
            result = {"network": net.name, "what": f"lease {', '.join(ep.leased)} of the DHCP server",
                      "why": ep.why, "outcome": WOULD}
            if args.apply:
                try:
                    released = dhcp_server.release_stale_address(net.name, ep.data_dir,
                                                                 (ep.container_id, ep.ifname))
                    result["outcome"] = REMOVED if released else f"{KEPT}: the server is back"
                except Exception as exc:  # noqa: BLE001 - report and go on with the others
                    result["outcome"] = f"{FAILED}: {exc}"
            out.append(result)
    for server in dhcp_server.orphans():
        if args.networks and server["network"] not in args.networks:
            continue
        what = "DHCP server " + " ".join(f"{k} {server[k]}" for k in ("netns", "veth", "pid") if server.get(k))
        why = "no port of its entries exists" if server["network"] else "no network's entries claim it"
        result = {"network": server["network"] or "-", "what": what, "why": why, "outcome": WOULD}
        if args.apply:
            try:
                dhcp_server.reclaim(server)
                result["outcome"] = REMOVED
            except Exception as exc:  # noqa: BLE001 - report and go on with the others
                result["outcome"] = f"{FAILED}: {exc}"
        out.append(result)
    return out


def outcome(item: Finding, what: str) -> dict[str, Any]:
    return {"network": item.network, "what": item.what, "why": item.why, "outcome": what}


def exit_code(results: list[dict[str, Any]], applied: bool) -> int:
    if any(r["outcome"].startswith(FAILED) for r in results):
        return EXIT_FAILED
    return EXIT_FOUND if results and not applied else EXIT_CLEAN


def render_json(results: list[dict[str, Any]], inv: Inventory, applied: bool) -> None:
    json.dump({"applied": applied, "findings": results, "foreign_tables": inv.foreign_tables,
               "left_alone": held_back(inv)}, sys.stdout, indent=2)
    sys.stdout.write("\n")


def render_text(results: list[dict[str, Any]], inv: Inventory) -> None:
    for r in results:
        where = f"network {r['network']}: " if r["network"] else ""
        print(f"{r['outcome']}: {where}{r['what']} ({r['why']})")
    for table in inv.foreign_tables:
        print(f"left alone: nft table inet {table} (no network found for it; "
              "pass its --conf-dir/--data-dir to judge it)")
    for line in held_back(inv):
        print(f"left alone: {line}")
    if not results:
        print("nothing stale")
