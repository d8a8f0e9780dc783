"""One raw netlink socket with synchronous requests, attribute encoding and the datagram parser:
what the rtnetlink requests of the hot path (rtnl.py) and the nftables set-element batches
(nfnetlink.py) share.

Errors are raised as pyroute2's NetlinkError (same `.code`), so callers need not care whether a
request went through this socket or through pyroute2.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Iterator

from pyroute2.netlink.exceptions import NetlinkError

__all__ = ["NetlinkError", "NetlinkSocket", "attr", "attrs", "each_attr", "netlink_error_text"]

NLMSG_ERROR, NLMSG_DONE = 2, 3
F_REQUEST, F_ACK, F_EXCL, F_CREATE, F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300

_HDR = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")


def attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return _NLA.pack(length, kind) + data + b"\0" * (-length % 4)


def attrs(buf: bytes, offset: int) -> dict[int, bytes]:
    """The attributes of `buf` from `offset`, by type (the last one of a repeated type). The
    loop is inlined (not `dict(each_attr(...))`): link and address dumps parse thousands."""
    out: dict[int, bytes] = {}
    end = len(buf)
    while offset + 4 <= end:
        length, kind = _NLA.unpack_from(buf, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = buf[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


def each_attr(buf: bytes, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each attribute, in order: lists repeat one type (NFTA_LIST_ELEM)."""
    end = len(buf)
    while offset + 4 <= end:
        length, kind = _NLA.unpack_from(buf, offset)
        if length < 4:
            break
        yield kind & 0x3FFF, buf[offset + 4:offset + length]
        offset += (length + 3) & ~3


def _errno(payload: bytes) -> int:
    """The errno an NLMSG_ERROR / NLMSG_DONE carries (0: ack, end of dump)."""
    return -struct.unpack_from("=i", payload, 0)[0] if len(payload) >= 4 else 0


def netlink_error_text(exc: NetlinkError) -> str:
    return f"{os.strerror(exc.code)} (errno {exc.code})"


class NetlinkSocket:
    """One raw netlink socket (NETLINK_ROUTE, NETLINK_NETFILTER, ...); synchronous requests."""

    def __init__(self, protocol: int) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def send(self, msg_type: int, flags: int, body: bytes) -> int:
        """Send one request; returns its sequence number for replies()."""
        return self.send_all([(msg_type, flags, body)])[0]

    def send_all(self, messages: list[tuple[int, int, bytes]]) -> list[int]:
        """Send several requests in one datagram (an nfnetlink batch must arrive that way);
        returns their sequence numbers."""
        buf = b""
        seqs = []
        for msg_type, flags, body in messages:
            self.seq += 1
            seqs.append(self.seq)
            buf += _HDR.pack(_HDR.size + len(body), msg_type, flags | F_REQUEST, self.seq, 0) + body
        self.sock.send(buf)
        return seqs

    def _received(self) -> Iterator[tuple[int, int, bytes]]:
        """(type, sequence number, payload) of each message in the next datagram."""
        data = self.sock.recv(1 << 20)
        offset = 0
        while offset + _HDR.size <= len(data):
            length, kind, _flags, rseq, _pid = _HDR.unpack_from(data, offset)
            if length < _HDR.size:
                raise NetlinkError(71, "malformed netlink reply")  # EPROTO
            yield kind, rseq, data[offset + _HDR.size:offset + length]
            offset += (length + 3) & ~3

    def replies(self, seq: int) -> Iterator[bytes]:
        """Payloads of the replies to request `seq`, up to its ack or DONE. Messages of other
        requests (what an earlier caller left unread) are skipped. A caller that stops early
        must close the socket (the rest of a dump would still be queued on it)."""
        while True:
            for kind, rseq, payload in self._received():
                if rseq != seq:
                    continue
                if kind in (NLMSG_ERROR, NLMSG_DONE):  # both carry an errno (0: ack / end)
                    code = _errno(payload)
                    if code:
                        raise NetlinkError(code)
                    return
                yield payload

    def acks(self, seqs: set[int], abort_seq: int | None = None) -> None:
        """Wait for the ack (or error) of every request in `seqs`; raise the first error. A
        response to `abort_seq` (e.g. a batch header the kernel refused) ends the wait too."""
        pending, first_error = set(seqs), 0
        while pending:
            for kind, rseq, payload in self._received():
                if kind != NLMSG_ERROR or (rseq not in pending and rseq != abort_seq):
                    continue
                first_error = first_error or _errno(payload)
                if rseq == abort_seq:
                    pending.clear()
                pending.discard(rseq)
        if first_error:
            raise NetlinkError(first_error)

    def request(self, msg_type: int, flags: int, body: bytes) -> list[bytes]:
        """Send one request; return the payloads of the replies (after the ack or DONE)."""
        return list(self.replies(self.send(msg_type, flags, body)))
