"""nftables over NETLINK_NETFILTER, without libnftables (ADD and DEL): pooled sockets
(`NfConversation`: batches, dumps, keyed reads, table checks and removal) and set elements.

libnftables fetches every element of the table for any listing (~20-30 ms with 1,000
containers). DEL needs two facts only: who owns its known addresses, and whether the sets are
empty afterwards. The kernel answers both without walking the set: a keyed GETSETELEM, and
an element dump, read to its end (an empty set sends one empty nest).
Adding and deleting elements is a three-message nfnetlink batch: ~0.05 ms against ~0.4-0.6 ms
for the same `add element` / `delete element` through libnftables (parser, cache, context).
"""

from __future__ import annotations

import ipaddress
import os
import struct
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

from cni_bridge.kernel.nlsock import (
    F_ACK,
    F_CREATE,
    F_DUMP,
    F_EXCL,
    NetlinkError,
    NetlinkSocket,
    attr,
    attrs,
    each_attr,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NETLINK_NETFILTER, NFNL_SUBSYS_NFTABLES = 12, 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_GETTABLE, NFT_MSG_DELTABLE = 1, 2
NFT_MSG_GETSET, NFT_MSG_NEWSETELEM, NFT_MSG_GETSETELEM, NFT_MSG_DELSETELEM = 10, 12, 13, 14
NFTA_TABLE_NAME = 1
NFPROTO_INET, NLA_F_NESTED = 1, 0x8000
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM, NFTA_SET_ELEM_KEY, NFTA_DATA_VALUE, NFTA_SET_ELEM_USERDATA = 1, 1, 1, 6
NFTA_SET_ELEM_DATA = 2
NFTNL_UDATA_COMMENT = 0  # NFTNL_UDATA_SET_ELEM_COMMENT and NFTNL_UDATA_RULE_COMMENT
ENOENT = 2


# Idle NETLINK_NETFILTER sockets by network namespace (inode), reused, never closed: closing one
# makes nf_tables flush its pending transaction clean-up, which waits for an RCU grace period
# (~10-25 ms here) whenever a commit happened just before, i.e. on every ADD and DEL.
_idle_sockets: dict[int, list[NetlinkSocket]] = {}
_idle_lock = threading.Lock()


def _forget_pool_after_fork() -> None:
    """A forked child (gunicorn workers of a preloaded app) must not share pooled netlink
    sockets with its parent: replies would go to whichever process reads first."""
    global _idle_sockets, _idle_lock
    _idle_sockets, _idle_lock = {}, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _netns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


class NfConversation:
    """A NETLINK_NETFILTER socket from the per-namespace idle pool, for one sequence of
    requests. Methods raise NetlinkError (or OSError: e.g. a timeout). close() returns the
    socket to the idle pool, unless a failure may have left it mid-conversation."""

    def __init__(self) -> None:
        self._netns = _netns_inode()
        with _idle_lock:
            idle = _idle_sockets.get(self._netns)
            nl = idle.pop() if idle else None
        if nl is None:
            nl = NetlinkSocket(NETLINK_NETFILTER)
            nl.sock.settimeout(5.0)  # the kernel always answers; this only bounds a surprise
        self.nl: NetlinkSocket | None = nl
        self._clean = False

    def __enter__(self) -> "NfConversation":
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._clean = exc_type is None or exc_type is NetlinkError  # an error reply is a whole answer
        self.close()

    def close(self) -> None:
        nl, self.nl = self.nl, None
        if nl is None:
            return
        if self._clean:
            with _idle_lock:
                _idle_sockets.setdefault(self._netns, []).append(nl)
        else:
            nl.close()

    def batch(self, messages: Sequence[tuple[int, int, bytes]]) -> None:
        """One atomic nfnetlink transaction of (nftables message type, flags, body): all or
        nothing; raises the first error. Avoid sending one that can fail: the kernel aborts it
        after an RCU grace period (~20 ms here)."""
        header = struct.pack("=BB", 0, 0) + struct.pack(">H", NFNL_SUBSYS_NFTABLES)  # res_id: big-endian
        seqs = self.nl.send_all([(NFNL_MSG_BATCH_BEGIN, 0, header),
                                 *(((NFNL_SUBSYS_NFTABLES << 8) | kind, flags, body) for kind, flags, body in messages),
                                 (NFNL_MSG_BATCH_END, 0, header)])
        self.nl.acks(set(seqs[1:-1]), abort_seq=seqs[0])

    def dump(self, kind: int, body: bytes) -> Iterator[bytes]:
        """The payloads (after the 4-byte nfgenmsg) of a dump request, read to its end."""
        for payload in self.nl.replies(self.nl.send((NFNL_SUBSYS_NFTABLES << 8) | kind, F_DUMP, body)):
            yield payload[4:]

    def exists(self, kind: int, body: bytes) -> bool:
        """A keyed read (GETTABLE, GETSET, GETCHAIN ...): False when the kernel says ENOENT.
        A read costs nothing when the object is missing, unlike a write batch that fails."""
        try:
            self.nl.request((NFNL_SUBSYS_NFTABLES << 8) | kind, F_ACK, body)
            return True
        except NetlinkError as exc:
            if exc.code == ENOENT:
                return False
            raise

    def table_exists(self, family: int, table: str) -> bool:
        return self.exists(NFT_MSG_GETTABLE, nfgen(family) + attr(NFTA_TABLE_NAME, table.encode() + b"\0"))

    def delete_table(self, family: int, table: str) -> None:
        """One DELTABLE batch (the whole table with its sets and chains). ENOENT when it is gone:
        check first where that can happen."""
        self.batch([(NFT_MSG_DELTABLE, F_ACK, nfgen(family) + attr(NFTA_TABLE_NAME, table.encode() + b"\0"))])


def nfgen(family: int) -> bytes:
    """The nfgenmsg every nftables message starts with (version 0, resource id 0)."""
    return struct.pack("=BBH", family, 0, 0)


class SetElements(NfConversation):
    """Keyed reads and batched writes of one table's set elements over NETLINK_NETFILTER."""

    def __init__(self, table: str) -> None:
        self.table = table
        super().__init__()

    def __enter__(self) -> "SetElements":
        return self

    def _body(self, set_name: str, extra: bytes = b"") -> bytes:
        """nfgenmsg + table + set (+ `extra` attributes). GETSET names them with the same
        attribute numbers (NFTA_SET_TABLE 1, NFTA_SET_NAME 2) as the element messages."""
        return nfgen(NFPROTO_INET) \
            + attr(NFTA_SET_ELEM_LIST_TABLE, self.table.encode() + b"\0") \
            + attr(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0") + extra

    def _replies(self, flags: int, set_name: str, extra: bytes = b"") -> Iterator[dict[int, bytes]]:
        """Send GETSETELEM; yield each reply's attributes (after the 4-byte nfgenmsg)."""
        seq = self.nl.send((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM, flags, self._body(set_name, extra))
        for payload in self.nl.replies(seq):
            yield attrs(payload, 4)

    def has_set(self, set_name: str) -> bool:
        """Whether the table has this set: a keyed GETSET (see `exists`)."""
        return self.exists(NFT_MSG_GETSET, self._body(set_name))

    def write(self, add: bool, elements: dict[str, Sequence[tuple[IPAddress, str]]]) -> None:
        """One atomic batch: add (`add element`: an existing element is no error) or delete the
        given (address, owner comment) elements, per set name. All or nothing: ENOENT when a set
        or the table is missing (an add) or an element is (a delete)."""
        msg_type = NFT_MSG_NEWSETELEM if add else NFT_MSG_DELSETELEM
        flags = F_ACK | (F_CREATE if add else 0)
        messages = []
        for set_name, items in elements.items():
            listed = b"".join(attr(NFTA_LIST_ELEM | NLA_F_NESTED, _element(addr, owner if add else ""))
                              for addr, owner in items)
            messages.append((msg_type, flags, self._body(
                set_name, attr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, listed))))
        self.batch(messages)

    def write_batch(self, ops: Sequence["ElementOp"]) -> None:
        """One atomic batch of element writes in the given order (a delete and a create of the
        same key replace its comment). `create` ops fail with EEXIST when the key exists;
        ENOENT when a set or the table is missing (or a deleted element is)."""
        messages = []
        for op in ops:
            element = _element_key(op.key, op.comment if op.add else "")
            if op.add and op.data is not None:
                element += attr(NFTA_SET_ELEM_DATA | NLA_F_NESTED, attr(NFTA_DATA_VALUE, op.data))
            messages.append((NFT_MSG_NEWSETELEM if op.add else NFT_MSG_DELSETELEM, F_ACK | (F_CREATE | F_EXCL if op.add else 0),
                             self._body(op.set_name, attr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED,
                                                          attr(NFTA_LIST_ELEM | NLA_F_NESTED, element)))))
        self.batch(messages)

    def owner(self, set_name: str, addr: IPAddress) -> str | None:
        """The comment (owner) of `addr`'s element; None when it is not in the set."""
        return self.key_owner(set_name, addr.packed)

    def key_owner(self, set_name: str, key: bytes) -> str | None:
        """The same for a key given as the kernel stores it (e.g. `concat_key(...)`)."""
        elements = attr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED,
                        attr(NFTA_LIST_ELEM | NLA_F_NESTED, _element_key(key, "")))
        comment = None
        try:
            for reply in self._replies(F_ACK, set_name, elements):  # read up to the ack
                listed = attrs(reply.get(NFTA_SET_ELEM_LIST_ELEMENTS, b""), 0)
                elem = attrs(listed.get(NFTA_LIST_ELEM, b""), 0)
                comment = udata_comment(elem.get(NFTA_SET_ELEM_USERDATA, b"")) or ""
        except NetlinkError as exc:
            if exc.code == ENOENT:  # no such element
                return None
            raise
        return comment

    def any(self, set_name: str) -> bool:
        """Whether the set has an element (an empty set dumps an empty nest). The dump is read
        to its end so that the socket can be reused (the kernel fills ~30 elements per message
        only as they are read). Raises ENOENT when the set or table is gone."""
        found = False
        for reply in self._replies(F_DUMP, set_name):
            found = found or bool(reply.get(NFTA_SET_ELEM_LIST_ELEMENTS))
        return found

    def keys(self, set_name: str) -> list[bytes]:
        """Every element's key as the kernel stores it (a dump: for small sets). Raises ENOENT
        when the set or table is gone."""
        out = []
        for reply in self._replies(F_DUMP, set_name):
            for kind, elem in each_attr(reply.get(NFTA_SET_ELEM_LIST_ELEMENTS, b"")):
                if kind == NFTA_LIST_ELEM:
                    key = attrs(attrs(elem, 0).get(NFTA_SET_ELEM_KEY, b""), 0).get(NFTA_DATA_VALUE)
                    if key is not None:
                        out.append(key)
        return out


@dataclass(frozen=True)
class ElementOp:
    """One element write of `SetElements.write_batch`: create (exclusive) or delete `key` (as
    the kernel stores it) in `set_name`; a map element's `data`, an element's `comment`."""
    add: bool
    set_name: str
    key: bytes
    data: bytes | None = None
    comment: str = ""


def concat_key(*fields: bytes) -> bytes:
    """A concatenated key (`inet_proto . inet_service`) as the kernel stores it: each field
    in its own 4-byte-aligned register."""
    return b"".join(f + b"\0" * (-len(f) % 4) for f in fields)


def ifname_key(name: str) -> bytes:
    """An `ifname` key as the kernel stores it: the name NUL-padded to IFNAMSIZ (16)."""
    return name.encode()[:15].ljust(16, b"\0")


def _element(addr: IPAddress, owner: str) -> bytes:
    return _element_key(addr.packed, owner)


def _element_key(key: bytes, owner: str) -> bytes:
    """The attributes of one set element: its key, and the owner as an nft comment."""
    out = attr(NFTA_SET_ELEM_KEY | NLA_F_NESTED, attr(NFTA_DATA_VALUE, key))
    if owner:  # libnftnl user data: (type, length, NUL-terminated value), as `nft` writes it
        out += attr(NFTA_SET_ELEM_USERDATA, comment_udata(owner.encode()[:127]))
    return out


def comment_udata(comment: bytes) -> bytes:
    """libnftnl user data holding a comment, as `nft` writes it for a set element or a rule:
    (type 0, length, NUL-terminated value)."""
    value = comment + b"\0"
    return bytes([NFTNL_UDATA_COMMENT, len(value)]) + value


def udata_comment(udata: bytes) -> str | None:
    """The comment in libnftnl user data ((u8 type, u8 length, value) records); None without one."""
    offset = 0
    while offset + 2 <= len(udata):
        kind, length = udata[offset], udata[offset + 1]
        if kind == NFTNL_UDATA_COMMENT:
            return udata[offset + 2:offset + 2 + length].split(b"\0", 1)[0].decode(errors="replace")
        offset += 2 + length
    return None
