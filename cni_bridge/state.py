"""What the Docker driver must remember across its own restarts and dockerd's: networks,
endpoints and IPAM pools.

Why on disk and per record: gunicorn runs several worker processes, and dockerd never replays
CreateNetwork / CreateEndpoint / RequestPool after a restart (we answer RequiresRequestReplay
false), so the driver's memory must survive a SIGKILL at any point. Layout under the state
directory (default /var/lib/cni-bridge/docker):

    networks/<NetworkID>.json     one JSON object per record (see docker/network.py, docker/ipam.py)
    endpoints/<EndpointID>.json
    pools/<sha256(PoolID)[:32]>.json
    locks/<name>.lock             flock files; the kernel drops a lock when its holder dies

Every write goes to a temp file that is fsynced and renamed over the record, then the directory
is fsynced: a reader sees the old record or the new one, never half of one. Read-modify-write
sequences hold a named lock (`StateStore.lock`), which works across processes and threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator

from cni_bridge.errors import IO_FAILURE, PluginError, shown
from cni_bridge.ipam.fsutil import TMP_PREFIX, flocked, fsync_dir, read_or_none, write_atomic

log = logging.getLogger("cni_bridge.state")

DEFAULT_STATE_DIR = Path("/var/lib/cni-bridge/docker")
KINDS = ("networks", "endpoints", "pools")
FORMAT_VERSION = 1
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")

Record = dict[str, Any]


def pool_key(pool_id: str) -> str:
    """Pool ids contain '/' (they name a subnet): records are named by a hash of the id."""
    return hashlib.sha256(pool_id.encode()).hexdigest()[:32]


class StateStore:
    """Records of three kinds, each a small JSON file, replaced atomically."""

    def __init__(self, root: Path | str = DEFAULT_STATE_DIR, *, lock_timeout: float = 30.0) -> None:
        self.root = Path(root)
        self.lock_timeout = lock_timeout

    def ensure(self) -> None:
        """Create the directories (at start-up, so that the first request does not pay for it)."""
        with self._io("create the state directory"):
            for sub in (*KINDS, "locks"):
                (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Exclusive named lock across processes; error 11 (try again) after `lock_timeout`."""
        _check_key(name, "lock")
        path = self.root / "locks" / f"{name}.lock"
        with self._io(f"take lock {name}"):
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with flocked(path, self.lock_timeout):
            yield

    def get(self, kind: str, key: str) -> Record | None:
        """The record, or None when absent; a corrupt record is logged by path and treated as absent."""
        path = self._path(kind, key)
        with self._io(f"read {path}"):
            raw = read_or_none(path)
        if raw is None:
            return None
        return _decode(path, raw)

    def put(self, kind: str, key: str, record: Record) -> None:
        path = self._path(kind, key)
        data = json.dumps({"format": FORMAT_VERSION, **record}, sort_keys=True, indent=1).encode() + b"\n"
        with self._io(f"write {path}"):
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(path, data)
            fsync_dir(path.parent)

    def delete(self, kind: str, key: str) -> bool:
        path = self._path(kind, key)
        with self._io(f"remove {path}"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
            fsync_dir(path.parent)
        return True

    def all(self, kind: str) -> list[Record]:
        """Every readable record of a kind (unordered)."""
        directory = self.root / _check_kind(kind)
        out = []
        with self._io(f"list {directory}"):
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                return []
            for name in names:
                if name.startswith(TMP_PREFIX) or not name.endswith(".json"):
                    continue
                raw = read_or_none(directory / name)
                record = _decode(directory / name, raw) if raw is not None else None
                if record is not None:
                    out.append(record)
        return out

    def _path(self, kind: str, key: str) -> Path:
        return self.root / _check_kind(kind) / f"{_check_key(key, kind)}.json"

    @contextlib.contextmanager
    def _io(self, what: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise PluginError(IO_FAILURE, f"driver state: cannot {what}",
                              f"{exc.__class__.__name__}: {exc.strerror or exc}") from None


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown state kind {kind!r}")
    return kind


def _check_key(key: str, what: str) -> str:
    """Keys become file names: Docker ids are hex, but they arrive over a socket, so check."""
    if not isinstance(key, str) or not _KEY_RE.match(key) or ".." in key:
        raise PluginError(IO_FAILURE, f"invalid {what} key {shown(key)}")
    return key


def _decode(path: Path, raw: bytes) -> Record | None:
    try:
        record = json.loads(raw)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        log.warning("pybridge: skipping corrupt driver state file %s: %s", path, exc)
        return None
    record.pop("format", None)
    return record
