"""`cni-bridge`: the management CLI. Each subcommand lives in cni_bridge/commands/<name>.py and
exposes `register(subparsers)`; this module only assembles them."""

from __future__ import annotations

import argparse
import importlib
import sys

from cni_bridge.logsetup import configure

SUBCOMMANDS = ("serve", "status", "gc", "ipam", "vm", "vxlan")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cni-bridge",
        description="Manage pybridge: run the Docker driver / CNI fast-path daemon, inspect networks, "
                    "reclaim leaked resources, inspect and edit IPAM leases.")
    parser.add_argument("--debug", action="store_true", help="log netlink and firewall details")
    parser.add_argument("--log-file", dest="global_log_file", metavar="PATH", default=None,
                        help="also append log lines here (default: $PYBRIDGE_LOG_FILE, else stderr only)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"cni_bridge.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"cni_bridge.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        sys.exit(2)
    configure(debug=args.debug or None, path=args.global_log_file)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code or 0)
