"""Validation of every name that reaches the file system or the kernel.

Container ids, network names and interface names end up in paths (lease files, lock files) and
in netlink requests. They are checked here, once, before any use.
"""

from __future__ import annotations

import re

from cni_bridge.errors import PluginError, config_error, env_error

# The CNI spec: container id "must only contain alphanumeric characters, underscore, dot and
# hyphen" and start with an alphanumeric character; network names the same.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
# Linux accepts almost any byte in a link name; we accept what `ip` users type and what is safe
# in a path: at most 15 bytes, no '/', no whitespace, not '.' or '..'.
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.\-@:]{1,15}$")
MAX_ID_LEN = 256


def _check_id(value: object, what: str, make_error) -> str:
    if not isinstance(value, str) or not value:
        raise make_error(f"{what} is required")
    if len(value) > MAX_ID_LEN or not _ID_RE.match(value) or ".." in value:
        raise make_error(
            f"invalid {what} {value[:80]!r}",
            "allowed: letters, digits, '_', '.', '-'; must start with a letter or digit; "
            f"at most {MAX_ID_LEN} characters",
        )
    return value


def container_id(value: object) -> str:
    """CNI_CONTAINERID (an environment parameter: bad values are error 4)."""
    return _check_id(value, "container id", env_error)


def network_name(value: object) -> str:
    """The network `name` from the configuration (bad values are error 7)."""
    return _check_id(value, "network name", config_error)


def ifname(value: object, what: str = "interface name", *, from_env: bool = False) -> str:
    """A kernel interface name: 1-15 bytes, no '/', not '.' or '..'."""
    make_error = env_error if from_env else config_error
    if not isinstance(value, str) or not value:
        raise make_error(f"{what} is required")
    if value in (".", "..") or not _IFNAME_RE.match(value) or len(value.encode()) > 15:
        raise make_error(
            f"invalid {what} {value[:80]!r}",
            "interface names are 1-15 characters of letters, digits, '_', '.', '-', '@', ':'",
        )
    return value


def netns_path(value: object) -> str:
    """CNI_NETNS: an absolute path (existence is checked by the caller when it matters)."""
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value:
        raise env_error(f"invalid network namespace path {str(value)[:120]!r}", "must be an absolute path")
    return value


__all__ = ["PluginError", "container_id", "network_name", "ifname", "netns_path"]
