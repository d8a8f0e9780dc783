"""`cni-bridge status`: what pybridge has on this host, as a tree or as JSON.

    network  [mode, bridge/master, masquerade table]
      endpoint (container id, ifname) -> host veth -> container netns, interface, addresses, MAC

Exit codes: 0 everything looks consistent, 1 problems were found (listed; `cni-bridge gc` may fix
them), 2 bad usage. Read-only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cni_bridge.dhcp import server as dhcp_server
from cni_bridge.inventory import DEFAULT_CNI_CACHE_DIR, DEFAULT_CONF_DIR
from cni_bridge.inventory import collect as collect_inventory
from cni_bridge.ipam.backend import spec_at
from cni_bridge.ipam.config import DEFAULT_DATA_DIR
from cni_bridge.state import DEFAULT_STATE_DIR
from cni_bridge.vm.names import DEFAULT_PORT_DIR

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def add_source_options(p: argparse.ArgumentParser) -> None:
    """Where to look; shared by status and gc."""
    p.add_argument("networks", nargs="*", metavar="NETWORK", help="only these networks (default: all found)")
    p.add_argument("--data-dir", type=Path, action="append", default=None, metavar="DIR",
                   help=f"IPAM lease store (repeatable; default {DEFAULT_DATA_DIR}, plus every ipam.dataDir "
                        "named by a config in --conf-dir)")
    p.add_argument("--conf-dir", type=Path, action="append", default=None, metavar="DIR",
                   help=f"CNI config directory (repeatable; default {DEFAULT_CONF_DIR})")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                   help=f"Docker driver state (default {DEFAULT_STATE_DIR})")
    p.add_argument("--cni-cache-dir", type=Path, default=DEFAULT_CNI_CACHE_DIR,
                   help=f"libcni cache, for netns paths (default {DEFAULT_CNI_CACHE_DIR})")
    p.add_argument("--port-dir", type=Path, default=DEFAULT_PORT_DIR,
                   help=f"VM port records of `cni-bridge vm` (default {DEFAULT_PORT_DIR}; $PYBRIDGE_VM_DIR)")
    p.add_argument("--grace", type=float, default=60.0, metavar="SECONDS",
                   help="a lease younger than this is never judged stale (an ADD may be running; default 60)")


def collect(args: argparse.Namespace):
    return collect_inventory(data_dirs=args.data_dir or [DEFAULT_DATA_DIR],
                             conf_dirs=args.conf_dir or [DEFAULT_CONF_DIR],
                             state_dir=args.state_dir, cache_dir=args.cni_cache_dir,
                             only=args.networks or None, grace=args.grace, port_dir=args.port_dir)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "status", help="show networks, bridges, endpoints and masquerade state",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Show every pybridge network found on this host (CNI configs, IPAM lease "
                    "stores, Docker driver state) as a tree: network -> bridge or master -> "
                    "endpoints -> container (id, netns, interface, addresses, MAC), with the "
                    "masquerade table and its entries, then the DHCP servers of `dhcp: true` "
                    "networks (process, namespace, veth, address, entries). Read-only.",
        epilog="exit codes: 0 consistent, 1 problems found (see `cni-bridge gc`), 2 usage error")
    add_source_options(p)
    p.add_argument("--json", action="store_true", help="print the inventory as JSON")
    p.set_defaults(func=run)


def _age(since: float | None) -> str:
    if since is None:
        return ""
    seconds = max(0, int(time.time() - since))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _network_items(net) -> list[list[str]]:
    """The children of one network in the tree: each a first line plus indented detail lines."""
    items: list[list[str]] = []
    if net.bridge:
        state = ("missing" if net.bridge_present is False else
                 ("up" if net.bridge_up else "down") if net.bridge_present else "?")
        what = "master" if net.mode in ("macvlan", "ipvlan", "vlan", "macvtap") else "bridge"
        items.append([f"{what} {net.bridge} [{state}] {' '.join(net.bridge_addresses)}".rstrip()])
    if net.vxlan:
        vx = net.vxlan
        how = f"group {vx['group']}" if vx["group"] else f"peers {', '.join(vx['peers']) or '-'}"
        item = [f"vxlan {vx['device']} VNI {vx['vni']} local {vx['local']} port {vx['port']} "
                f"[{'up' if vx['up'] else 'down'}] {how}"]
        item += [f"remote {e['mac']} {' '.join(e['ips'])} via {e['vtep']}".replace("  ", " ")
                 for e in vx["endpoints"]]
        items.append(item)
    if net.ip_masq or net.table_present:
        masq = (f"table inet {net.table}, {len(net.masquerade)} entries" if net.table_present
                else "no table (no masqueraded containers)")
        items.append([f"masquerade {'on' if net.ip_masq else 'off'}: {masq}"])
    if net.data_dir:
        items.append([f"leases in {spec_at(net.data_dir).describe()}"])
    for ep in net.endpoints:
        who = ep.ifname if ep.source == "vm" else f"{ep.container_id[:12]} {ep.ifname}"
        item = [f"{ep.source} {who} [{ep.state}]"
                f" leased {','.join(ep.leased) or '-'} {_age(ep.since)}".rstrip()]
        if ep.host_ifname:
            link = f"on {ep.host_master}" if ep.host_master else ("present" if ep.host_link else "gone")
            item.append(f"host {ep.host_ifname} {link}")
        c = ep.container
        if c is not None:
            detail = f"{c.ifname} {c.mac} {' '.join(c.addresses)}".rstrip() if c.present else "interface not found"
            item.append(f"netns {c.netns or '?'}: {detail}")
        if ep.masquerade:
            item.append(f"masquerade {', '.join(ep.masquerade)}")
        if ep.state != "attached":
            item.append(f"({ep.why})")
        items.append(item)
    items += [[f"! {problem}"] for problem in net.problems]
    return items


def render(inv) -> list[str]:
    """The human-readable tree."""
    lines: list[str] = []
    if not inv.networks:
        lines.append("no pybridge networks found")
    for net in inv.networks:
        lines.append(f"network {net.name}  ({' '.join(f for f in (net.plugin or '?', net.mode or '') if f)})")
        items = _network_items(net)
        for i, item in enumerate(items):
            branch, pad = ("└─", "   ") if i == len(items) - 1 else ("├─", "│  ")
            lines.append(f"{branch} {item[0]}")
            lines += [f"{pad}   {detail}" for detail in item[1:]]
    for table in inv.foreign_tables:
        lines.append(f"nft table inet {table}: no network found for it here")
    for problem in inv.problems:
        lines.append(f"! {problem}")
    return lines


def dhcp_lines(servers: list[dict]) -> list[str]:
    """The DHCP servers of `dhcp: true` networks (cni_bridge/dhcp), and strays of none."""
    lines = []
    for s in servers:
        if s["network"] is None:
            what = " ".join(f"{k} {s[k]}" for k in ("netns", "veth", "directory", "pid") if s.get(k))
            lines.append(f"! DHCP server leftover without entries: {what} (`cni-bridge gc` removes it)")
            continue
        state = f"dnsmasq pid {s['pid']}" if s["pid"] else "dnsmasq NOT running"
        lines.append(f"dhcp {s['network']}: {state}, netns {s['netns']}"
                     f"{'' if s['netns_present'] else ' (missing)'}, {s['veth']} on {s['veth_master'] or '-'}, "
                     f"address {s['address'] or '-'}, {s['entries']} entries")
    return lines


def has_problems(inv) -> bool:
    return bool(inv.problems or any(n.problems for n in inv.networks)
                or any(e.state == "stale" for n in inv.networks for e in n.endpoints))


def run(args: argparse.Namespace) -> int:
    inv = collect(args)
    servers = [s for s in dhcp_server.servers()
               if not args.networks or s["network"] is None or s["network"] in args.networks]
    if args.json:
        json.dump({**inv.to_dict(), "dhcp": servers}, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print("\n".join(render(inv) + dhcp_lines(servers)))
    broken = any(s["network"] is None or not s["pid"] for s in servers)
    return EXIT_PROBLEMS if has_problems(inv) or broken else EXIT_OK
