"""The file-backed lease store: one directory per network, one file per leased address.

On-disk format (all text except the bitmap cache), `<dataDir>/<network>/`:

    lock                   empty; flock(LOCK_EX) held for every change to this directory
    10.1.0.5               a lease: one JSON line {"address", "subnet", "gateway", "container_id",
    fd00::5                  "ifname", "since" (unix time), "range_set"} -- the source of truth:
                             an address is leased if and only if its file exists
    owner.<cid>+<ifname>   index of one attachment: {"container_id", "ifname", "addresses": [...]};
                             always a superset of the attachment's lease files (it is written
                             before them and trimmed after them), stale entries are ignored.
                             Names longer than 200 characters become owner.sha256-<hex>.
    last_reserved.<i>      the last address handed out dynamically from range set i (round robin)
    bitmap.<i>             used/free cache of range set i (see pool.py); rebuilt when missing,
                             made for other ranges, or claiming the set is full
    .tmp.<name>.<pid>.<random>  a write in progress, or left by a crash; ignored, removed by
                             gc once older than fsutil.TMP_STALE_AFTER

Every lease and owner file is written to a temp file, fsynced, renamed into place, and the
directory is fsynced before the call returns, so a reader never sees half a lease and a lease
that was reported survives a crash. A failing ADD removes whatever it had written (no partial
lease). The hint files (last_reserved, bitmap) are not fsynced: they are verified on use.

The store refuses a directory (or dataDir, or an ancestor) that anyone but root could change:
whoever can write there could plant symlinks or forged leases (fsutil.check_private_dir).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from cni_bridge import validate
from cni_bridge.crashpoint import step
from cni_bridge.errors import IO_FAILURE, NOT_AVAILABLE, TRY_AGAIN, PluginError, config_error
from cni_bridge.ipam.config import IPAddress, IpamConfig
from cni_bridge.ipam.fsutil import (
    TMP_PREFIX,
    check_private_dir,
    ensure_private_dir,
    flocked,
    fsync_dir,
    is_stale_temp,
    probe_write,
    read_or_none,
    unlink_if_exists,
    write_atomic,
    write_hint,
)
from cni_bridge.ipam.lease import (
    OWNER_PREFIX,
    CorruptRecord,
    Lease,
    decode_owner,
    encode_owner,
    lease_name,
    owner_name,
    parse_lease_name,
)
from cni_bridge.ipam.plan import assign_requested, reusable
from cni_bridge.ipam.pool import MAX_BITMAP, PROBES_BEFORE_SCAN, Bitmap, Pool, probe_order

__all__ = ["Lease", "LeaseStore", "list_networks"]

LOCK_NAME = "lock"
STORE_LEVELS = 2  # <dataDir>/<network>: neither may be writable by group or others


def _report(message: str) -> None:
    """Problems the operator must fix but that must not fail the request go to stderr (the CNI
    runtime's and the daemon's log; stdout is reserved for the result)."""
    print(f"pybridge-ipam: {message}", file=sys.stderr)


def _owner(container_id: str, ifname: str) -> tuple[str, str]:
    """Both reach file names: validate before any path is built."""
    return validate.container_id(container_id), validate.ifname(ifname, from_env=True)


class LeaseStore:
    """All leases of one network. Safe across processes and threads (every change holds flock)."""

    def __init__(self, data_dir: Path, network: str, *, durable: bool = True,
                 lock_timeout: float = 30.0) -> None:
        self.network = validate.network_name(network)
        self.dir = Path(data_dir) / self.network
        self.durable = durable  # False only for benchmarks that pre-fill tens of thousands of leases
        self.lock_timeout = lock_timeout

    # --- reading (no lock: every file is replaced atomically) -------------------------------
    def leases_of(self, container_id: str, ifname: str) -> list[Lease]:
        cid, ifn = _owner(container_id, ifname)
        with self._io("read leases"):
            return self._owned(cid, ifn) if self._exists() else []

    def all_leases(self) -> list[Lease]:
        """Every readable lease, sorted by address; corrupt files are reported by path and skipped."""
        with self._io("list leases"):
            if not self._exists():
                return []
            leases = [lease for address in self._leased_addresses()
                      if (lease := self._read_lease(address)) is not None]
        return sorted(leases, key=lambda lease: (lease.address.version, lease.address))

    # --- changing ----------------------------------------------------------------------------
    def allocate(self, container_id: str, ifname: str, config: IpamConfig,
                 requested: Sequence[IPAddress] = (), *, allow_gateway: bool = False) -> list[Lease]:
        """One address per range set for (container_id, ifname), in range-set order.

        Asking again returns the same leases (idempotent ADD). `requested` addresses (static IPs)
        are placed in the set that contains them; `allow_gateway` lets the Docker IPAM driver
        reserve a pool's gateway. On any failure nothing new is left behind.
        """
        cid, ifn = _owner(container_id, ifname)
        wanted = assign_requested(self.network, config, requested, allow_gateway)
        with self._io("allocate"), self._locked():
            current = self._owned(cid, ifn)
            keep = reusable(current, config, wanted)
            new, picked = self._plan(cid, ifn, config, wanted, keep)
            stale = [lease for lease in current if lease not in keep.values()]
            if new or stale or len(keep) != len(current):
                self._commit(cid, ifn, list(keep.values()), new, stale)
                self._remember(picked, new, stale)
                step("ipam-hints")
        return sorted([*keep.values(), *new], key=lambda lease: config.set_of(lease.address))

    def _plan(self, cid: str, ifn: str, config: IpamConfig, wanted: dict[int, IPAddress],
              keep: dict[int, Lease]) -> tuple[list[Lease], dict[int, tuple[IPAddress, Bitmap | None]]]:
        """Choose an address for every range set not in `keep` (which it may extend); no writes."""
        new: list[Lease] = []
        picked: dict[int, tuple[IPAddress, Bitmap | None]] = {}
        since = time.time()
        for index, range_set in enumerate(config.ranges):
            if index in keep:
                continue
            if index in wanted:
                address = wanted[index]
                holder = self._read_lease(address)
                if holder is not None and holder.owner == (cid, ifn):
                    keep[index] = holder  # its owner index entry was lost; the lease itself is ours
                    continue
                if holder is not None or os.path.lexists(self._lease_path(address)):
                    who = f"container {holder.container_id} ({holder.ifname})" if holder else "a lease file"
                    raise config_error(f"requested address {address} is already in use by {who}",
                                       f"network {self.network}")
            else:
                address, bitmap = self._pick(index, Pool(range_set, config.gateways()))
                picked[index] = (address, bitmap)
            address_range = config.range_of(address)
            assert address_range is not None
            new.append(Lease(address, address_range.subnet, address_range.gateway, cid, ifn, since, index))
        return new, picked

    def release(self, container_id: str, ifname: str) -> list[Lease]:
        """Free every lease of (container_id, ifname); releasing twice is not an error."""
        cid, ifn = _owner(container_id, ifname)
        owner_path = self.dir / owner_name(cid, ifn)
        with self._io("release"):
            if not self._exists():
                return []
        with self._io("release"), self._locked():
            leases = self._owned(cid, ifn)
            # Cache first: a crash after it leaves a free bit over a live lease, which the
            # allocator's existence check corrects; the other order would leave a used bit
            # that no retried DEL could find (its lease file is gone).
            self._forget(leases)
            for lease in leases:
                unlink_if_exists(self._lease_path(lease.address))
                step("ipam-lease-released")
            removed_owner = unlink_if_exists(owner_path)
            step("ipam-owner-released")
            if leases or removed_owner:
                self._sync()
        return leases

    def release_address(self, address: IPAddress) -> Lease | None:
        """Free one address whoever holds it (Docker's ReleaseAddress knows only the address).

        A corrupt lease file at that address is removed too (the operator asked for it free).
        """
        address = ipaddress.ip_address(address)
        with self._io("release address"):
            if not self._exists():
                return None
        with self._io("release address"), self._locked():
            lease = self._read_lease(address)
            if lease is not None:
                self._forget([lease])  # cache first, as in release()
            if not unlink_if_exists(self._lease_path(address)):
                return None
            if lease is not None:
                self._drop_from_owner(lease.container_id, lease.ifname, {address})
            self._sync()
        return lease

    def gc(self, valid: set[tuple[str, str]], *, keep: Callable[[Lease], bool] | None = None) -> list[Lease]:
        """Release every lease whose (container_id, ifname) is not in `valid` (CNI GC), except
        those `keep` claims for someone else (decided under the lock: a lease written while the
        caller built `valid` is judged too).

        Also tidies what crashes leave: stale temp files and owner files that point at nothing.
        """
        with self._io("gc"):
            if not self._exists():
                return []
        with self._io("gc"), self._locked():
            doomed = [lease for lease in self.all_leases()
                      if lease.owner not in valid and not (keep is not None and keep(lease))]
            self._forget(doomed)  # cache first, as in release()
            for lease in doomed:
                unlink_if_exists(self._lease_path(lease.address))
            self._tidy_owners()
            self._remove_stale_temps()
            self._sync()
        return doomed

    def remove_if_empty(self) -> bool:
        """Remove the store's directory if it holds no lease (only its own bookkeeping), deciding
        and removing under its lock: a lease written meanwhile keeps it, and a writer that was
        waiting for the lock takes it again on a new lock file (locks.acquire). True if removed."""
        with self._io("remove the empty store"):
            if not self._exists():
                return False
        with self._io("remove the empty store"), self._locked():
            names = os.listdir(self.dir)
            if any(not (name == LOCK_NAME or name.startswith(("bitmap.", "last_reserved."))
                        or (name.startswith(TMP_PREFIX) and is_stale_temp(self.dir / name)))
                   for name in names):
                return False  # a lease or owner file, a write in progress, or something not ours
            for name in names:
                if name != LOCK_NAME:
                    unlink_if_exists(self.dir / name)
            unlink_if_exists(self.dir / LOCK_NAME)  # still held: see locks.acquire
            try:
                os.rmdir(self.dir)
            except OSError:  # a STATUS probe (which takes no lock) just wrote into it: keep it
                return False
        return True

    def check_writable(self) -> None:
        """STATUS: error 50 unless a lease could be written right now (in a directory we may use)."""
        try:
            ensure_private_dir(self.dir, levels=STORE_LEVELS)
            os.close(os.open(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
            probe_write(self.dir, durable=self.durable)  # a unique name: concurrent probes never collide
        except OSError as exc:
            raise PluginError(NOT_AVAILABLE, f"IPAM store {self.dir} is not writable",
                              f"{exc.__class__.__name__}: {exc.strerror or exc}") from None
        except PluginError as exc:
            raise PluginError(NOT_AVAILABLE, exc.msg, exc.details) from None

    # --- internals ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _io(self, what: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise PluginError(IO_FAILURE, f"IPAM store {self.dir}: {what} failed",
                              f"{exc.__class__.__name__}: {exc}") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Create (0755) and check the directory, then hold its lock; recreated should it be
        removed (remove_if_empty) while we wait."""
        def make_dir() -> None:
            ensure_private_dir(self.dir, levels=STORE_LEVELS)
        make_dir()
        with flocked(self.dir / LOCK_NAME, self.lock_timeout, make_parent=make_dir):
            yield

    def _exists(self) -> bool:
        """Whether the store's directory exists; error 5 if others could have changed it."""
        try:
            check_private_dir(self.dir, levels=STORE_LEVELS)
        except FileNotFoundError:
            return False
        return True

    def _remove_stale_temps(self) -> None:
        """Temp files of crashed writes; one still being written (a STATUS probe takes no lock)
        is younger than TMP_STALE_AFTER and stays."""
        for name in os.listdir(self.dir):
            if name.startswith(TMP_PREFIX) and is_stale_temp(self.dir / name):
                unlink_if_exists(self.dir / name)

    def _sync(self) -> None:
        if self.durable:
            fsync_dir(self.dir)

    def _lease_path(self, address: IPAddress) -> Path:
        return self.dir / lease_name(address)

    def _leased_addresses(self) -> Iterator[IPAddress]:
        """The one directory scan: used by all_leases, gc and bitmap rebuilds, never per ADD."""
        try:
            with os.scandir(self.dir) as entries:
                for entry in entries:
                    address = parse_lease_name(entry.name)
                    if address is not None:
                        yield address
        except FileNotFoundError:
            return

    def _read_lease(self, address: IPAddress) -> Lease | None:
        """The lease at `address`; None if free or unreadable (reported with its path)."""
        path = self._lease_path(address)
        raw = read_or_none(path)
        if raw is None:
            return None
        try:
            lease = Lease.decode(raw)
            if lease.address != address:
                raise CorruptRecord(f"file names {address} but holds {lease.address}")
            return lease
        except CorruptRecord as exc:
            _report(f"skipping corrupt lease file {path}: {exc}")
            return None

    def _owned(self, cid: str, ifn: str) -> list[Lease]:
        """Leases of one attachment via its owner index (one scan only if the index is corrupt)."""
        path = self.dir / owner_name(cid, ifn)
        raw = read_or_none(path)
        if raw is None:
            return []
        try:
            _, _, addresses = decode_owner(raw)
        except CorruptRecord as exc:
            _report(f"corrupt owner file {path} ({exc}): scanning all leases")
            addresses = list(self._leased_addresses())
        leases = [lease for address in dict.fromkeys(addresses)
                  if (lease := self._read_lease(address)) is not None and lease.owner == (cid, ifn)]
        return sorted(leases, key=lambda lease: lease.range_set)

    def _pick(self, index: int, pool: Pool) -> tuple[IPAddress, Bitmap | None]:
        """Next free address of a set after its round-robin cursor; error 11 when it is full."""
        try:
            raw_cursor = read_or_none(self.dir / f"last_reserved.{index}")
            cursor = ipaddress.ip_address(raw_cursor.decode().strip()) if raw_cursor else None
        except (OSError, ValueError):  # a hint that is not a plain file, or garbage: start over
            cursor = None
        start = pool.start_after(cursor)
        if pool.size <= MAX_BITMAP:
            found = self._pick_bitmap(index, pool, start)
            if found is not None:
                return found
        else:
            address = self._pick_probing(pool, start)
            if address is not None:
                return address, None
        raise PluginError(TRY_AGAIN, f"no free address in range set {index} of network {self.network}",
                          f"all {pool.size} addresses of {pool.describe()} "
                          "are leased or reserved; release some or add a range")

    def _pick_bitmap(self, index: int, pool: Pool, start: int) -> tuple[IPAddress, Bitmap] | None:
        path = self.dir / f"bitmap.{index}"
        bitmap = Bitmap.load(path, pool)
        rebuilt = bitmap is None
        if bitmap is None:
            bitmap = self._rebuild(path, pool)
        stale = 0
        while True:
            idx = bitmap.find_clear(start)
            if idx is None or (stale > PROBES_BEFORE_SCAN and not rebuilt):
                if rebuilt:
                    return None
                bitmap, rebuilt = self._rebuild(path, pool), True
                continue
            address = pool.address(idx)
            if not pool.never_leased(address) and not os.path.lexists(self._lease_path(address)):
                return address, bitmap
            bitmap.mark(idx, True)  # the cache was stale here; fix it and look further
            stale += 1
            start = (idx + 1) % pool.size

    def _rebuild(self, path: Path, pool: Pool) -> Bitmap:
        used = [idx for address in self._leased_addresses() if (idx := pool.index(address)) is not None]
        return Bitmap.build(path, pool, [*used, *pool.reserved_indexes()])

    def _pick_probing(self, pool: Pool, start: int) -> IPAddress | None:
        """Huge sets: stat from the cursor; after a long taken run, scan once and skip known leases."""
        taken: set[IPAddress] | None = None
        for probes, idx in enumerate(probe_order(pool, start)):
            address = pool.address(idx)
            if pool.never_leased(address) or (taken is not None and address in taken):
                continue
            if not os.path.lexists(self._lease_path(address)):
                return address
            if taken is None and probes >= PROBES_BEFORE_SCAN:
                taken = set(self._leased_addresses())
        return None

    def _commit(self, cid: str, ifn: str, keep: list[Lease], new: list[Lease], stale: list[Lease]) -> None:
        """Owner index first (superset), then leases, then trim: a crash anywhere leaks nothing."""
        owner_path = self.dir / owner_name(cid, ifn)
        before = read_or_none(owner_path)
        written: list[Lease] = []
        try:
            everything = [lease.address for lease in keep + stale + new]
            write_atomic(owner_path, encode_owner(cid, ifn, everything), durable=self.durable)
            step("ipam-owner-file")
            for lease in new:
                write_atomic(self._lease_path(lease.address), lease.encode(), durable=self.durable)
                written.append(lease)
                step("ipam-lease-file")
            for lease in stale:
                unlink_if_exists(self._lease_path(lease.address))
            if stale:
                write_atomic(owner_path, encode_owner(cid, ifn, [lease.address for lease in keep + new]),
                             durable=self.durable)
            self._sync()
        except BaseException:
            with contextlib.suppress(OSError):
                for lease in written:
                    unlink_if_exists(self._lease_path(lease.address))
                if before is None:
                    unlink_if_exists(owner_path)
                else:
                    write_atomic(owner_path, before, durable=self.durable)
                self._sync()
            raise

    def _remember(self, picked: dict[int, tuple[IPAddress, Bitmap | None]], new: list[Lease],
                  stale: list[Lease]) -> None:
        """Update the hints after a commit: cursor of dynamic picks, bitmap bits."""
        for index, (address, bitmap) in picked.items():
            write_hint(self.dir / f"last_reserved.{index}", str(address))
            if bitmap is not None:
                idx = bitmap.layout.index(address)
                if idx is not None:
                    bitmap.mark(idx, True)
        static = [lease for lease in new if lease.range_set not in picked]
        self._mark(static, used=True)
        self._forget(stale)

    def _forget(self, leases: Iterable[Lease]) -> None:
        self._mark(leases, used=False)

    def _mark(self, leases: Iterable[Lease], used: bool) -> None:
        bitmaps: dict[int, Bitmap | None] = {}
        for lease in leases:
            if lease.range_set not in bitmaps:
                bitmaps[lease.range_set] = Bitmap.load(self.dir / f"bitmap.{lease.range_set}")
            bitmap = bitmaps[lease.range_set]
            idx = bitmap.layout.index(lease.address) if bitmap is not None else None
            if bitmap is not None and idx is not None:
                bitmap.mark(idx, used)

    def _drop_from_owner(self, cid: str, ifn: str, addresses: set[IPAddress]) -> None:
        path = self.dir / owner_name(cid, ifn)
        raw = read_or_none(path)
        try:
            remaining = [a for a in decode_owner(raw)[2] if a not in addresses] if raw else []
        except CorruptRecord:
            remaining = [lease.address for lease in self._owned(cid, ifn) if lease.address not in addresses]
        if remaining:
            write_atomic(path, encode_owner(cid, ifn, remaining), durable=self.durable)
        else:
            unlink_if_exists(path)

    def _tidy_owners(self) -> None:
        """Trim every owner file to the leases that still exist and are really its own."""
        for name in os.listdir(self.dir):
            if not name.startswith(OWNER_PREFIX):
                continue
            path = self.dir / name
            try:
                cid, ifn, addresses = decode_owner(read_or_none(path) or b"")
            except CorruptRecord as exc:
                _report(f"removing corrupt owner file {path}: {exc}")
                unlink_if_exists(path)
                continue
            live = [a for a in addresses if (lease := self._read_lease(a)) is not None
                    and lease.owner == (cid, ifn)]
            if not live:
                unlink_if_exists(path)
            elif live != addresses:
                write_atomic(path, encode_owner(cid, ifn, live), durable=self.durable)


def list_networks(data_dir: Path) -> list[str]:
    """Networks that have a store under `data_dir` (directories with a lock file)."""
    try:
        names = os.listdir(data_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        try:
            validate.network_name(name)
        except PluginError:
            continue
        if os.path.exists(os.path.join(data_dir, name, LOCK_NAME)):
            found.append(name)
    return sorted(found)
