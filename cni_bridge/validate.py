"""Validation of every name that reaches the file system or the kernel.

Container ids, network names and interface names end up in paths (lease files, lock files) and
in netlink requests. They are checked here, once, before any use.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import re
import stat
from typing import Any, Callable

from cni_bridge.errors import PluginError, config_error, env_error, shown

# Every pattern is applied with fullmatch: `re.match(r"...$")` also accepts a trailing newline.
# The CNI spec: container id "must only contain alphanumeric characters, underscore, dot and
# hyphen" and start with an alphanumeric character; network names the same.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
# The kernel (dev_valid_name) refuses link names that are empty, 16 bytes or longer, "." or "..",
# or contain '/', ':' (alias syntax) or whitespace; we accept the subset `ip` users type, which
# is also safe in a path.
_IFNAME_RE = re.compile(r"[A-Za-z0-9_.\-@]{1,15}")
MAX_ID_LEN = 256


def _check_id(value: object, what: str, make_error) -> str:
    if not isinstance(value, str) or not value:
        raise make_error(f"{what} is required")
    if len(value) > MAX_ID_LEN or not _ID_RE.fullmatch(value) or ".." in value:
        raise make_error(
            f"invalid {what} {shown(value)}",
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
    """A kernel interface name (see _IFNAME_RE)."""
    make_error = env_error if from_env else config_error
    if not isinstance(value, str) or not value:
        raise make_error(f"{what} is required")
    if value in (".", "..") or not _IFNAME_RE.fullmatch(value) or len(value.encode()) > 15:
        raise make_error(
            f"invalid {what} {shown(value)}",
            "interface names are 1-15 characters of letters, digits, '_', '.', '-', '@' "
            "(not '.' or '..'; no ':', '/' or whitespace)",
        )
    return value


# --- addresses from input ----------------------------------------------------------------------
# `ipaddress` accepts an IPv6 zone index ("fd00::5%x"), which makes a different address object
# (and lease file name) than "fd00::5": one address could be leased twice. Every address, network
# and interface that comes from input is parsed here, and a zone index is refused.
def ip_address(value: object, what: str, make_error: Callable[..., PluginError] = config_error):
    return _ip(ipaddress.ip_address, value, what, make_error, "an IP address")


def ip_network(value: object, what: str, make_error: Callable[..., PluginError] = config_error):
    """A CIDR; host bits are allowed (as in host-local)."""
    return _ip(lambda text: ipaddress.ip_network(text, strict=False), value, what, make_error, "a valid CIDR")


def ip_interface(value: object, what: str, make_error: Callable[..., PluginError] = config_error):
    return _ip(ipaddress.ip_interface, value, what, make_error, "an address/prefix")


def _ip(parse: Callable[[str], Any], value: object, what: str, make_error: Callable[..., PluginError],
        kind: str) -> Any:
    if not isinstance(value, str):
        raise make_error(f"{what} must be {kind} string, got {value!r:.60}")
    text = value.strip()
    if "%" in text:
        raise make_error(f"{what} {value!r:.60} must not carry a zone index",
                         "'%zone' names a link-local scope; it would make a second, different address")
    try:
        return parse(text)
    except ValueError:
        raise make_error(f"{what} {value!r:.60} is not {kind}") from None


def netns_path(value: object) -> str:
    """CNI_NETNS: an absolute path (existence is checked by the caller when it matters)."""
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value:
        raise env_error(f"invalid network namespace path {str(value)[:120]!r}", "must be an absolute path")
    return value


DNS_LISTS = ("nameservers", "search", "options")


def dns(value: object, what: str = "dns") -> dict:
    """A CNI `dns` object (nameservers/search/options: lists of strings, domain: a string); it
    is copied into results, so a wrong shape is error 7 here rather than a broken result. Returns
    a copy without null members."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise config_error(f"{what} must be an object (nameservers, domain, search, options)")
    for key in DNS_LISTS:
        items = value.get(key)
        if items is not None and (not isinstance(items, list) or not all(isinstance(i, str) for i in items)):
            raise config_error(f"{what}.{key} must be a list of strings, got {items!r:.60}")
    if value.get("domain") is not None and not isinstance(value["domain"], str):
        raise config_error(f"{what}.domain must be a string, got {value['domain']!r:.60}")
    return {key: item for key, item in value.items() if item is not None}  # null = absent, never copied on


NS_GET_NSTYPE = 0xB703      # ioctl on an nsfs file: the namespace type (linux/nsfs.h)
CLONE_NEWNET = 0x40000000


def could_be_netns(path: str) -> bool:
    """Namespace files (nsfs, bind-mounted or under /proc) stat as regular files. Anything else
    must never be opened as one: opening a FIFO blocks forever, opening a device acts on it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def netns_present(path: str) -> str:
    """ADD and CHECK need the namespace to be there: say so (error 4) before IPAM leases an
    address or a mode opens the kernel, instead of failing half-way."""
    if not could_be_netns(path):
        raise env_error(f"network namespace {path[:120]!r} does not exist or is not a namespace file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise env_error(f"network namespace {path[:120]!r} cannot be opened", exc.strerror or str(exc)) from None
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError as exc:
        kind = CLONE_NEWNET if exc.errno == errno.EINVAL else None  # pre-4.11 kernel: cannot tell
    finally:
        os.close(fd)
    if kind != CLONE_NEWNET:
        raise env_error(f"{path[:120]!r} is not a network namespace")
    return path


__all__ = ["PluginError", "container_id", "network_name", "ifname", "netns_path", "netns_present",
           "could_be_netns", "dns", "ip_address", "ip_network", "ip_interface"]
