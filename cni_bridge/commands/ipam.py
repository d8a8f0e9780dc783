"""`cni-bridge ipam ls|release|migrate`: read and edit the pybridge-ipam lease store as an operator.

    cni-bridge ipam ls [NETWORK] [--json]
    cni-bridge ipam release NETWORK (--address A | --container ID [--ifname IF])
    cni-bridge ipam migrate NETWORK --from file:DIR --to etcd:URL[,URL...]

The store is the file store in --data-dir, or etcd with --ipam-store etcd --etcd-endpoints ...
(`ls` then shows every host's leases, with a HOST column).

`release` takes the store's lock like the plugin does, so it is safe while containers start.
Exit codes: 0 done, 1 nothing matched (release) or the store could not be read, 2 bad usage.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys
import time
from pathlib import Path

from cni_bridge.commands.storeopts import add_store_arguments, store_spec
from cni_bridge.errors import PluginError
from cni_bridge.ipam.config import DEFAULT_DATA_DIR

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("cni_bridge.cli")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ipam", help="list or release IPAM leases",
        description="Inspect and edit the pybridge-ipam lease store (file: one directory per network "
                    "under the data directory, one file per leased address; etcd: keys under the "
                    "prefix, shared by every host).",
        epilog="exit codes: 0 ok, 1 no matching lease / unreadable store, 2 usage error")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help=f"lease store (the ipam.dataDir of the network; default {DEFAULT_DATA_DIR})")
    add_store_arguments(p)
    sub = p.add_subparsers(dest="ipam_command", metavar="ACTION")
    p.set_defaults(func=lambda args: _usage(p))

    ls = sub.add_parser("ls", help="list leases: network, address, container id, ifname, since",
                        description="List the leases of one network or of every network in the store.")
    ls.add_argument("network", nargs="?", metavar="NETWORK", help="only this network (default: all)")
    ls.add_argument("--json", action="store_true", help="one JSON array of lease objects")
    ls.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help="as above, after the action")
    add_store_arguments(ls, default=argparse.SUPPRESS)
    ls.set_defaults(func=run_ls)

    rel = sub.add_parser(
        "release", help="free leases by address or by container",
        description="Free one address, or every address of a container (optionally only one of "
                    "its interfaces). Does not touch the container's interfaces or masquerade "
                    "entries: use `cni-bridge gc` or a CNI DEL for those.")
    rel.add_argument("network", metavar="NETWORK")
    what = rel.add_mutually_exclusive_group(required=True)
    what.add_argument("--address", help="the leased IP address")
    what.add_argument("--container", metavar="ID", help="container id (CNI_CONTAINERID)")
    rel.add_argument("--ifname", help="with --container: only this interface (default: all of them)")
    rel.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help="as above, after the action")
    add_store_arguments(rel, default=argparse.SUPPRESS)
    rel.set_defaults(func=run_release)

    mig = sub.add_parser(
        "migrate", help="copy a network's leases from a file store into etcd",
        description="Copy every lease of NETWORK from a file store into an etcd store, as leases of "
                    "this host ($PYBRIDGE_HOST_ID or the host name) with their owners, so a DEL or GC "
                    "through the etcd store frees them. Refuses (exit 1, nothing written) if any of "
                    "the addresses or owners is already in etcd. The file store is left as it is.",
        epilog="example: cni-bridge ipam migrate net1 --from file:/var/lib/cni/pybridge "
               "--to etcd:http://10.0.0.1:2379,http://10.0.0.2:2379")
    mig.add_argument("network", metavar="NETWORK")
    mig.add_argument("--from", dest="source", required=True, metavar="file:DIR", help="the file store")
    mig.add_argument("--to", dest="target", required=True, metavar="etcd:URL[,URL...]", help="the etcd cluster")
    add_store_arguments(mig, default=argparse.SUPPRESS)
    mig.set_defaults(func=run_migrate)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _since(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def run_ls(args: argparse.Namespace) -> int:
    # lazy, like run_release's: the lease store (~10 ms) is not for every command that builds the parser
    from cni_bridge.ipam.backend import list_networks, open_store
    spec = store_spec(args, args.data_dir)
    try:
        names = [args.network] if args.network else list_networks(spec)
        leases = [(name, lease) for name in names for lease in open_store(spec, name).all_leases()]
    except PluginError as exc:
        print(f"cni-bridge ipam ls: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if args.json:
        json.dump([{"network": name, **lease.to_dict()} for name, lease in leases], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    shared = spec.type == "etcd"
    rows = [["NETWORK", "ADDRESS", *(["HOST"] if shared else []), "CONTAINER ID", "IFNAME", "SINCE"]]
    rows += [[name, f"{lease.address}/{lease.subnet.prefixlen}", *([lease.host or "-"] if shared else []),
              lease.container_id, lease.ifname, _since(lease.since)] for name, lease in leases]
    print("\n".join(_table(rows)))
    return EXIT_OK


def run_release(args: argparse.Namespace) -> int:
    from cni_bridge.ipam.backend import open_store  # lazy: see run_ls
    if args.ifname and not args.container:
        print("cni-bridge ipam release: --ifname needs --container", file=sys.stderr)
        return EXIT_USAGE
    try:
        store = open_store(store_spec(args, args.data_dir), args.network)
        if args.address:
            try:
                address = ipaddress.ip_address(args.address)
            except ValueError:
                print(f"cni-bridge ipam release: {args.address!r} is not an IP address", file=sys.stderr)
                return EXIT_USAGE
            lease = store.release_address(address)
            released = [lease] if lease is not None else []
        else:
            ifnames = [args.ifname] if args.ifname else sorted(
                {lease.ifname for lease in store.all_leases() if lease.container_id == args.container})
            released = [lease for ifname in ifnames for lease in store.release(args.container, ifname)]
    except PluginError as exc:
        print(f"cni-bridge ipam release: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.code in (4, 7) else EXIT_NOT_FOUND
    if not released:
        print(f"cni-bridge ipam release: no matching lease in network {args.network} ({store.dir})",
              file=sys.stderr)
        return EXIT_NOT_FOUND
    owners = sorted({lease.owner for lease in released})
    log.info("ipam release net=%s %s", args.network, "; ".join(
        f"id={cid[:12]} if={ifn} addresses={','.join(str(l.address) for l in released if l.owner == (cid, ifn))}"
        for cid, ifn in owners))
    for lease in released:
        print(f"released {lease.address} ({lease.container_id} {lease.ifname})")
    return EXIT_OK


def run_migrate(args: argparse.Namespace) -> int:
    from cni_bridge.ipam.backend import open_store  # lazy: see run_ls
    kind_from, _, where_from = args.source.partition(":")
    kind_to, _, where_to = args.target.partition(":")
    if kind_from != "file" or not where_from.startswith("/") or kind_to != "etcd" or not where_to:
        print("cni-bridge ipam migrate: --from file:/DIR --to etcd:URL[,URL...]", file=sys.stderr)
        return EXIT_USAGE
    args.ipam_store, args.etcd_endpoints = "etcd", where_to
    try:
        leases = open_store(store_spec(argparse.Namespace(ipam_store="file"), Path(where_from)),
                            args.network).all_leases()
        target = open_store(store_spec(args, Path(where_from)), args.network)
        copied = target.import_leases(leases)  # type: ignore[attr-defined]
    except PluginError as exc:
        print(f"cni-bridge ipam migrate: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.code == 4 else EXIT_NOT_FOUND
    log.info("ipam migrate net=%s from=%s to=%s leases=%d", args.network, args.source, args.target, copied)
    print(f"copied {copied} leases of {args.network} to {target.dir}")
    return EXIT_OK
