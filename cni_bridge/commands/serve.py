"""`cni-bridge serve`: the Docker remote network + IPAM driver on /run/docker/plugins/pybridge.sock."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from cni_bridge.commands.storeopts import add_store_arguments, store_spec
from cni_bridge.docker.context import DEFAULT_POOL4, DEFAULT_POOL6, SOCKET_PATH, Settings
from cni_bridge.ipam.config import DEFAULT_DATA_DIR
from cni_bridge.state import DEFAULT_STATE_DIR


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="run the Docker network and IPAM driver (pybridge)",
        description="Serve the libnetwork remote NetworkDriver and IpamDriver `pybridge` with gunicorn "
                    "on a unix socket that dockerd discovers by name: "
                    "docker network create -d pybridge --ipam-driver pybridge NAME.")
    p.add_argument("--socket", type=Path, default=SOCKET_PATH,
                   help=f"unix socket to listen on (default {SOCKET_PATH}; directory created, mode 0660)")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                   help=f"driver state: networks, endpoints, pools (default {DEFAULT_STATE_DIR})")
    p.add_argument("--ipam-data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help=f"lease store shared with pybridge-ipam (default {DEFAULT_DATA_DIR}); "
                        "per network: --ipam-opt dataDir=PATH")
    add_store_arguments(p)
    p.add_argument("--default-pool", type=ipaddress.IPv4Network, default=DEFAULT_POOL4,
                   help=f"IPv4 range to carve /24 default pools from (default {DEFAULT_POOL4})")
    p.add_argument("--default-pool6", type=ipaddress.IPv6Network, default=DEFAULT_POOL6,
                   help=f"IPv6 range to carve /64 default pools from (default {DEFAULT_POOL6})")
    p.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (default 2)")
    p.add_argument("--threads", type=int, default=4, help="threads per worker (default 4; 1 = sync workers)")
    p.add_argument("--log-file", default="-", help="log file (default: stderr)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--pidfile", default=None, help="write the master's pid here")
    # --- CNI fast path (issue 7, cni_bridge/fastpath) ------------------------------------------
    p.add_argument("--cni-fastpath", default=None, metavar="SOCKET",
                   help="also serve exec'd pybridge/pybridge-ipam plugins on this unix socket "
                        "(default /run/cni-bridge/cni.sock; 'off' to disable)")
    # --- end CNI fast path ------------------------------------------------------------------
    p.add_argument("--vxlan-sync-interval", type=float, default=10.0, metavar="SECONDS",
                   help="at most this many seconds between rounds of the vxlan peer sync, which also "
                        "runs on every change etcd reports (networks whose store is etcd, "
                        "and Docker networks with --ipam-store etcd; see `cni-bridge vxlan sync`)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # gunicorn and flask: only `serve` loads them, not every cni-bridge command (all build the parser)
    from cni_bridge.docker.server import serve

    if args.workers < 1 or args.threads < 1:
        raise SystemExit("cni-bridge serve: --workers and --threads must be at least 1")
    if args.vxlan_sync_interval <= 0:
        raise SystemExit("cni-bridge serve: --vxlan-sync-interval must be positive")
    spec = store_spec(args, args.ipam_data_dir)
    settings = Settings(state_dir=args.state_dir, ipam_data_dir=args.ipam_data_dir,
                        ipam_store=spec.to_dict() if spec.type == "etcd" else None,
                        default_pool4=args.default_pool, default_pool6=args.default_pool6)
    # --- CNI fast path (issue 7, cni_bridge/fastpath): a child process next to gunicorn -------
    fastpath = None
    if args.cni_fastpath != "off":
        from cni_bridge.fastpath.server import spawn  # it preloads pyroute2 & co.: `serve` only
        try:
            fastpath = spawn(args.cni_fastpath, log_level=args.log_level.upper())
        except (OSError, RuntimeError) as exc:  # the plugins still work (in-process), slower
            print(f"cni-bridge serve: CNI fast path not started: {exc}", file=sys.stderr)
    # vxlan networks whose store is etcd: publish / program peers (overlay/distribute.py)
    from cni_bridge.overlay import distribute
    _, stop_sync = distribute.start_thread(interval=args.vxlan_sync_interval, default_store=settings.ipam_store)
    try:
        # --- end CNI fast path --------------------------------------------------------------
        return serve(settings, args.socket, workers=args.workers, threads=args.threads,
                     log_file=args.log_file, log_level=args.log_level, pidfile=args.pidfile)
    finally:  # CNI fast path
        stop_sync.set()
        if fastpath is not None:
            fastpath.stop()
