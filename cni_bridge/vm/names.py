"""The names and keys of VM ports that other packages read (inventory/ for `status` and `gc`):
no imports beyond the standard library, so that reading them loads nothing of the kernel side."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

DEFAULT_PORT_DIR = Path(os.environ.get("PYBRIDGE_VM_DIR", "/var/lib/cni-bridge/vm"))
KIND = "ports"                  # state.StateStore kind of the port records
OWNER_PREFIX = "pybridge-vm-"   # lease owner: (OWNER_PREFIX + tap, tap)
TAP_PREFIX = "pbtap"            # default names: pbtap + 10 hex digits = 15 bytes
DEFAULT_TAP = re.compile(r"^pbtap[0-9a-f]{10}$")
CREATING, READY = "creating", "ready"


def owner_of(tap_name: str) -> tuple[str, str]:
    """The lease owner key of a port (the store's conventions: container id, ifname)."""
    return OWNER_PREFIX + tap_name, tap_name


def tap_of_owner(container_id: str, ifname: str) -> str | None:
    """The tap a lease owner names, or None when the lease is no VM port's."""
    return ifname if container_id == OWNER_PREFIX + ifname else None


def default_tap_name(network: str, mac: str) -> str:
    """Derived from network and guest MAC: attaching the same guest NIC twice names the same tap
    (and is refused), and the name says nothing the record does not."""
    return TAP_PREFIX + hashlib.sha256(f"{network}\0{mac.lower()}".encode()).hexdigest()[:10]
