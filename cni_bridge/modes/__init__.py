"""Attachment drivers: one module per mode, each with add / delete / check.

A mode receives a validated `NetworkSpec`, an `Attachment` and the `Addressing` IPAM handed out,
does the kernel work through `cni_bridge.kernel.netlink` and `cni_bridge.firewall`, undoes it all if
anything fails, and returns a canonical result dict.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from cni_bridge.errors import config_error

_MODULES = {"bridge": "cni_bridge.modes.bridge", "macvlan": "cni_bridge.modes.macvlan",
            "tap": "cni_bridge.modes.tap", "macvtap": "cni_bridge.modes.macvtap",
            "ipvlan": "cni_bridge.modes.ipvlan", "vlan": "cni_bridge.modes.vlan"}


def driver(mode: str) -> ModuleType:
    try:
        return importlib.import_module(_MODULES[mode])
    except KeyError:
        raise config_error(f"unknown mode {mode!r}", f"supported: {', '.join(_MODULES)}") from None
