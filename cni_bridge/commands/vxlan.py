"""`cni-bridge vxlan local|reconcile|show`: the peers of vxlan networks without multicast.

    cni-bridge vxlan local [VNI]                   what this host publishes: VTEP + attachments (JSON)
    cni-bridge vxlan reconcile VNI [FILE|-]        program the remote endpoints given as JSON
    cni-bridge vxlan show VNI                      the device's programmed peers and endpoints (JSON)

`reconcile` takes the complete set of the VNI's endpoints, e.g. the `local` output of every
host, concatenated: `[{"mac": ..., "vtep": ..., "ips": [...]}, ...]`; this host's own are
skipped. It is how static peers are distributed by hand or by configuration management.
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
from cni_bridge.overlay import registry
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
