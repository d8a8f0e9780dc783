"""The exec'd side of the fast path: hand one CNI request to the warm daemon, or say "do it here".

Imports nothing beyond `sys` and `posix` (loaded at interpreter start) and the C module
`_socket`. Every import is paid on every exec: `import socket` costs ~11 ms (enum, selectors),
`import json` ~6 ms, even `import os` ~1 ms (it pulls in _collections_abc and posixpath), and
`from __future__ import annotations` 0.2 ms. Hence a small binary wire format instead of JSON,
and `posix` instead of `os`. The launchers call `main()` here directly (not through the
`cni_bridge.cni` package): measured per VERSION call through a warm daemon, 16.2 ms -> 13.5 ms
in one run (a bare interpreter start took ~11 ms in it). The scripts pip installs
(`scripts/pybridge`) start the interpreter the same way and call `main()` too;
bench/entry_points.py compares the two.

Wire format (version 1, all integers big-endian), one request per connection:

    client -> daemon   b"PBF1" u32 header_len u32 stdin_len  header  stdin
                       header = NUL-joined byte strings: plugin, key1, value1, key2, value2, ...
                       (the caller's whole environment: the handler reads only the CNI_*
                       parameters, a delegated IPAM plugin is exec'd with all of it, as the
                       spec requires; and PYBRIDGE_CALLER_NS: the caller's network and mount
                       namespace ids. An environment beyond MAX_HEADER is served in-process.)
    daemon -> client   b"R"                              ready: request read and looks well-formed
                  or   b"D" u16 len reason                declined: nothing was or will be done
    client -> daemon   b"G"                              go: from here on the request is committed
    daemon -> client   b"PBF1" i32 exit_code u32 stdout_len u32 log_len  stdout  log

Exactly-once rule: the daemon runs a request only after it has read `G`, and the client sends
`G` only when it will not fall back. So any failure *before* `G` was sent (no socket, refused,
timeout, decline, garbage) -> the caller does the work in-process; any failure *after* it ->
CNI error 11 "try again" (the daemon may or may not have carried the request out; the runtime
retries or cleans up with DEL, both of which are idempotent). A request is never run twice.
"""

import _socket
import posix
import sys

MAGIC = b"PBF1"
READY = b"R"
DECLINE = b"D"
GO = b"G"
PLUGINS = ("pybridge", "pybridge-ipam")
# Environment variables that change what the handler does besides the CNI_* parameters. The
# daemon serves a request only if the caller's values equal its own (else it declines and the
# caller works in-process), so both paths always act on the same locks and state.
SETTINGS = {b"PYBRIDGE_RUN_DIR": b"/run/cni-bridge"}
DEFAULT_RUN_DIR = "/run/cni-bridge"
IDENTITY_KEY = b"PYBRIDGE_CALLER_NS"  # not an environment variable: set by the client itself
SOCKET_ENV = "PYBRIDGE_FASTPATH_SOCKET"  # a path; "" or "off" disables the fast path
DEBUG_ENV = "PYBRIDGE_FASTPATH_DEBUG"    # "1": say on stderr which path served the request
SOCKET_NAME = "cni.sock"
MAX_HEADER = 64 * 1024
MAX_STDIN = 8 * 1024 * 1024
MAX_STDOUT = 16 * 1024 * 1024
MAX_LOG = 1024 * 1024
READY_TIMEOUT = 5.0      # connect + daemon reads the request; then we fall back
RESULT_TIMEOUT = 600.0   # after `G`: a daemon that hangs this long gets error 11
TRY_AGAIN = 11


class Reply:
    """What the plugin prints: stdout bytes, one stderr log line, exit code."""
    __slots__ = ("stdout", "log", "exit_code", "served_by")

    def __init__(self, stdout: bytes, log: str, exit_code: int, served_by: str) -> None:
        self.stdout = stdout
        self.log = log
        self.exit_code = exit_code
        self.served_by = served_by


def _decode(value: bytes) -> str:
    """os.fsdecode without importing os."""
    return value.decode(sys.getfilesystemencoding(), "surrogateescape")


def socket_path(environb: "dict[bytes, bytes]" = posix.environ) -> str | None:
    """Where the daemon listens, or None when the fast path is switched off."""
    explicit = environb.get(SOCKET_ENV.encode())
    if explicit is not None:
        return None if explicit in (b"", b"off") else _decode(explicit)
    run_dir = environb.get(b"PYBRIDGE_RUN_DIR")
    return (_decode(run_dir) if run_dir else DEFAULT_RUN_DIR).rstrip("/") + "/" + SOCKET_NAME


def namespace_identity() -> bytes:
    """Which network and mount namespace this process is in (device:inode of each). The daemon
    serves only callers in its own namespaces: CNI_NETNS paths and the host-side links must
    mean the same to both (a driver started inside a test namespace must not serve the host)."""
    net = posix.stat("/proc/self/ns/net")
    mnt = posix.stat("/proc/self/ns/mnt")
    return f"{net.st_dev}:{net.st_ino}/{mnt.st_dev}:{mnt.st_ino}".encode()


def forwarded_env(environb: "dict[bytes, bytes]") -> dict[bytes, bytes]:
    """The caller's environment (the daemon hands it to the handler exactly as the in-process
    path does: see the wire format), plus the caller's namespace identity."""
    env = dict(environb)
    env[IDENTITY_KEY] = namespace_identity()
    return env


def encode_request(plugin: str, env: dict[bytes, bytes], stdin: bytes) -> bytes:
    fields = [plugin.encode()]
    for key, value in env.items():
        fields += (key, value)
    header = b"\0".join(fields)
    return MAGIC + len(header).to_bytes(4, "big") + len(stdin).to_bytes(4, "big") + header + stdin


def _recv_exact(sock, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed by the daemon")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def forward(plugin: str, environb: "dict[bytes, bytes]", stdin: bytes,
            path: str | None = None) -> "Reply | None":
    """Run the request in the daemon. None: it was not accepted, run it in-process instead."""
    if path is None:
        return None
    env = forwarded_env(environb)
    frame = encode_request(plugin, env, stdin)
    if len(stdin) > MAX_STDIN or len(frame) - len(stdin) - 12 > MAX_HEADER:
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(READY_TIMEOUT)
        try:
            sock.connect(path)
            sock.sendall(frame)
            answer = sock.recv(1)
            if answer != READY:
                _debug(f"daemon at {path} declined: {_decline_reason(sock, answer)}")
                return None
            sock.sendall(GO)  # the commit point: raised -> not sent -> the daemon never runs it
        except OSError as exc:  # includes timeouts, ENOENT, ECONNREFUSED, EACCES, EPIPE
            _debug(f"no daemon at {path}: {exc.__class__.__name__}: {exc}")
            return None
        try:
            sock.settimeout(RESULT_TIMEOUT)
            head = _recv_exact(sock, 16)
            exit_code = int.from_bytes(head[4:8], "big", signed=True)
            out_len = int.from_bytes(head[8:12], "big")
            log_len = int.from_bytes(head[12:16], "big")
            if head[:4] != MAGIC or out_len > MAX_STDOUT or log_len > MAX_LOG:
                raise ConnectionError("malformed response from the daemon")
            body = _recv_exact(sock, out_len + log_len)
        except OSError as exc:
            return lost_reply(plugin, stdin, path, exc)
        return Reply(body[:out_len], body[out_len:].decode("utf-8", "replace"), exit_code, "daemon")
    finally:
        sock.close()


def _decline_reason(sock, answer: bytes) -> str:
    if answer != DECLINE:
        return f"unexpected answer {answer[:1]!r}"
    try:
        n = int.from_bytes(_recv_exact(sock, 2), "big")
        return _recv_exact(sock, n).decode("utf-8", "replace")
    except OSError:
        return "(no reason given)"


def lost_reply(plugin: str, stdin: bytes, path: str, exc: BaseException) -> Reply:
    """The daemon took the request and then went away: error 11, never a second run."""
    from cni_bridge.cni.protocol import dumps, error_version  # stdlib only
    version = error_version(stdin)  # the config's own version when it names a supported one
    msg = "the pybridge daemon accepted the request but did not answer; try again"
    details = (f"{path}: {exc.__class__.__name__}: {exc}. The request may or may not have been "
               "carried out; it was not retried, so that it never runs twice.")
    out = dumps({"cniVersion": version, "code": TRY_AGAIN, "msg": msg, "details": details})
    return Reply(out, f"{plugin}: {msg} ({details})", 1, "lost")


def _debug(text: str) -> None:
    if posix.environ.get(DEBUG_ENV.encode()) == b"1":
        print(f"pybridge fastpath: {text}", file=sys.stderr)


HELP = ("{plugin}: a CNI plugin (see https://www.cni.dev). It is run by container runtimes with\n"
        "CNI_COMMAND=ADD|DEL|CHECK|VERSION|GC|STATUS and the network configuration on stdin.\n"
        "Configuration keys are documented in the pybridge README.")
CRASH_ENV = (b"PYBRIDGE_CRASH_AFTER", b"PYBRIDGE_CRASH_TRACE")  # see cni_bridge.crashpoint


def main(plugin: str) -> None:
    """The exec'd `pybridge` / `pybridge-ipam`: forward to the daemon, else work in-process."""
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print(HELP.format(plugin=plugin))
        sys.exit(0)
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    environb = posix.environ
    # Crash injection (tests only) must kill this process, not the shared daemon.
    crash_test = any(key in environb for key in CRASH_ENV)
    reply = None if crash_test else forward(plugin, environb, stdin, socket_path(environb))
    if reply is None:
        from cni_bridge.cni.entry import in_process  # lazy: the heavy path (site, maybe pyroute2)
        response = in_process(plugin, stdin)
        reply = Reply(response.stdout, response.log, response.exit_code, "in-process")
    sys.stdout.buffer.write(reply.stdout)
    sys.stdout.flush()
    if reply.log:
        print(reply.log, file=sys.stderr)
        if environb.get(b"PYBRIDGE_LOG_FILE", b"-") not in (b"", b"-"):
            from cni_bridge.logsetup import emit_to_file  # lazy: only when a log file is configured
            emit_to_file(reply.log)
    if environb.get(DEBUG_ENV.encode()) == b"1":
        print(f"pybridge fastpath: served by {reply.served_by}", file=sys.stderr)
    sys.exit(reply.exit_code)
