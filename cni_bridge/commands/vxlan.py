"""`cni-bridge vxlan local|reconcile|show|sync`: the peers of vxlan networks without multicast.

    cni-bridge vxlan local [VNI]                   what this host publishes: VTEP + attachments (JSON)
    cni-bridge vxlan reconcile VNI [FILE|-]        program the remote endpoints given as JSON
    cni-bridge vxlan show VNI                      the device's programmed peers and endpoints (JSON)
    cni-bridge vxlan sync [--watch]                publish to / program from etcd (overlay/distribute.py)

`reconcile` takes the complete set of the VNI's endpoints, e.g. the `local` output of every
host, concatenated: `[{"mac": ..., "vtep": ..., "ips": [...]}, ...]`; this host's own are
skipped. It is how static peers are distributed by hand or by configuration management. Networks whose
IPAM store is etcd are distributed by `sync` (also run inside `cni-bridge serve`).
Exit codes: 0 done, 1 error (message on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cni_bridge.errors import PluginError
from cni_bridge.kernel import netlink
from cni_bridge.modes.vxlan import device_name
from cni_bridge.overlay import distribute, registry
from cni_bridge.overlay.peers import RemoteEndpoint
from cni_bridge.overlay.reconcile import current, peers_of, reconcile

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "vxlan", help="show and program the peers of vxlan networks",
        description="vxlan networks without a multicast group need the remote endpoints (MAC, IPs, "
                    "VTEP) of their VNI programmed into the vxlan device's FDB and neighbour table. "
                    "`local` prints what this host contributes, `reconcile` makes the device hold "
                    "exactly a given set, `show` prints what it holds.",
        epilog="exit codes: 0 ok, 1 error, 2 usage error")
    sub = p.add_subparsers(dest="vxlan_command", metavar="ACTION")
    p.set_defaults(func=lambda args: _usage(p))
    local = sub.add_parser("local", help="this host's VTEP and attachments per VNI (JSON)")
    local.add_argument("vni", nargs="?", type=int, help="only this VNI")
    local.set_defaults(func=run_local)
    rec = sub.add_parser("reconcile", help="program a VNI's remote endpoints (JSON list) into the kernel")
    rec.add_argument("vni", type=int)
    rec.add_argument("endpoints", nargs="?", default="-", metavar="FILE",
                     help='JSON list of {"mac", "vtep", "ips"} (default: standard input)')
    rec.set_defaults(func=run_reconcile)
    show = sub.add_parser("show", help="the peers and remote endpoints programmed for a VNI (JSON)")
    show.add_argument("vni", type=int)
    show.set_defaults(func=run_show)
    sync = sub.add_parser(
        "sync", help="publish this host's endpoints in etcd and program the other hosts' (networks "
                     "whose ipam store is etcd)",
        description="One round: this host's attachments of every VNI whose network keeps its leases in "
                    "etcd are published there (missing keys put, keys of gone attachments deleted), and "
                    "each VNI's vxlan device is made to hold exactly the other hosts' endpoints. With "
                    "--watch, a round at start, then one whenever etcd reports a change (a watch) and "
                    "at least one per interval, until SIGTERM/SIGINT: what "
                    "CNI-only hosts run next to the plugin (`cni-bridge serve` runs it itself). etcd "
                    "unreachable: the kernel entries are kept as they are and the next round retries.",
        epilog="exit codes: 0 ok, 1 a round had errors (one-shot), 2 usage error")
    sync.add_argument("--watch", action="store_true", help="keep running: a round on every etcd change and local ADD/DEL, at least one per interval")
    sync.add_argument("--interval", type=float, default=distribute.DEFAULT_INTERVAL,
                      help=f"with --watch, at most this many seconds between rounds (default {distribute.DEFAULT_INTERVAL:g}); "
                           "this host's keys live on an etcd lease of three intervals")
    sync.set_defaults(func=run_sync)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def local_document(vtep: registry.LocalVtep) -> dict[str, Any]:
    return {"vni": vtep.vni, "vtep": vtep.local, "port": vtep.port, "network": vtep.network,
            "endpoints": [{"mac": a.mac, "vtep": vtep.local, "ips": list(a.ips), "containerId": a.container_id,
                           "ifname": a.ifname} for a in vtep.attachments]}


def run_local(args: argparse.Namespace) -> int:
    vteps = registry.local_vteps() if args.vni is None else [v for v in [registry.local_vtep(args.vni)] if v]
    json.dump([local_document(v) for v in vteps], sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK


def parse_endpoints(document: Any) -> list[RemoteEndpoint]:
    """A JSON list of endpoint objects (extra keys, e.g. containerId, are ignored)."""
    if not isinstance(document, list):
        raise ValueError("expected a JSON list of endpoint objects")
    return [RemoteEndpoint.of(e["mac"], e["vtep"], e.get("ips") or []) for e in document]


def run_reconcile(args: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read() if args.endpoints == "-" else open(args.endpoints).read()
        endpoints = parse_endpoints(json.loads(text))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"cni-bridge vxlan reconcile: bad endpoints: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        changes = reconcile(args.vni, endpoints)
    except PluginError as exc:
        print(f"cni-bridge vxlan reconcile: {exc.msg}", file=sys.stderr)
        return EXIT_ERROR
    print(f"fdb +{len(changes.fdb_add)} -{len(changes.fdb_delete)}, "
          f"neighbours +{len(changes.neighbour_set)} -{len(changes.neighbour_delete)}")
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    name = device_name(args.vni)
    with netlink.root() as host:
        details = host.vxlan_details(name)
        if details is None or details.vni != args.vni:
            print(f"cni-bridge vxlan show: no vxlan device {name}", file=sys.stderr)
            return EXIT_ERROR
        flood, remote = peers_of(current(host, details.link.index))
    json.dump({"device": name, "vni": args.vni, "local": details.local, "group": details.group,
               "port": details.port, "peers": flood, "endpoints": remote}, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK


def _round_line(result: distribute.Round) -> str:
    changed = sum(len(p.fdb_add) + len(p.fdb_delete) + len(p.neighbour_set) + len(p.neighbour_delete)
                  for p in result.changes.values() if p is not None)
    return (f"vnis {len(result.changes)}, published {result.published}, withdrawn {result.withdrawn}, "
            f"kernel entries changed {changed}")


def run_sync(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        print("cni-bridge vxlan sync: --interval must be positive", file=sys.stderr)
        return EXIT_USAGE
    if not args.watch:
        result = distribute.sync_once()
        for error in result.errors:
            print(f"cni-bridge vxlan sync: {error}", file=sys.stderr)
        print(_round_line(result))
        return EXIT_ERROR if result.errors else EXIT_OK
    import signal
    import threading
    stop = threading.Event()

    def finish(*_: Any) -> None:  # also ends a round blocked in an etcd watch
        stop.set()
        raise SystemExit(EXIT_OK)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, finish)

    def report(result: distribute.Round) -> None:
        if result.published or result.withdrawn or any(result.changes.values()):
            print(_round_line(result), flush=True)
    distribute.run_loop(stop, interval=args.interval, report=report)
    return EXIT_OK
