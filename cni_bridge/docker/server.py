"""Run the plugin app under gunicorn on the unix socket dockerd discovers it by.

Why gunicorn with several workers: dockerd calls the driver concurrently (containers starting in
parallel) and retries only on connection errors, so one slow request must not stall the others,
and a crashed worker must be replaced. All state is on disk behind file locks, so the workers
need no shared memory. The app is loaded in the master before forking (preload): pyroute2's
~140 ms import is paid once, not per worker.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import sys
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from cni_bridge.docker.app import create_app
from cni_bridge.docker.context import Driver, Settings
from cni_bridge.docker.network import recover

log = logging.getLogger("cni_bridge.docker")


class _Gunicorn(BaseApplication):
    def __init__(self, app: Any, options: dict[str, Any]) -> None:
        self._app = app
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self._app


def socket_in_use(path: Path) -> bool:
    """True when something answers on `path` (then we must not steal the socket)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(mode):
        raise SystemExit(f"cni-bridge serve: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
        return True
    except OSError:
        return False  # stale: left by a killed driver; gunicorn replaces it
    finally:
        probe.close()


def setup_logging(log_file: str, level: str) -> None:
    handler: logging.Handler = (logging.StreamHandler(sys.stderr) if log_file in ("", "-")
                                else logging.FileHandler(log_file))
    handler.setFormatter(logging.Formatter("%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("cni_bridge")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def serve(settings: Settings, socket_path: Path, *, workers: int, threads: int, log_file: str,
          log_level: str = "info", pidfile: str | None = None) -> int:
    setup_logging(log_file, log_level)
    socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if socket_in_use(socket_path):
        print(f"cni-bridge serve: another process is already serving {socket_path}", file=sys.stderr)
        return 1
    app = create_app(settings)
    for line in recover(Driver(settings)):
        log.warning("recovery: %s", line)
    options = {
        "bind": [f"unix:{socket_path}"],
        "umask": 0o117,            # socket mode 0660, owned by root (dockerd runs as root)
        "workers": workers,
        "worker_class": "gthread" if threads > 1 else "sync",
        "threads": threads,
        "preload_app": True,
        "timeout": 120,            # a request never takes long; a hung worker is replaced
        "graceful_timeout": 10,
        "errorlog": log_file or "-",
        "accesslog": None,
        "loglevel": log_level,
        "proc_name": "cni-bridge-docker",
        "pidfile": pidfile,
    }
    log.info("pybridge Docker driver on %s (state %s, leases %s, %d workers x %d threads)",
             socket_path, settings.state_dir, settings.ipam_data_dir, workers, threads)
    _Gunicorn(app, options).run()
    return 0
