"""Loopback ports of the root namespace, reachable on the same loopback port inside other
network namespaces: how a simulated host (tests/support/topology.py) reaches a daemon the test
runs on the root loopback (the etcd cluster of tests/support/etcd.py), with no link or route
added anywhere.

    with forward_loopback([host.ns.name for host in hosts], [2379, 2381]):
        ...  # inside each namespace, 127.0.0.1:2379 is the root namespace's 127.0.0.1:2379

Each listening socket is made by a short-lived thread that enters the namespace (setns(2)
acts on the calling thread only) and comes back; the socket stays in that namespace, while
the connections to the daemon are opened from the test process's own (root) namespace.
A daemon that is down makes the forwarded connection close at once, as a refused one would.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Iterable, Iterator

from cni_bridge.kernel.libc import setns as _setns


def _listen_in(ns_name: str, port: int) -> socket.socket:
    out: dict[str, object] = {}

    def work() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{ns_name}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))
                sock.listen(64)
                out["sock"] = sock
            finally:
                _setns(own)
        except OSError as exc:
            out["error"] = exc
        finally:
            os.close(own)
            os.close(target)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["sock"]  # type: ignore[return-value]


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


class _Forward:
    def __init__(self, listener: socket.socket, port: int) -> None:
        self.listener, self.port = listener, port
        self.open: set[socket.socket] = set()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                inner, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                outer = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                outer.settimeout(None)
            except OSError:
                inner.close()
                continue
            self.open.update((inner, outer))
            for a, b in ((inner, outer), (outer, inner)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(timeout=5)
        for s in list(self.open):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@contextlib.contextmanager
def forward_loopback(namespaces: Iterable[str], ports: Iterable[int]) -> Iterator[None]:
    """Forward each of `ports` into each of `namespaces` until the block ends (everything closed
    then, on failure too)."""
    forwards: list[_Forward] = []
    try:
        for ns in namespaces:
            for port in ports:
                forwards.append(_Forward(_listen_in(ns, port), port))
        yield
    finally:
        for f in forwards:
            f.close()
