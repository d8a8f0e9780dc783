"""A small etcd v3 client over etcd's JSON gRPC gateway (`POST /v3/kv/range|txn`), standard
library only.

Why not a client library (docs/ipam.md has the comparison): `etcd3` (python-etcd3) has had no
release since 2020 and pins old grpcio/protobuf; `aetcd` is asyncio-only and loads grpcio (about
100 ms per exec of `pybridge-ipam`); `etcd3gw` is maintained but talks to one endpoint (no
fail-over across members) and brings `requests`, `futurist` and `pbr`. The store needs four
calls (range, txn with compares, put and delete inside a txn), which the gateway of every etcd
since 3.4 serves as JSON. HTTP/1.1 is spoken over a plain socket here (`_Connection`): `http.client`
imports the `email` package and doubled the import cost of the exec'd `pybridge-ipam` on etcd.

Semantics the store relies on:
- Every request is linearizable (the gateway's default), so it needs a quorum: a cluster without
  one answers nothing, and the call gives up at the deadline with error 11 ("try again").
- Endpoints are tried in order, starting with the one that answered last; a refused or broken
  connection moves to the next one at once, all within one overall `timeout`.
- A txn whose answer was lost may still have been applied. The store's transactions are written
  so that running one twice is harmless (compare-and-swap on the keys they create).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from cni_bridge.errors import TRY_AGAIN, PluginError, config_error, shown

DEFAULT_TIMEOUT = 5.0  # seconds for one store call, all endpoints and retries included
DEFAULT_PREFIX = "/pybridge"


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: str) -> str:
    """etcd's range_end for "every key starting with `prefix`" (last byte + 1)."""
    raw = prefix.encode()
    return b64(raw[:-1] + bytes([raw[-1] + 1]))


class StoreUnreachable(PluginError):
    """Error 11: no member answered in time. `store_unreachable` tells the ADD's undo (which does
    not import this module) not to wait for the same cluster once more."""
    store_unreachable = True


class ProtocolError(Exception):
    """An answer that is not HTTP/1.1 with a JSON body: treated like a broken connection."""


class _Connection:
    """One keep-alive HTTP/1.1 connection: POST a JSON body, read the status and the body
    (Content-Length or chunked, as Go's net/http sends them). Reconnects when the server closed
    the idle connection."""

    def __init__(self, host: str, port: int, context: Any = None) -> None:
        self.host, self.port, self.context = host, port, context
        self.timeout = DEFAULT_TIMEOUT
        self.sock: socket.socket | None = None
        self.buffer = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buffer = None, b""

    def post(self, path: str, payload: bytes) -> tuple[int, bytes]:
        request = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode() + payload
        reused = self.sock is not None
        try:
            return self._exchange(request)
        except (OSError, ProtocolError):
            self.close()
            if not reused:
                raise
        return self._exchange(request)  # the kept connection had been closed by the server: once more

    def _exchange(self, request: bytes) -> tuple[int, bytes]:
        if self.sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_hostname=self.host)
            self.sock = sock
        self.sock.settimeout(self.timeout)
        self.sock.sendall(request)
        head = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        parts = head[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP answer: {head[0][:100]!r}")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                try:
                    size = int(self._until(b"\r\n").split(b";")[0], 16)
                except ValueError:
                    raise ProtocolError("bad chunk size") from None
                body += self._exactly(size + 2)[:size]  # the data and its CRLF (no trailers follow 0)
                if size == 0:
                    break
        else:
            body = self._exactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return int(parts[1]), body

    def stream_lines(self, path: str, payload: bytes):
        """POST and yield the body's lines as they arrive (a streaming gateway call such as
        /v3/watch: one JSON message per line, in chunks), and None whenever nothing arrived
        for the socket's timeout. Ends with the body. Fresh connection only: it cannot be
        reused afterwards."""
        request = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode() + payload
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_hostname=self.host)
        self.sock = sock
        sock.sendall(request)
        head = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        if not head[0].startswith("HTTP/1.") or " 200 " not in head[0] + " ":
            raise ProtocolError(f"watch refused: {head[0][:100]!r}")
        chunked = any(line.lower().replace(" ", "") == "transfer-encoding:chunked" for line in head[1:])
        pending, size = b"", None
        while True:
            try:  # a read that times out consumed nothing: it is resumed after the None
                if chunked:
                    if size is None:
                        try:
                            size = int(self._until(b"\r\n").split(b";")[0], 16)
                        except ValueError:
                            raise ProtocolError("bad chunk size") from None
                    if size == 0:
                        return
                    pending += self._exactly(size + 2)[:size]
                    size = None
                else:
                    self._fill()
                    pending, self.buffer = pending + self.buffer, b""
            except socket.timeout:
                yield None  # idle for the socket's timeout: the caller decides whether to go on
                continue
            *lines, pending = pending.split(b"\n")
            yield from (line for line in lines if line.strip())

    def _fill(self) -> None:
        assert self.sock is not None
        data = self.sock.recv(65536)
        if not data:
            raise ProtocolError("connection closed by the server")
        self.buffer += data

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        found, _, self.buffer = self.buffer.partition(marker)
        return found

    def _exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        found, self.buffer = self.buffer[:count], self.buffer[count:]
        return found


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0  # the etcd lease the key is attached to (0: none)


def _kvs(response: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(unb64(kv.get("key")).decode(), unb64(kv.get("value")),
                     int(kv.get("create_revision", 0)), int(kv.get("mod_revision", 0)), int(kv.get("lease", 0) or 0))
            for kv in response.get("kvs", [])]


# --- operations and compares of a txn, as the gateway's JSON wants them --------------------------
def op_get(key: str, *, prefix: bool = False, keys_only: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key)}
    if prefix:
        body["range_end"] = prefix_end(key)
    if keys_only:
        body["keys_only"] = True
    return {"request_range": body}


def op_put(key: str, value: bytes | str, *, lease: int = 0) -> dict[str, Any]:
    """A put; with `lease`, the key is deleted when that lease expires."""
    body = {"key": b64(key), "value": b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def op_delete(key: str, *, prefix: bool = False) -> dict[str, Any]:
    body = {"key": b64(key)}
    if prefix:
        body["range_end"] = prefix_end(key)
    return {"request_delete_range": body}


def absent(key: str) -> dict[str, Any]:
    """Compare: the key does not exist (its create revision is 0)."""
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def unchanged(key: str, mod_revision: int) -> dict[str, Any]:
    """Compare: the key was not written since it was read (0: it still does not exist)."""
    if mod_revision == 0:
        return absent(key)
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}


@dataclass
class TxnResult:
    succeeded: bool
    responses: list[dict[str, Any]]

    def kvs(self, index: int) -> list[KeyValue]:
        """The key-values of the index-th operation (a range) of the branch that ran."""
        return _kvs(self.responses[index].get("response_range", {}))


class EtcdClient:
    """Thread-safe (one HTTP connection per thread and endpoint); the warm daemon keeps one."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT,
                 cacert: str | None = None, cert: str | None = None, key: str | None = None) -> None:
        if not endpoints:
            raise config_error("etcd store: 'endpoints' must list at least one URL")
        self.endpoints = [_parse_endpoint(e) for e in endpoints]
        self.timeout = timeout
        self._tls = (cacert, cert, key)
        self._ssl = None
        self._local = threading.local()
        self._pid = os.getpid()
        self._preferred = 0

    # --- the calls ----------------------------------------------------------------------------
    def get(self, key: str, *, prefix: bool = False, keys_only: bool = False) -> list[KeyValue]:
        return _kvs(self._call("/v3/kv/range", op_get(key, prefix=prefix, keys_only=keys_only)["request_range"]))

    def txn(self, compare: Iterable[dict[str, Any]], success: Iterable[dict[str, Any]],
            failure: Iterable[dict[str, Any]] = ()) -> TxnResult:
        answer = self._call("/v3/kv/txn", {"compare": list(compare), "success": list(success),
                                           "failure": list(failure)})
        return TxnResult(bool(answer.get("succeeded", False)), answer.get("responses", []))

    def get_with_revision(self, key: str, *, prefix: bool = False) -> tuple[list[KeyValue], int]:
        """`get` and the store's revision the answer reflects (where a watch resumes)."""
        answer = self._call("/v3/kv/range", op_get(key, prefix=prefix)["request_range"])
        return _kvs(answer), int(answer.get("header", {}).get("revision", 0))

    def wait_for_change(self, key: str, after_revision: int, timeout: float, *, prefix: bool = True,
                        tick: Callable[[], bool] | None = None, every: float = 1.0) -> bool | None:
        """Block until a key under `key` changes after `after_revision` (a watch from the next
        revision: nothing is missed between a read and this call), at most `timeout` seconds;
        `tick` is asked every `every` seconds on the same watch, and True from it ends the wait.
        True: changed (or the history was compacted: read again), or `tick`; False: timed out;
        None: no member could be watched (the caller waits and reads again, which reports the
        error)."""
        body: dict[str, Any] = {"key": b64(key), "start_revision": str(after_revision + 1)}
        if prefix:
            body["range_end"] = prefix_end(key)

        def changed(result: dict[str, Any]) -> bool:
            return bool(result.get("events") or result.get("canceled") or int(result.get("compact_revision", 0) or 0))
        try:
            return self._stream_until("/v3/watch", {"create_request": body}, timeout, changed, tick, every) is not None
        except socket.timeout:
            return False
        except StoreUnreachable:
            return None

    def grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; its id."""
        return int(self._call("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def keep_alive(self, lease: int) -> int:
        """Renew `lease`; its TTL afterwards, 0 when it has expired (grant another)."""
        try:
            result = self._stream_until("/v3/lease/keepalive", {"ID": str(lease)}, self.timeout, lambda r: True)
        except socket.timeout:
            raise StoreUnreachable(TRY_AGAIN, f"etcd at {self.where()} did not renew lease {lease:x} "
                                   f"within {self.timeout:g}s; try again") from None
        return int((result or {}).get("TTL", 0) or 0)

    def _stream_until(self, path: str, body: dict[str, Any], timeout: float, done: Callable[[dict], bool],
                      tick: Callable[[], bool] | None = None, every: float = 1.0) -> dict[str, Any] | None:
        """A streaming gateway call on a connection of its own: the first message whose
        `result` satisfies `done` ({} when `tick`, asked every `every` idle seconds, said
        True). socket.timeout when none came in time; StoreUnreachable when no member could
        be reached; None when the stream ended without one."""
        payload = json.dumps(body).encode()
        deadline = time.monotonic() + timeout

        def idle() -> float:
            left = deadline - time.monotonic()
            return max(0.1, min(left, every) if tick is not None else left)
        for step in range(len(self.endpoints)):
            index = (self._preferred + step) % len(self.endpoints)
            scheme, host, port = self.endpoints[index]
            conn = _Connection(host, port, self._context() if scheme == "https" else None)
            try:
                conn.timeout = idle()
                for line in conn.stream_lines(path, payload):
                    if line is None:  # idle
                        if time.monotonic() >= deadline:
                            raise socket.timeout("no answer in time")
                        if tick is not None and tick():
                            return {}
                        conn.sock.settimeout(idle())
                        continue
                    message = json.loads(line)
                    if "error" in message:
                        raise ProtocolError(str(message["error"])[:200])
                    result = message.get("result", {})
                    if done(result):
                        return result
                    conn.sock.settimeout(idle())
                return None
            except socket.timeout:
                raise
            except (OSError, ProtocolError, ValueError, AttributeError):
                continue
            finally:
                conn.close()
        raise StoreUnreachable(TRY_AGAIN, f"etcd at {self.where()}: no member answered {path}; try again")

    def where(self) -> str:
        return ",".join(f"{scheme}://{host}:{port}" for scheme, host, port in self.endpoints)

    # --- transport ----------------------------------------------------------------------------
    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        payload = json.dumps(body).encode()
        problems: list[str] = []
        count = len(self.endpoints)
        while True:
            for step in range(count):
                index = (self._preferred + step) % count
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:  # a member that hangs (cut off from the others) must leave time for the rest
                    answer = self._post(index, path, payload, min(left, max(1.0, self.timeout / count)))
                except (OSError, ProtocolError) as exc:
                    self._drop(index)
                    problems.append(f"{self._name(index)}: {exc.__class__.__name__}: {exc}")
                    continue
                if "error" in answer or ("code" in answer and "message" in answer):
                    # the member answered but could not serve (no leader, timed out, ...)
                    problems.append(f"{self._name(index)}: {answer.get('message') or answer.get('error')}")
                    continue
                self._preferred = index
                return answer
            if time.monotonic() >= deadline:
                break
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))  # every member refused: wait
        raise StoreUnreachable(TRY_AGAIN, f"etcd at {self.where()} did not answer within {self.timeout:g}s "
                               "(unreachable or without quorum); try again",
                               "; ".join(dict.fromkeys(problems[-len(self.endpoints):])) or "deadline passed")

    def _name(self, index: int) -> str:
        scheme, host, port = self.endpoints[index]
        return f"{scheme}://{host}:{port}"

    def _connection(self, index: int, timeout: float) -> "_Connection":
        if self._pid != os.getpid():  # a forked child (gunicorn worker) must not share our sockets
            self._local, self._pid = threading.local(), os.getpid()
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(index)
        if conn is None:
            scheme, host, port = self.endpoints[index]
            conn = conns[index] = _Connection(host, port, self._context() if scheme == "https" else None)
        conn.timeout = timeout
        return conn

    def _drop(self, index: int) -> None:
        conn = getattr(self._local, "conns", {}).pop(index, None)
        if conn is not None:
            conn.close()

    def _post(self, index: int, path: str, payload: bytes, timeout: float) -> dict[str, Any]:
        status, raw = self._connection(index, timeout).post(path, payload)
        try:
            answer = json.loads(raw or b"{}")
        except ValueError:
            raise ProtocolError(f"HTTP {status}: not JSON: {raw[:200]!r}") from None
        if not isinstance(answer, dict):
            raise ProtocolError(f"HTTP {status}: unexpected answer {raw[:200]!r}")
        if status != 200 and "error" not in answer and "message" not in answer:
            answer["error"] = f"HTTP {status}"
        return answer

    def _context(self):
        if self._ssl is None:
            import ssl  # lazy: only https endpoints pay for it
            cacert, cert, key = self._tls
            context = ssl.create_default_context(cafile=cacert)
            if cert:
                context.load_cert_chain(cert, key)
            self._ssl = context
        return self._ssl


def _parse_endpoint(value: Any) -> tuple[str, str, int]:
    if not isinstance(value, str) or "://" not in value:
        raise config_error(f"etcd store: endpoint {shown(value)} must be a URL like http://10.0.0.1:2379")
    url = urllib.parse.urlsplit(value)
    if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/"):
        raise config_error(f"etcd store: endpoint {shown(value)} must be http(s)://HOST:PORT")
    try:
        port = url.port or 2379
    except ValueError:
        raise config_error(f"etcd store: endpoint {shown(value)} has an invalid port") from None
    return url.scheme, url.hostname, port
