"""Command-line options that name a lease store, shared by `cni-bridge serve` and `cni-bridge ipam`:
`--ipam-store file|etcd` with `--etcd-endpoints` & co. They build the same `store` object a
CNI config carries (docs/configuration.md), parsed by the same code (ipam.config.parse_store)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cni_bridge.errors import PluginError
from cni_bridge.ipam.config import DEFAULT_ETCD_PREFIX, DEFAULT_ETCD_TIMEOUT, StoreSpec, parse_store


def add_store_arguments(parser: argparse.ArgumentParser, *, default: Any = None) -> None:
    """`default` is argparse.SUPPRESS for a repeat of the options after a sub-action."""
    def d(value: Any) -> Any:
        return value if default is None else default
    parser.add_argument("--ipam-store", choices=("file", "etcd"), default=d("file"),
                        help="lease store: file (the data directory, this host only; default) or etcd "
                             "(shared by every host using the same endpoints and prefix)")
    parser.add_argument("--etcd-endpoints", metavar="URL[,URL...]", default=d(None),
                        help="etcd client URLs, comma-separated (http://10.0.0.1:2379,...)")
    parser.add_argument("--etcd-prefix", default=d(DEFAULT_ETCD_PREFIX),
                        help=f"key prefix in etcd (default {DEFAULT_ETCD_PREFIX})")
    parser.add_argument("--etcd-timeout", type=float, default=d(DEFAULT_ETCD_TIMEOUT),
                        help=f"seconds before a store call gives up with 'try again' (default {DEFAULT_ETCD_TIMEOUT:g})")
    for name, what in (("cacert", "CA certificate"), ("cert", "client certificate"), ("key", "client key")):
        parser.add_argument(f"--etcd-{name}", metavar="PATH", default=d(None),
                            help=f"TLS {what} for https endpoints")


def store_object(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    """The `store` object the options describe (the file store lives in `data_dir`)."""
    if getattr(args, "ipam_store", "file") != "etcd":
        return {"type": "file", "dataDir": str(data_dir)}
    out: dict[str, Any] = {"type": "etcd", "endpoints": (args.etcd_endpoints or "").split(","),
                           "prefix": args.etcd_prefix, "timeout": args.etcd_timeout}
    out.update({k: v for k in ("cacert", "cert", "key") if (v := getattr(args, f"etcd_{k}"))})
    return out


def store_spec(args: argparse.Namespace, data_dir: Path) -> StoreSpec:
    """Parsed and checked; a bad combination is a usage error (message on stderr, exit 2)."""
    if getattr(args, "ipam_store", "file") == "etcd" and not args.etcd_endpoints:
        print("cni-bridge: --ipam-store etcd needs --etcd-endpoints URL[,URL...]", file=sys.stderr)
        raise SystemExit(2)
    try:
        return parse_store(store_object(args, data_dir))
    except PluginError as exc:
        print(f"cni-bridge: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
