"""Finding the next free address of a range set without listing the lease directory.

A range set's addresses are numbered 0..size-1 (its ranges one after the other). For sets of up
to `MAX_BITMAP` addresses a bitmap file (1 bit per address, 8 KiB for a /16) remembers which are
used, so the next free address after the round-robin cursor is one regex search over bytes. The
bitmap is only a cache: the caller confirms every candidate with a stat of its lease file, marks
stale bits it trips over, and rebuilds the bitmap from one directory scan only when it is missing,
does not match the ranges, or claims the set is full. Bigger sets (IPv6 /64s) are probed address
by address from the cursor, falling back to one scan if a long run is taken.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Iterable

from cni_bridge.ipam.config import IPAddress, RangeSet
from cni_bridge.ipam.fsutil import read_or_none, write_atomic, write_in_place

MAX_BITMAP = 1 << 20  # 128 KiB of bits; bigger sets are probed
PROBES_BEFORE_SCAN = 256
_MAGIC = b"pybridge-ipam bitmap 1\n"
_NOT_FULL = re.compile(rb"[^\xff]")


class Layout:
    """The numbering of a range set's addresses: its spans (first, last) one after the other."""

    def __init__(self, version: int, spans: list[tuple[int, int]]) -> None:
        self.version, self.spans = version, spans
        self.size = sum(last - first + 1 for first, last in spans)
        self._cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address

    def index(self, address: IPAddress) -> int | None:
        if address.version != self.version:
            return None
        value, offset = int(address), 0
        for first, last in self.spans:
            if first <= value <= last:
                return offset + value - first
            offset += last - first + 1
        return None

    def address(self, index: int) -> IPAddress:
        for first, last in self.spans:
            if index <= last - first:
                return self._cls(first + index)
            index -= last - first + 1
        raise IndexError(index)

    def start_after(self, cursor: IPAddress | None) -> int:
        """Round robin: the index after the last reserved address (0 if unknown)."""
        idx = self.index(cursor) if cursor is not None else None
        return 0 if idx is None else (idx + 1) % self.size

    def header(self) -> bytes:
        spans = [[str(self._cls(first)), str(self._cls(last))] for first, last in self.spans]
        return _MAGIC + json.dumps({"ranges": spans}).encode() + b"\n"

    @classmethod
    def from_header(cls, raw: bytes) -> "Layout | None":
        """The layout a bitmap file was built for (release has no config to rebuild it from)."""
        if not raw.startswith(_MAGIC):
            return None
        line = raw[len(_MAGIC):].split(b"\n", 1)[0]
        try:
            spans = [(ipaddress.ip_address(a), ipaddress.ip_address(b))
                     for a, b in json.loads(line)["ranges"]]
        except (ValueError, KeyError, TypeError):
            return None
        if not spans or len({a.version for pair in spans for a in pair}) != 1:
            return None
        return cls(spans[0][0].version, [(int(a), int(b)) for a, b in spans])


class Pool(Layout):
    """A range set's layout plus the addresses in it that are never leased."""

    def __init__(self, range_set: RangeSet, gateways: Iterable[IPAddress] = ()) -> None:
        super().__init__(range_set[0].subnet.version, [(r.first, r.last) for r in range_set])
        self.ranges = range_set
        self._gateways = frozenset(g for g in gateways if g.version == self.version)

    def never_leased(self, address: IPAddress) -> bool:
        return address in self._gateways or any(r.never_leased(address) for r in self.ranges
                                                if r.contains(address))

    def describe(self) -> str:
        return ", ".join(r.describe() for r in self.ranges)

    def reserved_indexes(self) -> Iterable[int]:
        specials = set(self._gateways)
        for r in self.ranges:
            specials.update((r.subnet.network_address, r.subnet.broadcast_address))
        for address in specials:
            idx = self.index(address)
            if idx is not None and self.never_leased(address):
                yield idx


class Bitmap:
    """The on-disk used/free cache of one pool: header (magic + ranges JSON line) + bits."""

    def __init__(self, path: Path, layout: Layout, header: bytes, bits: bytearray) -> None:
        self.path, self.layout, self._offset, self.bits = path, layout, len(header), bits

    @classmethod
    def load(cls, path: Path, layout: Layout | None = None) -> "Bitmap | None":
        """The cached bitmap, or None if it is missing, damaged or was made for other ranges.

        Without `layout` (release, gc: no config at hand) the file's own header is trusted.
        """
        try:
            raw = read_or_none(path)
        except OSError:  # not a plain file (never followed): rebuilt through a temp file
            return None
        if raw is None:
            return None
        layout = layout or Layout.from_header(raw)
        if layout is None:
            return None
        header = layout.header()
        if not raw.startswith(header) or len(raw) != len(header) + (layout.size + 7) // 8:
            return None
        return cls(path, layout, header, bytearray(raw[len(header):]))

    @classmethod
    def build(cls, path: Path, pool: Pool, used: Iterable[int]) -> "Bitmap":
        """A fresh bitmap from the used indexes (written atomically, not fsynced: it is a cache)."""
        bits = bytearray((pool.size + 7) // 8)
        for idx in used:
            bits[idx >> 3] |= 1 << (idx & 7)
        for idx in range(pool.size, len(bits) * 8):  # padding never looks free
            bits[idx >> 3] |= 1 << (idx & 7)
        header = pool.header()
        write_atomic(path, header + bytes(bits), durable=False)
        return cls(path, pool, header, bits)

    def mark(self, idx: int, used: bool) -> None:
        """Flip one bit in memory and on disk (a one-byte pwrite in place, never through a
        symlink or hard link; a torn write cannot happen)."""
        byte = self.bits[idx >> 3]
        new = byte | (1 << (idx & 7)) if used else byte & ~(1 << (idx & 7))
        if new == byte:
            return
        self.bits[idx >> 3] = new
        # Not written (file gone or not a plain file of ours): a stale cache costs a rebuild later.
        write_in_place(self.path, bytes((new,)), self._offset + (idx >> 3))

    def find_clear(self, start: int) -> int | None:
        """First clear bit at or after `start`, wrapping around once."""
        found = self._scan(start, self.layout.size)
        return found if found is not None else self._scan(0, start)

    def _scan(self, lo: int, hi: int) -> int | None:
        i = lo
        while i < hi:
            if i & 7 == 0:
                match = _NOT_FULL.search(self.bits, i >> 3, (hi + 7) >> 3)
                if match is None:
                    return None
                i = match.start() << 3
            byte = self.bits[i >> 3]
            while True:
                if i >= hi:
                    return None
                if not byte >> (i & 7) & 1:
                    return i
                i += 1
                if i & 7 == 0:
                    break
        return None


def probe_order(pool: Layout, start: int) -> Iterable[int]:
    """Indexes from `start` to the end, then from 0 up to `start` (round robin)."""
    yield from range(start, pool.size)
    yield from range(0, start)
