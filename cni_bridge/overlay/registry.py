"""This host's side of each vxlan network: its VTEP and its attachments per VNI, i.e. what it
would publish for the other hosts to program (their `reconcile` input).

Recorded on ADD (CNI) / CreateEndpoint (Docker), removed on DEL / DeleteEndpoint, one small
JSON file per attachment so concurrent ADDs never contend and a crashed ADD leaves at most its
own record (named by the deterministic host veth name, so DEL finds it without the netns):

    $PYBRIDGE_RUN_DIR/vxlan/<vni>/vtep.json           {"vni", "local", "port", "network", "store"?, "group"?}
    $PYBRIDGE_RUN_DIR/vxlan/<vni>/<host veth>.json    {"network", "containerId", "ifname", "mac", "ips"}

`store` is the network's IPAM `store` object when it is etcd: where overlay/distribute.py
publishes the attachments and reads the other hosts' (docs/modes.md).

Under the run directory (tmpfs): after a reboot the attachments are gone, and so are the records.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from cni_bridge import locks
from cni_bridge.attachment import Attachment, IPAddress
from cni_bridge.config import NetworkSpec
from cni_bridge.ipam.fsutil import read_or_none, unlink_if_exists, write_atomic
from cni_bridge.overlay.peers import RemoteEndpoint

VTEP_FILE = "vtep.json"


def registry_dir() -> Path:
    return Path(locks.RUN_DIR) / "vxlan"


@dataclass(frozen=True)
class LocalAttachment:
    host_ifname: str  # the record's name: unique on the host, known to DEL without the netns
    network: str
    container_id: str
    ifname: str
    mac: str
    ips: tuple[str, ...]


@dataclass(frozen=True)
class LocalVtep:
    """This host's VTEP of one VNI and the attachments behind it."""
    vni: int
    local: str
    port: int
    network: str
    attachments: tuple[LocalAttachment, ...]
    store: Mapping[str, Any] | None = None  # the etcd `store` object the VNI is published in
    group: str | None = None  # multicast group: the kernel learns the peers, nothing is published

    def endpoints(self) -> list[RemoteEndpoint]:
        """As the other hosts see them: the input of their `reconcile`."""
        return [RemoteEndpoint.of(a.mac, self.local, a.ips) for a in self.attachments]


def _write_json(path: Path, data: dict) -> None:
    """Atomic; once more if the last DEL of the VNI removed the directory in between."""
    for attempt in (1, 2):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        try:
            write_atomic(path, json.dumps(data, sort_keys=True).encode(), durable=False)
            return
        except FileNotFoundError:
            if attempt == 2:
                raise


def etcd_store(spec: NetworkSpec) -> dict[str, Any] | None:
    """Where the VNI is published: the network's IPAM `store` object when it is etcd, and the
    network has no multicast `group` (whose peers the kernel learns)."""
    if spec.vxlan is None or spec.vxlan.group is not None:
        return None
    store = spec.ipam.get("store") if isinstance(spec.ipam, Mapping) else None
    return dict(store) if isinstance(store, Mapping) and store.get("type") == "etcd" else None


def record(spec: NetworkSpec, att: Attachment, mac: str, addresses: Iterable[IPAddress]) -> dict[str, Any] | None:
    """Note the attachment (and the VTEP) of a vxlan network; a no-op for other networks.
    Returns the attachment's record."""
    if spec.vxlan is None:
        return None
    vx = spec.vxlan
    directory = registry_dir() / str(vx.vni)
    # The attachment first: a concurrent last `forget` that sees it keeps the VTEP record, one
    # that does not is followed by this VTEP write.
    entry = {"network": spec.name, "containerId": att.container_id, "ifname": att.ifname,
             "mac": mac.lower(), "ips": [str(a) for a in addresses]}
    _write_json(directory / f"{att.host_ifname}.json", entry)
    vtep: dict[str, Any] = {"vni": vx.vni, "local": str(vx.local), "port": vx.port, "network": spec.name}
    store = etcd_store(spec)
    if store is not None:
        vtep["store"] = store
    if vx.group is not None:
        vtep["group"] = str(vx.group)
    _write_json(directory / VTEP_FILE, vtep)
    return entry


def forget(spec: NetworkSpec, att: Attachment) -> None:
    """Drop the attachment's record (idempotent); with the VNI's last one, the VTEP's too."""
    if spec.vxlan is not None:
        _forget(registry_dir() / str(spec.vxlan.vni), att.host_ifname)


def _forget(directory: Path, host_ifname: str) -> None:
    unlink_if_exists(directory / f"{host_ifname}.json")
    if not any(p.name != VTEP_FILE for p in _entries(directory)):
        unlink_if_exists(directory / VTEP_FILE)
        with contextlib.suppress(OSError):  # an ADD may have just written a record again
            os.rmdir(directory)


def prune(spec: NetworkSpec, keep: set[str]) -> list[str]:
    """CNI GC: drop the records of attachments whose host veth name is not in `keep`; returns
    their names. The VTEP record goes with the last one."""
    if spec.vxlan is None:
        return []
    directory = registry_dir() / str(spec.vxlan.vni)
    stale = [p.stem for p in _entries(directory)
             if p.name != VTEP_FILE and p.stem not in keep and (_load(p) or {}).get("network") == spec.name]
    for name in stale:
        _forget(directory, name)
    return stale


def drop_vni(vni: int) -> None:
    """Every record of a VNI whose device is gone (`cni-bridge gc`: none of its attachments is
    on the host any more)."""
    directory = registry_dir() / str(vni)
    for path in _entries(directory):
        unlink_if_exists(path)
    with contextlib.suppress(OSError):
        os.rmdir(directory)


def _entries(directory: Path) -> list[Path]:
    try:
        return [p for p in directory.iterdir() if p.suffix == ".json"]
    except FileNotFoundError:
        return []


def _load(path: Path) -> dict | None:
    try:
        raw = read_or_none(path)
        return json.loads(raw) if raw is not None else None
    except (OSError, ValueError):
        return None  # a record being replaced, or damaged: the next ADD rewrites it


def signature() -> tuple[tuple[str, ...], ...]:
    """Which records exist (names only): cheap to compare, changes with every ADD and DEL."""
    try:
        vnis = sorted(p for p in registry_dir().iterdir() if p.name.isdigit())
    except FileNotFoundError:
        return ()
    return tuple((d.name, *sorted(p.name for p in _entries(d))) for d in vnis)


def local_vtep(vni: int) -> LocalVtep | None:
    """What this host would publish for `vni`; None when it has no attachment of it."""
    directory = registry_dir() / str(vni)
    vtep = _load(directory / VTEP_FILE)
    if not vtep:
        return None
    attachments = []
    for path in sorted(_entries(directory)):
        data = _load(path) if path.name != VTEP_FILE else None
        if data:
            attachments.append(LocalAttachment(path.stem, data["network"], data["containerId"], data["ifname"], data["mac"],
                                               tuple(data["ips"])))
    return LocalVtep(int(vtep["vni"]), vtep["local"], int(vtep["port"]), vtep["network"], tuple(attachments),
                     vtep.get("store"), vtep.get("group"))


def local_vteps() -> list[LocalVtep]:
    """Every VNI this host has attachments of."""
    try:
        vnis = sorted(int(p.name) for p in registry_dir().iterdir() if p.name.isdigit())
    except FileNotFoundError:
        return []
    return [v for v in (local_vtep(vni) for vni in vnis) if v is not None]
