"""`cni-bridge vm attach|detach|ls`: tap ports on pybridge networks for VMs on this host.

    cni-bridge vm attach NETWORK [--name TAP] [--mac MAC] [--owner UID] [--group GID] [--multi-queue]
    cni-bridge vm detach NETWORK --name TAP
    cni-bridge vm ls [--json]

NETWORK is a CNI network name (its config in --cni-conf-dir) or a pybridge Docker network id.
`attach` prints {"tap", "mac", "ips", "gateway", ...}: give the VMM the tap and the guest NIC the
MAC (QEMU: -netdev tap,id=n0,ifname=TAP,script=no,downscript=no -device virtio-net-pci,netdev=n0,mac=MAC).
Exit codes: 0 done, 1 the operation failed (the message says why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import grp
import json
import logging
import pwd
import sys
from pathlib import Path
from typing import Any, Callable

from cni_bridge.cni.handler import validate_mac
from cni_bridge.errors import INVALID_CONFIG, PluginError
from cni_bridge.inventory import DEFAULT_CONF_DIR
from cni_bridge.kernel import netlink
from cni_bridge.state import DEFAULT_STATE_DIR
from cni_bridge.vm import ports
from cni_bridge.vm.networks import resolve

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("cni_bridge.cli")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "vm", help="tap ports for VMs on pybridge networks (attach, detach, ls)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n", 1)[1].rsplit("\nExit codes", 1)[0],
        epilog="exit codes: 0 done, 1 failed, 2 usage error")
    p.set_defaults(func=lambda args: _usage(p))
    sub = p.add_subparsers(dest="vm_command", metavar="ACTION")

    at = sub.add_parser("attach", help="create a tap on the network's bridge with a lease; prints JSON",
                        description="Create a persistent tap device on NETWORK's bridge (bringing the bridge up "
                                    "as a container's ADD does), lease it an address of the network's range, "
                                    "and print {tap, mac, ips, gateway}: the MAC is the one the guest NIC must use.")
    _network_options(at)
    at.add_argument("--name", metavar="TAP", help="tap name (default pbtap + 10 hex digits of network and MAC)")
    at.add_argument("--mac", help="the guest NIC's MAC (default: a random locally administered one)")
    at.add_argument("--owner", metavar="UID", help="user (name or uid) that may open the tap without privileges")
    at.add_argument("--group", metavar="GID", help="group (name or gid) that may open the tap")
    at.add_argument("--multi-queue", action="store_true",
                    help="IFF_MULTI_QUEUE (the VMM must open it so too, e.g. QEMU queues=N, N > 1)")
    at.set_defaults(func=run_attach)

    de = sub.add_parser("detach", help="remove a VM port: tap, lease, masquerade entries (idempotent)",
                        description="Remove the port TAP of NETWORK: the tap, its lease and masquerade entries, "
                                    "its record, and the bridge when this port's attach created it and no "
                                    "other port is left on it. Detaching a port that is gone is no error.")
    _network_options(de)
    de.add_argument("--name", metavar="TAP", required=True, help="the port's tap")
    de.set_defaults(func=run_detach)

    ls = sub.add_parser("ls", help="list VM ports: network, tap, mac, addresses",
                        description="List the VM ports recorded on this host and whether each tap exists.")
    ls.add_argument("--json", action="store_true", help="one JSON array of port records")
    ls.add_argument("--port-dir", type=Path, default=ports.DEFAULT_PORT_DIR,
                    help=f"port records (default {ports.DEFAULT_PORT_DIR}; $PYBRIDGE_VM_DIR)")
    ls.set_defaults(func=run_ls)


def _network_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("network", metavar="NETWORK", help="CNI network name, or pybridge Docker network id")
    p.add_argument("--cni-conf-dir", type=Path, action="append", default=None, metavar="DIR",
                   help=f"CNI config directory (repeatable; default {DEFAULT_CONF_DIR})")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                   help=f"Docker driver state (default {DEFAULT_STATE_DIR})")
    p.add_argument("--port-dir", type=Path, default=ports.DEFAULT_PORT_DIR,
                   help=f"port records (default {ports.DEFAULT_PORT_DIR}; $PYBRIDGE_VM_DIR)")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _ident(value: str | None, lookup: Callable[[str], Any], what: str) -> int | None:
    """A uid / gid given as a number or a name."""
    if value is None:
        return None
    if value.isdigit() and int(value) < 0xFFFFFFFF:
        return int(value)
    try:
        return lookup(value)[2]
    except KeyError:
        raise PluginError(INVALID_CONFIG, f"--{what}: no {what} {value!r} on this host") from None


def _network(args: argparse.Namespace):
    return resolve(args.network, args.cni_conf_dir or [DEFAULT_CONF_DIR], args.state_dir)


def _failed(action: str, exc: PluginError) -> int:
    detail = f" ({exc.details})" if exc.details else ""
    print(f"cni-bridge vm {action}: {exc}{detail}", file=sys.stderr)
    return EXIT_USAGE if exc.code == INVALID_CONFIG and action != "attach" else EXIT_FAILED


def view(record: dict[str, Any], present: bool | None = None) -> dict[str, Any]:
    """What attach prints and ls lists of a record."""
    out = {"network": record["network"], "tap": record["tap"], "mac": record["mac"], "ips": record["addresses"],
           "gateway": record.get("gateway"), "bridge": record.get("bridge")}
    if present is not None:
        out.update(status=record["status"], tap_present=present)
    return out


def run_attach(args: argparse.Namespace) -> int:
    try:
        mac = validate_mac(args.mac) if args.mac else None
        name = ports.tap_name(args.name) if args.name else None
        owner = _ident(args.owner, pwd.getpwnam, "owner")
        group = _ident(args.group, grp.getgrnam, "group")
        net = _network(args)
        record = ports.attach(net, args.port_dir, name=name, mac=mac, owner=owner, group=group,
                              multi_queue=args.multi_queue)
    except PluginError as exc:
        return _failed("attach", exc)
    log.info("vm attach net=%s tap=%s mac=%s %s", record["network"], record["tap"], record["mac"],
             ",".join(record["addresses"]) or "no address")
    json.dump(view(record), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK


def run_detach(args: argparse.Namespace) -> int:
    try:
        name = ports.tap_name(args.name)
        record = ports.detach(_network(args), args.port_dir, name)
    except PluginError as exc:
        return _failed("detach", exc)
    log.info("vm detach net=%s tap=%s%s", args.network, name, "" if record else " (no record)")
    return EXIT_OK


def run_ls(args: argparse.Namespace) -> int:
    try:
        found = ports.ports(args.port_dir)
    except PluginError as exc:
        return _failed("ls", exc)
    with netlink.root() as host:
        listed = [view(r, host.link(r["tap"]) is not None) for r in found]
    if args.json:
        json.dump(listed, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    if not listed:
        print("no VM ports")
    for port in listed:
        state = "" if port["tap_present"] and port["status"] == ports.READY else \
            f"  [{port['status']}{'' if port['tap_present'] else ', tap missing'}]"
        print(f"{port['network']}  {port['tap']}  {port['mac']}  {','.join(port['ips']) or '-'}{state}")
    return EXIT_OK
