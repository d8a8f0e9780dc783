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

A file that is not a usable record (unreadable, not JSON, a field every reader relies on missing
or of the wrong type, an id that does not match its file name) is skipped and reported, never
fatal: one bad file must not keep the driver from starting (a supervisor would restart it in a
loop) or from serving every other network. `scan` lists them; `cni-bridge status` shows them.
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
# The fields every reader of a record relies on (docker/network.py and docker/ipam.py write more).
REQUIRED: dict[str, dict[str, type]] = {
    "networks": {"id": str, "status": str, "config": dict, "ipv4": list, "ipv6": list},
    "endpoints": {"id": str, "network": str, "status": str, "host_ifname": str, "src_name": str,
                  "addresses": list},
    "pools": {"id": str, "space": str, "pool": str, "options": dict, "store": str, "data_dir": str,
              "refs": int},
    # VM ports (cni_bridge/vm/ports.py), in a store of their own (vm.ports.DEFAULT_PORT_DIR)
    "ports": {"id": str, "network": str, "status": str, "tap": str, "mac": str, "addresses": list},
}

Record = dict[str, Any]


class BadRecord(ValueError):
    """A state file that is not a usable record."""


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
        """The record, or None when absent; a bad record is logged by path and treated as absent."""
        path = self._path(kind, key)
        with self._io(f"read {path}"):
            raw = read_or_none(path)
        if raw is None:
            return None
        try:
            return _decode(kind, key, raw)
        except BadRecord as exc:
            log.warning("pybridge: skipping unusable driver state file %s: %s", path, exc)
            return None

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
        """Every usable record of a kind (unordered); the others are logged and skipped."""
        records, bad = self.scan(kind)
        for line in bad:
            log.warning("pybridge: skipping unusable driver state file %s", line)
        return records

    def scan(self, kind: str) -> tuple[list[Record], list[str]]:
        """Every usable record of a kind, and "<path>: <why>" for each file that is not one.
        Only an unreadable directory is an error (then nothing can be trusted)."""
        directory = self.root / _check_kind(kind)
        with self._io(f"list {directory}"):
            try:
                names = sorted(os.listdir(directory))
            except FileNotFoundError:
                return [], []
        records, bad = [], []
        for name in names:
            if name.startswith(TMP_PREFIX) or not name.endswith(".json"):
                continue
            try:
                raw = read_or_none(directory / name)
                if raw is not None:
                    records.append(_decode(kind, name[:-len(".json")], raw))
            except OSError as exc:
                bad.append(f"{directory / name}: {exc.strerror or exc}")
            except BadRecord as exc:
                bad.append(f"{directory / name}: {exc}")
        return records, bad

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
    if kind not in REQUIRED:
        raise ValueError(f"unknown state kind {kind!r}")
    return kind


def _check_key(key: str, what: str) -> str:
    """Keys become file names: Docker ids are hex, but they arrive over a socket, so check."""
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key) or ".." in key:
        raise PluginError(IO_FAILURE, f"invalid {what} key {shown(key)}")
    return key


def _decode(kind: str, key: str, raw: bytes) -> Record:
    """The record stored under `key`, or BadRecord saying why it is not usable."""
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BadRecord(f"not JSON ({shown(str(exc), quote=False)})") from None
    if not isinstance(record, dict):
        raise BadRecord("not a JSON object")
    record.pop("format", None)
    for field, kind_of in REQUIRED[kind].items():
        value = record.get(field)
        if not isinstance(value, kind_of) or (isinstance(value, bool) and kind_of is not bool):
            raise BadRecord(f"{field} missing or not a {kind_of.__name__}")
    if (pool_key(record["id"]) if kind == "pools" else record["id"]) != key:
        raise BadRecord(f"its id {shown(record['id'])} does not match the file name")
    return record
