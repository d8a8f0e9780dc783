"""Where pybridge's operation log goes: one line per operation on stderr and, when configured,
appended to a log file.

Why two entry points: the exec'd CNI plugin (`emit`) must stay on the standard library and
start in ~10 ms, so it appends its single line with one `O_APPEND` write (atomic for lines far
below PIPE_BUF-sized pages, so concurrent plugins never interleave) and never imports `logging`.
The long-running commands (`configure`) use `logging` with the same file.

Settings (both entry points):
    PYBRIDGE_LOG_FILE   append every operation line here too (default: stderr only)
    PYBRIDGE_DEBUG=1    debug detail (netlink / nftables) for the CLI and the daemon
`cni-bridge --debug` and `cni-bridge --log-file PATH` override them for one command.
"""

from __future__ import annotations

import os
import sys
import time

LOG_FILE_ENV = "PYBRIDGE_LOG_FILE"
DEBUG_ENV = "PYBRIDGE_DEBUG"
FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def log_file(environ: "os._Environ[str] | dict[str, str]" = os.environ) -> str | None:
    """The configured log file, or None (stderr only)."""
    path = environ.get(LOG_FILE_ENV, "")
    return path if path not in ("", "-") else None


def debug_enabled(environ: "os._Environ[str] | dict[str, str]" = os.environ) -> bool:
    return environ.get(DEBUG_ENV, "") in ("1", "true", "yes")


def _stamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def append(path: str, line: str) -> bool:
    """Append one timestamped line to `path` in a single write; False when it cannot be written
    (a log file problem must never fail a CNI operation)."""
    data = f"{_stamp()} [{os.getpid()}] {line.rstrip()}\n".encode("utf-8", "replace")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError:
        return False
    try:
        os.write(fd, data)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def emit(line: str, path: str | None = None) -> None:
    """The operation line of one CNI call: stderr (what runtimes capture) + the log file."""
    if not line:
        return
    print(line, file=sys.stderr)
    emit_to_file(line, path)


def emit_to_file(line: str, path: str | None = None) -> None:
    """The log-file half of `emit` (the exec'd client prints to stderr itself and imports this
    module only when a log file is configured)."""
    target = path if path is not None else log_file()
    if target and not append(target, line):
        print(f"pybridge: cannot append to log file {target}", file=sys.stderr)


def configure(*, debug: bool | None = None, path: str | None = None, name: str = "cni_bridge") -> None:
    """Logging for the CLI: `name`'s logger to stderr (+ the log file), INFO or DEBUG.
    Imports `logging` here, not at module level (the exec'd plugin never calls this)."""
    import logging  # lazy: see above

    debug = debug_enabled() if debug is None else debug
    path = path if path not in (None, "", "-") else log_file()
    formatter = logging.Formatter(FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path:
        try:
            handlers.append(logging.FileHandler(path))
        except OSError as exc:
            print(f"cni-bridge: cannot open log file {path}: {exc.strerror}", file=sys.stderr)
    logger = logging.getLogger(name)
    for handler in handlers:
        handler.setFormatter(formatter)
    logger.handlers[:] = handlers
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    if debug:  # pyroute2's own request tracing is the "netlink details"
        logging.getLogger("pyroute2").setLevel(logging.DEBUG)
        logging.getLogger("pyroute2").handlers[:] = handlers
