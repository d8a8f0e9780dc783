"""The etcd side of vxlan networks without multicast (Neutron l2population / flannel style):
each host publishes its attachments per VNI, every host programs the others' into its kernel.

Keys, under the prefix P of the network's etcd `store` (the IPAM store: one cluster for the
shared range and the endpoints), one JSON value each:

    P/vxlan/<vni>/<vtep>/<host veth>   {"mac", "vtep", "ips", "network", "containerId", "ifname"}

The VTEP (the host's underlay address for that VNI) names the host: it is unique per VNI by
construction and needs no host id. Flood entries follow from the endpoints (peers.py): a host
without a member of the VNI publishes nothing there, so nobody floods to it.

Who writes: the ADD puts its attachment's key and the DEL deletes it (best effort: a host
whose etcd is unreachable keeps working); `sync_once` then makes this host's keys exactly its
registry (overlay/registry.py) -- re-publishing what an ADD could not, deleting what a host
that restarted or rebooted no longer has -- and reconciles every local VNI with the complete
remote set read in the same range. It is run at start and in a loop by `cni-bridge serve`
and `cni-bridge vxlan sync --watch`, once by `cni-bridge vxlan sync`; etcd unreachable
leaves the kernel as it is, and the next round tries again. A loop attaches the host's keys
to an etcd lease it renews every round: a host that is gone for good (no loop renewing)
leaves the others' tables when the lease expires, as flannel's host leases do.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from cni_bridge.errors import PluginError
from cni_bridge.overlay import registry
from cni_bridge.overlay.peers import RemoteEndpoint

DEFAULT_INTERVAL = 10.0  # seconds between rounds when no watch event arrives sooner
WAKE = 1.0  # seconds between looks at this host's registry while waiting
MIN_TTL = 5  # seconds: etcd refuses or shortens leases much below its election timeout


def _client_and_prefix(store: Mapping[str, Any]):
    # lazy: only networks whose store is etcd load the client
    from cni_bridge.ipam.config import parse_store
    from cni_bridge.ipam.etcdstore import client_for
    spec = parse_store(store)
    return client_for(spec), spec.prefix


def vni_prefix(prefix: str, vni: int) -> str:
    return f"{prefix}/vxlan/{vni}/"


def key(prefix: str, vni: int, vtep: str, host_ifname: str) -> str:
    return f"{vni_prefix(prefix, vni)}{vtep}/{host_ifname}"


def value(vtep: str, entry: Mapping[str, Any]) -> str:
    return json.dumps({"mac": entry["mac"], "vtep": vtep, "ips": list(entry["ips"]), "network": entry["network"],
                       "containerId": entry["containerId"], "ifname": entry["ifname"]}, sort_keys=True)


def _warn(message: str) -> None:
    print(f"pybridge: {message}", file=sys.stderr)


def publish(store: Mapping[str, Any] | None, vni: int, vtep: str, host_ifname: str,
            entry: Mapping[str, Any] | None) -> bool:
    """Put (entry) or delete (None) one attachment's key. Best effort: False, with a warning,
    when etcd did not answer -- the next sync round publishes it."""
    if store is None:
        return True
    from cni_bridge.ipam.etcd import op_delete, op_put
    try:
        client, prefix = _client_and_prefix(store)
        name = key(prefix, vni, vtep, host_ifname)
        client.txn([], [op_put(name, value(vtep, entry)) if entry is not None else op_delete(name)])
        return True
    except PluginError as exc:
        _warn(f"vxlan {vni}: {'publishing' if entry is not None else 'withdrawing'} {host_ifname} "
              f"in etcd failed ({exc.msg}); the next `vxlan sync` round retries")
        return False


def endpoints_of(records: Iterable[tuple[str, bytes]], vni: int, prefix: str) -> list[RemoteEndpoint]:
    """The endpoints of `vni` among (key, value) pairs; a damaged value is skipped."""
    base = vni_prefix(prefix, vni)
    out = []
    for name, raw in records:
        if not name.startswith(base):
            continue
        try:
            data = json.loads(raw)
            out.append(RemoteEndpoint.of(data["mac"], data["vtep"], data.get("ips") or []))
        except (ValueError, KeyError, TypeError):
            _warn(f"vxlan {vni}: ignoring damaged record {name}")
    return out


@dataclass
class LoopState:
    """What a loop keeps between rounds. `ttl` > 0: this host's keys are attached to an etcd
    lease of that many seconds, renewed every round, so a host that stops for good (its loop
    gone) disappears from the others' tables once the lease expires. `leases`: the lease per
    store; `seen`: (store, VNI, VTEP) published so far (see sync_once)."""
    ttl: int = 0
    leases: dict[str, int] = field(default_factory=dict)
    seen: set[tuple[str, int, str]] = field(default_factory=set)


def lease_ttl(interval: float) -> int:
    """Three rounds' worth: a loop that misses two rounds keeps its keys."""
    return max(MIN_TTL, int(3 * interval + 0.999))


@dataclass
class Round:
    """What one sync round did, per VNI: keys put/deleted, and the reconcile's plan or error."""
    published: int = 0
    withdrawn: int = 0
    changes: dict[int, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    watch: list[tuple[Any, str, int]] = field(default_factory=list)  # (client, key prefix, revision read)


def _lease(client: Any, name: str, state: LoopState | None) -> int:
    """The loop's lease for this store, renewed, or a new one when it expired (0: no lease)."""
    if state is None or state.ttl <= 0:
        return 0
    lease = state.leases.get(name, 0)
    if lease and client.keep_alive(lease) <= 0:
        lease = 0
    if not lease:
        lease = state.leases[name] = client.grant(state.ttl)
    return lease


def _sync_store(store: Mapping[str, Any], name: str, vteps: list[registry.LocalVtep], result: Round,
                apply: Callable[[int, list[RemoteEndpoint]], Any], state: LoopState | None) -> None:
    from cni_bridge.ipam.etcd import op_delete, op_put
    client, prefix = _client_and_prefix(store)
    lease = _lease(client, name, state)
    mine = {(v.vni, v.local) for v in vteps}
    have: dict[str, tuple[bytes, int]] = {}
    records: list[tuple[str, bytes]] = []
    revisions = []
    for vni in sorted({v.vni for v in vteps}):
        kvs, revision = client.get_with_revision(vni_prefix(prefix, vni), prefix=True)
        revisions.append(revision)
        for kv in kvs:
            records.append((kv.key, kv.value))
            parts = kv.key[len(vni_prefix(prefix, vni)):].split("/")
            if len(parts) == 2 and (vni, parts[0]) in mine:
                have[kv.key] = (kv.value, kv.lease)
    want = {key(prefix, v.vni, v.local, a.host_ifname):
            value(v.local, {"mac": a.mac, "ips": a.ips, "network": a.network, "containerId": a.container_id,
                            "ifname": a.ifname}).encode()
            for v in vteps for a in v.attachments}
    # a one-shot round (no lease) leaves a loop's lease on keys whose value is right
    stale = sorted(k for k, raw in want.items()
                   if k not in have or have[k][0] != raw or (lease and have[k][1] != lease))
    ops = [op_put(k, want[k], lease=lease) for k in stale]
    # An ADD records before it publishes: its key may be in what was read and its record not in
    # the registry read before that. The registry is read again, after etcd, before deleting.
    recorded = {key(prefix, v.vni, v.local, a.host_ifname)
                for v in (registry.local_vtep(vni) for vni in {v.vni for v in vteps}) if v is not None
                for a in v.attachments}
    ops += [op_delete(k) for k in sorted(have) if k not in want and k not in recorded]
    # the watch resumes after the oldest read: a change between two VNIs' reads is not missed
    result.watch.append((client, f"{prefix}/vxlan/", min(revisions)))
    if ops:
        client.txn([], ops)
        result.published += len(stale)
        result.withdrawn += len(ops) - len(stale)
    for v in vteps:  # the remote set: every record of the VNI; reconcile skips our own VTEP's
        try:
            result.changes[v.vni] = apply(v.vni, endpoints_of(records, v.vni, prefix))
        except PluginError as exc:  # e.g. the device is gone: the next ADD re-creates it
            result.errors.append(f"vxlan {v.vni}: {exc.msg}")


def sync_once(default_store: Mapping[str, Any] | None = None,
              apply: Callable[[int, list[RemoteEndpoint]], Any] | None = None,
              state: LoopState | None = None) -> Round:
    """One round for every VNI this host has attachments of: publish this host's records,
    reconcile the kernel with the others'. A VNI without an etcd store (and no `default_store`,
    the Docker driver's `--ipam-store etcd`) is left alone. etcd unreachable: that store's VNIs
    are reported in `errors` and their kernel entries are not touched.

    `state` (kept by a loop between rounds): its lease, and the (store, VNI, VTEP) published so
    far (`seen`). One that left the registry (its last attachment went) has its keys withdrawn
    here, for the DELs that could not (etcd unreachable, a Docker endpoint: its network names
    no store)."""
    if apply is None:
        from cni_bridge.overlay.reconcile import reconcile
        apply = reconcile
    by_store: dict[str, tuple[Mapping[str, Any], list[registry.LocalVtep]]] = {}
    for vtep in registry.local_vteps():
        store = vtep.store or default_store
        if store is None or vtep.group is not None:
            continue
        by_store.setdefault(json.dumps(store, sort_keys=True), (store, []))[1].append(vtep)
    result = Round()
    current = {(name, v.vni, v.local) for name, (_, vteps) in by_store.items() for v in vteps}
    seen = state.seen if state is not None else None
    for gone in sorted((seen or set()) - current):
        _withdraw_vtep(gone, result, seen)
    for name, (store, vteps) in by_store.items():
        try:
            _sync_store(store, name, vteps, result, apply, state)
        except PluginError as exc:
            result.errors.append(f"vxlan {', '.join(str(v.vni) for v in vteps)}: {exc.msg}")
    if seen is not None:
        seen |= current
    return result


def _withdraw_vtep(gone: tuple[str, int, str], result: Round, seen: set[tuple[str, int, str]] | None) -> None:
    from cni_bridge.ipam.etcd import op_delete
    name, vni, vtep = gone
    try:
        client, prefix = _client_and_prefix(json.loads(name))
        client.txn([], [op_delete(f"{vni_prefix(prefix, vni)}{vtep}/", prefix=True)])
    except PluginError as exc:
        result.errors.append(f"vxlan {vni}: withdrawing {vtep}: {exc.msg}")
        return
    result.withdrawn += 1
    if seen is not None:
        seen.discard(gone)


def run_loop(stop: threading.Event, *, interval: float = DEFAULT_INTERVAL,
             default_store: Mapping[str, Any] | None = None,
             report: Callable[[Round], None] | None = None) -> None:
    """Rounds until `stop` is set: the first at once (a host that starts converges), then one
    as soon as an etcd watch on the store's `P/vxlan/` reports a change after what the round
    read or this host's registry changes, and at least one per `interval` (re-checking the kernel, retrying what failed).
    Errors are reported and retried, never fatal. With several stores only the first is
    watched; the others are read once per interval. This host's keys live on a lease of
    `lease_ttl(interval)` seconds that every round renews."""
    failed: defaultdict[str, int] = defaultdict(int)
    state = LoopState(ttl=lease_ttl(interval))
    while not stop.is_set():
        try:
            result = sync_once(default_store, state=state)
        except Exception as exc:  # noqa: BLE001 -- the loop must outlive any one bad round
            result = Round(errors=[f"vxlan sync: {exc.__class__.__name__}: {exc}"])
        for error in result.errors:
            failed[error] += 1
            if failed[error] == 1:  # once per distinct problem, not every round
                _warn(error)
        if not result.errors:
            failed.clear()
        if report is not None:
            report(result)
        _wait(stop, interval, result.watch[0] if result.watch and not result.errors else None)


def _wait(stop: threading.Event, interval: float, watch: tuple[Any, str, int] | None) -> None:
    """Until the next round: a change in etcd (the watch), a change in this host's registry
    (an ADD or DEL here: checked every WAKE seconds), `stop`, or `interval` passed."""
    deadline = time.monotonic() + interval
    seen = registry.signature()

    def woken() -> bool:
        return stop.is_set() or registry.signature() != seen
    if watch is not None:  # one watch for the whole wait, the registry looked at every WAKE s
        client, prefix, revision = watch
        if client.wait_for_change(prefix, revision, interval, tick=woken, every=WAKE) is not None:
            return
    while not woken():  # no watch (no store, errors, etcd unreachable): the registry only
        left = deadline - time.monotonic()
        if left <= 0:
            return
        stop.wait(min(WAKE, left))


def start_thread(*, interval: float = DEFAULT_INTERVAL,
                 default_store: Mapping[str, Any] | None = None) -> tuple[threading.Thread, threading.Event]:
    """The loop in a daemon thread (`cni-bridge serve`); set the event to stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=run_loop, args=(stop,), kwargs={"interval": interval,
                                                                    "default_store": default_store},
                              name="vxlan-sync", daemon=True)
    thread.start()
    return thread, stop
