"""The warm side of the fast path: a unix-socket daemon that runs forwarded CNI requests with the
same `handler.handle` the exec'd plugin would run in-process.

Threads: a fixed set of workers, each blocked in accept() on the listening socket and serving
one connection at a time (no hand-off per request: fewer wake-ups, which is what costs when the
CPUs are busy). Namespace safety: netlink.netns switches only the calling thread and always back;
after every request the worker checks that it is still in the host namespace and, should it not
be, retires and is replaced, so no later request can inherit a container namespace. No request
can end a worker: whatever a handler raises is answered as error 999 and logged, and a worker
that dies anyway is replaced. Netlink
sockets are per call, nft contexts pooled, and all cross-process exclusion is by flock, so the
daemon, in-process plugins and other daemons interoperate.

Security: the socket is 0600 root:root in its directory and every peer's credentials are checked
with SO_PEERCRED (uid 0 only by default), so a process that somehow reaches the socket still
cannot make the daemon do anything.

Run alone (benchmarks, tests): `python -m cni_bridge.fastpath.server --socket PATH`.
Inside `cni-bridge serve`: `handle = start_in_thread(path)` ... `handle.stop()`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from typing import Callable, Iterable

# What a request may need is imported with this module, not during the first ADD (the handler
# imports the modes and the IPAM store lazily, for the exec'd in-process path).
import cni_bridge.cni.versions  # noqa: F401
import cni_bridge.config  # noqa: F401
import cni_bridge.firewall  # noqa: F401
import cni_bridge.kernel.netlink  # noqa: F401
import cni_bridge.modes  # noqa: F401
import cni_bridge.modes.bridge  # noqa: F401
from cni_bridge.cni.handler import Response, handle
from cni_bridge.cni.protocol import dumps, error_object, error_version
from cni_bridge.errors import INTERNAL, PluginError
from cni_bridge.fastpath import client as wire
from cni_bridge.kernel import libc

log = logging.getLogger("cni_bridge.fastpath")

try:
    import cni_bridge.ipam.plugin  # noqa: F401
except ImportError as exc:  # the file IPAM is optional for serving other IPAMs
    log.warning("fast path: cannot preload the file IPAM: %s", exc)

READ_TIMEOUT = 10.0       # a client has this long to send its request and, later, `G`
WRITE_TIMEOUT = 30.0
MAX_INFLIGHT = 128        # beyond this many concurrent requests the daemon declines (in-process)
WORKERS = 32              # threads accepting and serving; more connections wait in the backlog
_UCRED = struct.Struct("3i")


class BadRequest(Exception):
    """The bytes on the socket are not a well-formed request; nothing is run."""


def default_socket_path() -> str:
    """Where exec'd plugins with this process's environment look (PYBRIDGE_FASTPATH_SOCKET,
    else $PYBRIDGE_RUN_DIR/cni.sock, else /run/cni-bridge/cni.sock)."""
    return wire.socket_path(os.environb) or os.path.join(wire.DEFAULT_RUN_DIR, wire.SOCKET_NAME)


def decode_request(head: bytes, header: bytes) -> tuple[str, dict[str, str]]:
    """Validate the fixed header and the NUL-separated fields; returns (plugin, env)."""
    fields = header.split(b"\0")
    if len(fields) % 2 != 1:
        raise BadRequest("odd number of environment fields")
    plugin = fields[0].decode("ascii", "replace")
    if plugin not in wire.PLUGINS:
        raise BadRequest(f"unknown plugin {plugin[:40]!r}")
    env: dict[str, str] = {}
    for key, value in zip(fields[1::2], fields[2::2]):
        if not key or b"=" in key:
            raise BadRequest(f"invalid variable name {key[:40]!r}")
        name = os.fsdecode(key)
        if name in env:
            raise BadRequest(f"duplicate variable {name}")
        env[name] = os.fsdecode(value)
    return plugin, env


def settings_mismatch(env: dict[str, str]) -> str | None:
    """The caller's SETTINGS or namespaces differ from ours: it must work in-process."""
    identity = os.fsdecode(wire.IDENTITY_KEY)
    theirs_ns = env.pop(identity, None)
    ours_ns = os.fsdecode(wire.namespace_identity())
    if theirs_ns != ours_ns:
        return f"the caller's namespaces ({theirs_ns}) are not the daemon's ({ours_ns})"
    for key, default in wire.SETTINGS.items():
        name, ours = os.fsdecode(key), os.environ.get(os.fsdecode(key), os.fsdecode(default))
        theirs = env.get(name, os.fsdecode(default))
        if theirs != ours:
            return f"{name} is {theirs!r} for the caller but {ours!r} for the daemon"
    return None


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = conn.recv_into(view[got:], n - got)
        if k == 0:
            raise BadRequest("connection closed mid-request")
        got += k
    return bytes(buf)


def _netns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def _default_handle(plugin: str, env: dict[str, str], stdin: bytes,
                    caller_gone: Callable[[], bool] | None = None) -> Response:
    return handle(plugin, env, stdin, caller_gone=caller_gone)


def peer_gone(conn: socket.socket) -> Callable[[], bool]:
    """A probe for the handler: has the client closed its end (the runtime killed the exec'd
    plugin)? One non-blocking peek; the client sends nothing after `G` while it waits."""
    def gone() -> bool:
        timeout = conn.gettimeout()
        conn.setblocking(False)  # with a timeout set, recv would first wait for data
        try:
            return conn.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:  # ECONNRESET and the like: gone as well
            return True
        finally:
            conn.settimeout(timeout)
    return gone


def crash_response(plugin: str, env: dict[str, str], stdin: bytes, exc: BaseException) -> Response:
    """What a request whose handler raised gets: a spec-shaped error 999 (never a lost reply)."""
    error = PluginError(INTERNAL, f"internal error: {exc.__class__.__name__}: {str(exc)[:200]}")
    log_line = (f"{plugin} {env.get('CNI_COMMAND', '?')} internal error in the daemon\n"
                + "".join(traceback.format_exception(exc)))
    return Response(dumps(error_object(error, error_version(stdin))), 1, log_line)


class FastPathServer:
    """Accept loop + one thread per request. `serve_forever()` blocks; `stop()` drains."""

    def __init__(self, socket_path: str | None = None, *, allowed_uids: Iterable[int] = (0,),
                 max_inflight: int = MAX_INFLIGHT, workers: int = WORKERS,
                 handle: Callable[[str, dict[str, str], bytes], object] | None = None) -> None:
        self.path = socket_path or default_socket_path()
        self.allowed_uids = frozenset(allowed_uids)
        self.max_inflight = max_inflight
        self.workers = workers
        self.handle = handle or _default_handle
        self._probes_caller = handle is None  # a custom handle (tests) takes (plugin, env, stdin)
        self.stats = {"connections": 0, "served": 0, "declined": 0, "rejected_peer": 0,
                      "bad_request": 0, "abandoned": 0, "netns_leaks": 0, "handler_errors": 0,
                      "worker_errors": 0}
        self._inflight = 0
        self._cond = threading.Condition()
        self._listener: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._stopping = False
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._host_ns = _netns_inode()

    # --- socket ----------------------------------------------------------------------------
    def bind(self) -> None:
        """Create the listening socket 0600 root:root; refuse to steal a live daemon's socket."""
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o755, exist_ok=True)
        if os.path.exists(self.path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(1.0)
                probe.connect(self.path)
                raise RuntimeError(f"a fast-path daemon is already listening on {self.path}")
            except OSError:
                os.unlink(self.path)  # stale socket of a dead daemon
            finally:
                probe.close()
        # Bind under a temporary name, fix owner and mode, then rename: the final path never
        # exists with looser permissions.
        tmp = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            if os.path.exists(tmp):
                os.unlink(tmp)
            sock.bind(tmp)
            os.chmod(tmp, 0o600)
            if os.geteuid() == 0:
                os.chown(tmp, 0, 0)
            os.rename(tmp, self.path)
            sock.listen(512)
        except BaseException:
            sock.close()
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        self._listener = sock

    def serve_forever(self) -> None:
        """Run `workers` threads that each accept and serve one connection at a time, until
        stop(). Accepting in the workers themselves (no hand-off to a new thread per request)
        saves two thread wake-ups per request, which is what costs under CPU contention."""
        if self._listener is None:
            self.bind()
        log.info("fast path listening on %s (%d workers)", self.path, self.workers)
        for _ in range(self.workers):
            self._start_worker()
        self._stopped.wait()

    def _start_worker(self) -> None:
        threading.Thread(target=self._worker, daemon=True, name="pybridge-fastpath-worker").start()

    def _worker(self) -> None:
        """Serve until stop(); a worker that ends any other way is replaced, so the pool never
        shrinks (a dead pool would make every CNI call wait READY_TIMEOUT, then work in-process)."""
        try:
            self._accept_loop()
        except BaseException:
            self._count("worker_errors")
            log.critical("fast path: a worker thread failed; replacing it", exc_info=True)
        if not self._stopping:
            self._start_worker()

    def _accept_loop(self) -> None:
        listener = self._listener
        while listener is not None and not self._stopping:
            try:
                conn, _ = listener.accept()
            except OSError:
                if self._stopping:
                    return
                time.sleep(0.01)  # EMFILE and friends: do not spin
                continue
            self._count("connections")
            try:
                self._serve_one(conn)
            except Exception:  # a bug in the serving code itself: log it, keep serving
                self._count("worker_errors")
                log.exception("fast path: serving a connection failed")
            if _netns_inode() != self._host_ns:
                # Must never happen (netlink.netns always switches back); if it does, this thread
                # is retired (and replaced) so that no later request runs in a container's namespace.
                self._count("netns_leaks")
                log.critical("fast path: a request left its worker thread in another network namespace; "
                             "replacing the thread")
                return

    def start_in_thread(self) -> "FastPathServer":
        self.bind()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="pybridge-fastpath")
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, remove the socket (if still ours), wait for requests in flight."""
        self._stopping = True
        self._stopped.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
            except OSError:
                pass
            listener.close()
        try:
            st = os.stat(self.path)
            if self._inode == (st.st_dev, st.st_ino):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._inflight and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())

    # --- one request -----------------------------------------------------------------------
    def _count(self, key: str) -> None:
        with self._cond:
            self.stats[key] += 1

    def _serve_one(self, conn: socket.socket) -> None:
        admitted = False
        try:
            with conn:
                conn.settimeout(READ_TIMEOUT)
                pid, uid, _gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
                if uid not in self.allowed_uids:
                    self._count("rejected_peer")
                    log.warning("fast path: refused a request from pid %d uid %d", pid, uid)
                    self._decline(conn, f"uid {uid} may not use the pybridge daemon")
                    return
                try:
                    plugin, env, stdin = self._read_request(conn)
                except BadRequest as exc:
                    self._count("bad_request")
                    log.warning("fast path: bad request from pid %d: %s", pid, exc)
                    self._decline(conn, f"bad request: {exc}")
                    return
                reason = settings_mismatch(env)
                with self._cond:
                    if reason is None and self._stopping:
                        reason = "the daemon is stopping"
                    if reason is None and self._inflight >= self.max_inflight:
                        reason = "busy"
                    if reason is None:
                        self._inflight += 1
                        admitted = True
                if not admitted:
                    self._count("declined")
                    self._decline(conn, str(reason))
                    return
                conn.sendall(wire.READY)
                if conn.recv(1) != wire.GO:  # the client fell back or died: never run it
                    self._count("abandoned")
                    return
                self._run(conn, plugin, env, stdin)
        except OSError as exc:
            log.debug("fast path: connection error: %s", exc)
        finally:
            if admitted:
                with self._cond:
                    self._inflight -= 1
                    self._cond.notify_all()

    def _read_request(self, conn: socket.socket) -> tuple[str, dict[str, str], bytes]:
        try:
            head = _recv_exact(conn, 12)
        except socket.timeout:
            raise BadRequest("timed out reading the request") from None
        if head[:4] != wire.MAGIC:
            raise BadRequest("bad magic (not a pybridge fast-path client?)")
        header_len = int.from_bytes(head[4:8], "big")
        stdin_len = int.from_bytes(head[8:12], "big")
        if header_len > wire.MAX_HEADER or stdin_len > wire.MAX_STDIN:
            raise BadRequest(f"request too large ({header_len} + {stdin_len} bytes)")
        try:
            header = _recv_exact(conn, header_len)
            stdin = _recv_exact(conn, stdin_len)
        except socket.timeout:
            raise BadRequest("timed out reading the request") from None
        plugin, env = decode_request(head, header)
        return plugin, env, stdin

    def _run(self, conn: socket.socket, plugin: str, env: dict[str, str], stdin: bytes) -> None:
        """Run the committed request and answer it, whatever the handler does (the worker checks
        its namespace afterwards)."""
        try:
            if self._probes_caller:
                response = self.handle(plugin, env, stdin, peer_gone(conn))  # type: ignore[call-arg]
            else:
                response = self.handle(plugin, env, stdin)
        except Exception as exc:
            self._count("handler_errors")
            response = crash_response(plugin, env, stdin, exc)
            log.error("%s", response.log)
        out: bytes = response.stdout
        text = response.log.encode("utf-8", "replace")[:wire.MAX_LOG]
        conn.settimeout(WRITE_TIMEOUT)
        conn.sendall(wire.MAGIC + struct.pack(">iII", response.exit_code, len(out), len(text)) + out + text)
        self._count("served")
        log.info("%s", response.log)

    @staticmethod
    def _decline(conn: socket.socket, reason: str) -> None:
        data = reason.encode("utf-8", "replace")[:1000]
        try:
            conn.sendall(wire.DECLINE + len(data).to_bytes(2, "big") + data)
        except OSError:
            pass


def start_in_thread(socket_path: str | None = None, **kwargs) -> FastPathServer:
    """One call for `cni-bridge serve`: bind, serve in a daemon thread (what a request needs
    was imported with this module). The returned server has `.stop()` and `.stats`."""
    return FastPathServer(socket_path, **kwargs).start_in_thread()


class FastPathProcess:
    """The daemon as a child process (what `cni-bridge serve` runs next to gunicorn, whose
    master forks workers and therefore should not carry extra threads)."""

    def __init__(self, proc: "subprocess.Popen[str]", path: str) -> None:
        self.proc = proc
        self.path = path

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # drains requests in flight, removes the socket
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def spawn(socket_path: str | None = None, log_level: str = "WARNING") -> FastPathProcess:
    """Start `python -m cni_bridge.fastpath.server` and wait until it listens. The child gets
    SIGTERM if this process dies (PR_SET_PDEATHSIG), so it never outlives the driver."""
    path = socket_path or default_socket_path()
    proc = subprocess.Popen([sys.executable, "-m", "cni_bridge.fastpath.server", "--socket", path,
                             "--log-level", log_level], stdout=subprocess.PIPE, text=True,
                            preexec_fn=libc.die_with_parent)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.wait(10)
        raise RuntimeError(f"the CNI fast path did not start on {path} (exit {proc.returncode})")
    return FastPathProcess(proc, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cni_bridge.fastpath.server",
                                     description="Run only the pybridge CNI fast-path daemon.")
    parser.add_argument("--socket", default=default_socket_path(),
                        help="unix socket path (default: %(default)s)")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stderr)
    libc.limit_malloc_arenas()
    server = FastPathServer(args.socket)
    server.bind()

    def _stop(signum: int, _frame: object) -> None:
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"ready {server.path}", flush=True)
    server.serve_forever()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
