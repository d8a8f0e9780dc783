"""The etcd-backed lease store: one network's leases shared by every host that uses the cluster.

Keys, under the configured prefix P (default /pybridge), values one JSON object each:

    P/ipam/<network>/lease/<address>              the lease (Lease.to_dict() with "host"): the
                                                  truth -- an address is leased iff its key exists
    P/ipam/<network>/owner/<host>/<cid>+<ifname>  {"container_id", "ifname", "host", "addresses"}:
                                                  exactly the attachment's lease keys
    P/ipam/<network>/cursor/<set>                 the last address handed out dynamically from
                                                  range set <set> (a hint shared by all hosts)

Every change is ONE etcd transaction. An allocation compares that each new address key does not
exist and that the owner key is as it was read, then writes the lease keys, the owner key and the
cursor together: two hosts racing for one address cannot both win, and no crash or lost answer
leaves a lease without its owner key or the other way round. A failed compare runs the failure
branch, which reads back the owner key and the existence of the next WINDOW candidates of each
range set, so a retry costs one more round trip and no listing. Allocation therefore reads the
owner and cursor keys (one round trip) and commits (one more) however many leases exist; a
/16 that is full is recognised after size / WINDOW failed rounds. Release and GC compare the
mod revisions of the keys they delete, so a concurrent re-ADD is never undone.

A transaction whose answer is lost (timeout) may have been applied: running it again fails its
compare, the owner key read back then shows the addresses as ours, and the ADD returns them.
"""

from __future__ import annotations

import ipaddress
import os
import time
from dataclasses import replace
from typing import Callable, Sequence

from cni_bridge import validate
from cni_bridge.crashpoint import step
from cni_bridge.errors import NOT_AVAILABLE, TRY_AGAIN, PluginError, config_error
from cni_bridge.ipam.config import IPAddress, IpamConfig, StoreSpec
from cni_bridge.ipam.etcd import EtcdClient, KeyValue, absent, op_delete, op_get, op_put, unchanged
from cni_bridge.ipam.lease import CorruptRecord, Lease, decode_owner, encode_owner
from cni_bridge.ipam.plan import assign_requested, reusable
from cni_bridge.ipam.pool import Pool

WINDOW = 16  # candidates whose existence a failed allocation reads back, per range set
_clients: dict[tuple, EtcdClient] = {}


def client_for(spec: StoreSpec) -> EtcdClient:
    """One client (and its keep-alive connections) per cluster, kept for the process: the warm
    daemon then pays no connection set-up per ADD."""
    key = (spec.endpoints, spec.cacert, spec.cert, spec.key, spec.timeout)
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = EtcdClient(spec.endpoints, timeout=spec.timeout, cacert=spec.cacert,
                                            cert=spec.cert, key=spec.key)
    return client


def _report(message: str) -> None:
    import sys  # lazy: rare
    print(f"pybridge-ipam: {message}", file=sys.stderr)


def list_networks(spec: StoreSpec) -> list[str]:
    """Networks that have at least one lease in the cluster (one keys-only range)."""
    base = f"{spec.prefix}/ipam/"
    names = {kv.key[len(base):].split("/", 1)[0] for kv in client_for(spec).get(base, prefix=True, keys_only=True)
             if "/lease/" in kv.key}
    return sorted(names)


class EtcdLeaseStore:
    """All leases of one network in etcd; the same methods as the file store's LeaseStore."""

    def __init__(self, spec: StoreSpec, network: str, *, client: EtcdClient | None = None) -> None:
        self.network = validate.network_name(network)
        self.spec = spec
        self.host = spec.host_id()
        self.client = client or client_for(spec)
        self.base = f"{spec.prefix}/ipam/{self.network}"
        self.dir = f"etcd:{self.base}"  # what messages and `ipam ls` call the store

    # --- keys ----------------------------------------------------------------------------------
    def _lease_key(self, address: IPAddress) -> str:
        return f"{self.base}/lease/{address}"

    def _owner_key(self, cid: str, ifn: str, host: str | None = None) -> str:
        return f"{self.base}/owner/{host or self.host}/{cid}+{ifn}"

    def _cursor_key(self, index: int) -> str:
        return f"{self.base}/cursor/{index}"

    # --- reading -------------------------------------------------------------------------------
    def leases_of(self, container_id: str, ifname: str) -> list[Lease]:
        cid, ifn = _owner(container_id, ifname)
        owner = self._one(self._owner_key(cid, ifn))
        return [lease for lease, _ in self._owned(owner, cid, ifn)]

    def all_leases(self) -> list[Lease]:
        leases = [lease for kv in self.client.get(f"{self.base}/lease/", prefix=True)
                  if (lease := self._decode(kv)) is not None]
        return sorted(leases, key=lambda lease: (lease.address.version, lease.address))

    # --- changing ------------------------------------------------------------------------------
    def allocate(self, container_id: str, ifname: str, config: IpamConfig,
                 requested: Sequence[IPAddress] = (), *, allow_gateway: bool = False) -> list[Lease]:
        """One address per range set for (container_id, ifname), in range-set order; asking again
        returns the same leases. Error 11 if etcd does not answer in time or a set is full."""
        cid, ifn = _owner(container_id, ifname)
        wanted = assign_requested(self.network, config, requested, allow_gateway)
        owner_key = self._owner_key(cid, ifn)
        pools = [Pool(range_set, config.gateways()) for range_set in config.ranges]
        cursor_keys = [self._cursor_key(i) for i in range(len(pools))]
        read = self.client.txn([], [op_get(owner_key), *(op_get(k) for k in cursor_keys)])
        owner_kv = next(iter(read.kvs(0)), None)
        starts = [pool.start_after(_address_or_none(next(iter(read.kvs(i + 1)), None)))
                  for i, pool in enumerate(pools)]
        taken: list[set[int]] = [set() for _ in pools]
        probed = [0] * len(pools)
        deadline = time.monotonic() + self.spec.timeout
        while True:
            current = self._owned(owner_kv, cid, ifn)
            keep = reusable([lease for lease, _ in current], config, wanted)
            stale = [(lease, kv) for lease, kv in current if lease not in keep.values()]
            new, picked = self._plan(cid, ifn, config, wanted, keep, pools, starts, taken)
            if not new and not stale and owner_kv is not None:
                break
            windows = {index: self._window(pools[index], starts[index], taken[index]) for index in picked}
            compare = [unchanged(owner_key, owner_kv.mod_revision if owner_kv else 0),
                       *(absent(self._lease_key(lease.address)) for lease in new),
                       *(unchanged(kv.key, kv.mod_revision) for _, kv in current)]
            addresses = [lease.address for lease in sorted([*keep.values(), *new], key=lambda x: x.range_set)]
            success = [*(op_put(self._lease_key(lease.address), lease.encode()) for lease in new),
                       op_put(owner_key, encode_owner(cid, ifn, addresses, self.host)),
                       *(op_delete(kv.key) for _, kv in stale),
                       *(op_put(self._cursor_key(index), str(address)) for index, address in picked.items())]
            failure = [op_get(owner_key),
                       *(op_get(self._lease_key(lease.address)) for lease in new if lease.range_set not in picked),
                       *(op_get(self._lease_key(pools[index].address(i)), keys_only=True)
                         for index in picked for i in windows[index])]
            answer = self.client.txn(compare, success, failure)
            if answer.succeeded:
                step("ipam-etcd-allocate")
                return sorted([*keep.values(), *new], key=lambda lease: lease.range_set)
            # Someone was faster: learn what is taken now, then try again.
            owner_kv = next(iter(answer.kvs(0)), None)
            position = 1
            for lease in new:
                if lease.range_set in picked:
                    continue
                holder = next(iter(answer.kvs(position)), None)
                position += 1
                held = self._decode(holder) if holder is not None else None
                if holder is not None and (held is None or held.owner != (cid, ifn) or held.host != self.host):
                    who = f"container {held.container_id} ({held.ifname}) on host {held.host}" if held else "a record"
                    raise config_error(f"requested address {lease.address} is already in use by {who}",
                                       f"network {self.network}")
            for index in picked:
                free = []
                for i in windows[index]:
                    if answer.kvs(position):
                        taken[index].add(i)
                    else:
                        free.append(i)
                    position += 1
                probed[index] += len(windows[index])
                mine = pools[index].index(picked[index])
                if mine in free:  # our candidate was free (another set or the owner key raced): keep it
                    starts[index] = mine
                elif free:  # several hosts race for the same next address: spread them (os.urandom:
                    # `random` imports hashlib, 5 ms per exec'd pybridge-ipam)
                    starts[index] = free[os.urandom(1)[0] % min(4, len(free))]
                elif windows[index]:
                    starts[index] = (windows[index][-1] + 1) % pools[index].size
                if probed[index] > pools[index].size + WINDOW:
                    self._full(index, pools[index])
            if time.monotonic() > deadline:
                raise PluginError(TRY_AGAIN, f"could not allocate in network {self.network}: other "
                                  "hosts kept taking the candidate addresses; try again", self.dir)
        return sorted(keep.values(), key=lambda lease: lease.range_set)

    def _plan(self, cid: str, ifn: str, config: IpamConfig, wanted: dict[int, IPAddress],
              keep: dict[int, Lease], pools: list[Pool], starts: list[int],
              taken: list[set[int]]) -> tuple[list[Lease], dict[int, IPAddress]]:
        new: list[Lease] = []
        picked: dict[int, IPAddress] = {}
        since = time.time()
        for index, pool in enumerate(pools):
            if index in keep:
                continue
            if index in wanted:
                address = wanted[index]
            else:
                found = next(iter(self._window(pool, starts[index], taken[index], 1)), None)
                if found is None:
                    self._full(index, pool)
                address = picked[index] = pool.address(found)
            address_range = config.range_of(address)
            assert address_range is not None
            new.append(Lease(address, address_range.subnet, address_range.gateway, cid, ifn, since, index,
                             self.host))
        return new, picked

    @staticmethod
    def _window(pool: Pool, start: int, taken: set[int], size: int = WINDOW) -> list[int]:
        """The next `size` indexes from `start` that may be free (round robin, wrapping once)."""
        out: list[int] = []
        for step_ in range(pool.size):
            idx = (start + step_) % pool.size
            if idx in taken or pool.never_leased(pool.address(idx)):
                continue
            out.append(idx)
            if len(out) == size:
                break
        return out

    def _full(self, index: int, pool: Pool) -> None:
        raise PluginError(TRY_AGAIN, f"no free address in range set {index} of network {self.network}",
                          f"all {pool.size} addresses of {pool.describe()} are leased or reserved; "
                          "release some or add a range")

    def release(self, container_id: str, ifname: str) -> list[Lease]:
        """Free every lease of (container_id, ifname) of this host; twice is not an error."""
        cid, ifn = _owner(container_id, ifname)
        return self._release_owner(self._owner_key(cid, ifn), cid, ifn)

    def _release_owner(self, owner_key: str, cid: str, ifn: str) -> list[Lease]:
        while True:
            owner_kv = self._one(owner_key)
            if owner_kv is None:
                return []
            current = self._owned(owner_kv, cid, ifn, host=owner_key.split("/")[-2])
            answer = self.client.txn(
                [unchanged(owner_key, owner_kv.mod_revision), *(unchanged(kv.key, kv.mod_revision) for _, kv in current)],
                [op_delete(owner_key), *(op_delete(kv.key) for _, kv in current)])
            if answer.succeeded:
                step("ipam-etcd-release")
                return [lease for lease, _ in current]

    def release_address(self, address: IPAddress) -> Lease | None:
        """Free one address whoever (and on whichever host) holds it."""
        address = ipaddress.ip_address(address)
        key = self._lease_key(address)
        while True:
            kv = self._one(key)
            if kv is None:
                return None
            lease = self._decode(kv)
            compare, ops = [unchanged(key, kv.mod_revision)], [op_delete(key)]
            if lease is not None:
                owner_key = self._owner_key(lease.container_id, lease.ifname, lease.host)
                owner_kv = self._one(owner_key)
                compare.append(unchanged(owner_key, owner_kv.mod_revision if owner_kv else 0))
                remaining = [a for a in _owner_addresses(owner_kv) if a != address] if owner_kv else []
                if remaining:
                    ops.append(op_put(owner_key, encode_owner(lease.container_id, lease.ifname, remaining,
                                                              lease.host or self.host)))
                elif owner_kv is not None:
                    ops.append(op_delete(owner_key))
            if self.client.txn(compare, ops).succeeded:
                step("ipam-etcd-release")
                return lease

    def gc(self, valid: set[tuple[str, str]], *, keep: Callable[[Lease], bool] | None = None) -> list[Lease]:
        """Release this host's leases whose attachment is not in `valid` (other hosts' are theirs
        to judge), except those `keep` claims. Reads only this host's owner keys."""
        released: list[Lease] = []
        for owner_kv in self.client.get(f"{self.base}/owner/{self.host}/", prefix=True):
            try:
                cid, ifn, _ = decode_owner(owner_kv.value)
            except CorruptRecord as exc:
                _report(f"skipping corrupt owner key {owner_kv.key}: {exc}")
                continue
            if (cid, ifn) in valid:
                continue
            leases = [lease for lease, _ in self._owned(owner_kv, cid, ifn)]
            if keep is not None and any(keep(lease) for lease in leases):
                continue
            released += self._release_owner(owner_kv.key, cid, ifn)
        return released

    def import_leases(self, leases: Sequence[Lease], batch: int = 50) -> int:
        """Copy leases from another store (`cni-bridge ipam migrate`) as this host's, with their
        owner keys. Refused (error 7, nothing written) if any address or owner is already in
        etcd. Written in transactions of `batch` leases (etcd allows 128 operations per txn by
        default): each is all-or-nothing and compares again, so a conflict that appears midway
        stops the copy there, with what was copied complete and owned."""
        owners: dict[tuple[str, str], list[Lease]] = {}
        for lease in leases:
            owners.setdefault(lease.owner, []).append(lease)
        existing = {kv.key for kv in self.client.get(f"{self.base}/", prefix=True, keys_only=True)}
        conflicts = sorted({str(lease.address) for lease in leases if self._lease_key(lease.address) in existing}
                           | {f"{cid}+{ifn}" for cid, ifn in owners if self._owner_key(cid, ifn) in existing})
        if conflicts:
            raise config_error(f"conflict: already in etcd for network {self.network}: {', '.join(conflicts[:20])}",
                               "nothing was copied; release those first or migrate another network")
        groups = list(owners.items())
        copied = 0
        while groups:
            chunk, size = [], 0
            while groups and (not chunk or size + len(groups[0][1]) <= batch):
                chunk.append(groups.pop(0))
                size += len(chunk[-1][1])
            compare, ops = [], []
            for (cid, ifn), held in chunk:
                owned = [replace(lease, host=self.host) for lease in held]
                compare += [absent(self._owner_key(cid, ifn)), *(absent(self._lease_key(x.address)) for x in owned)]
                ops += [op_put(self._owner_key(cid, ifn), encode_owner(cid, ifn, [x.address for x in owned], self.host)),
                        *(op_put(self._lease_key(x.address), x.encode()) for x in owned)]
            if not self.client.txn(compare, ops).succeeded:
                raise config_error(f"conflict: leases of network {self.network} appeared in etcd during the copy",
                                   f"{copied} leases were copied before it")
            copied += size
        return copied

    def remove_if_empty(self) -> bool:
        """Remove the network's cursor keys if it holds no lease on any host. True if empty."""
        if self.client.get(f"{self.base}/lease/", prefix=True, keys_only=True):
            return False
        self.client.txn([], [op_delete(f"{self.base}/cursor/", prefix=True)])
        return True

    def check_writable(self) -> None:
        """STATUS: error 50 unless the cluster answers a linearizable (quorum) read now."""
        try:
            self.client.get(f"{self.base}/cursor/0")
        except PluginError as exc:
            raise PluginError(NOT_AVAILABLE, exc.msg, exc.details) from None

    # --- internals -----------------------------------------------------------------------------
    def _one(self, key: str) -> KeyValue | None:
        return next(iter(self.client.get(key)), None)

    def _decode(self, kv: KeyValue) -> Lease | None:
        try:
            lease = Lease.decode(kv.value)
            if self._lease_key(lease.address) != kv.key:
                raise CorruptRecord(f"key names another address than {lease.address}")
            return lease
        except CorruptRecord as exc:
            _report(f"skipping corrupt lease key {kv.key}: {exc}")
            return None

    def _owned(self, owner_kv: KeyValue | None, cid: str, ifn: str,
               host: str | None = None) -> list[tuple[Lease, KeyValue]]:
        """The attachment's leases with their key-values (to compare on), read in one txn."""
        if owner_kv is None:
            return []
        addresses = _owner_addresses(owner_kv)
        if not addresses:
            return []
        answer = self.client.txn([], [op_get(self._lease_key(a)) for a in addresses])
        found = []
        for i in range(len(addresses)):
            kv = next(iter(answer.kvs(i)), None)
            lease = self._decode(kv) if kv is not None else None
            if lease is not None and lease.owner == (cid, ifn) and lease.host == (host or self.host):
                found.append((lease, kv))
        return sorted(found, key=lambda item: item[0].range_set)


def _owner(container_id: str, ifname: str) -> tuple[str, str]:
    return validate.container_id(container_id), validate.ifname(ifname, from_env=True)


def _address_or_none(kv: KeyValue | None) -> IPAddress | None:
    try:
        return ipaddress.ip_address(kv.value.decode().strip()) if kv is not None else None
    except (ValueError, UnicodeDecodeError):
        return None


def _owner_addresses(kv: KeyValue) -> list[IPAddress]:
    try:
        return decode_owner(kv.value)[2]
    except CorruptRecord as exc:
        _report(f"corrupt owner key {kv.key}: {exc}")
        return []
