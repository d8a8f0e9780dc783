"""Settings of one driver instance and the per-process context every handler receives."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cni_bridge.ipam.config import DEFAULT_DATA_DIR
from cni_bridge.state import DEFAULT_STATE_DIR, StateStore

SOCKET_PATH = Path("/run/docker/plugins/pybridge.sock")
# Default pools handed out when `docker network create` names no subnet: /24s (v4) and /64s (v6)
# from these ranges, skipping any that overlaps a host route or address or another pool.
DEFAULT_POOL4 = ipaddress.ip_network("10.213.0.0/16")
DEFAULT_POOL6 = ipaddress.ip_network("fd42:7062:7269::/48")  # "pbri" in ASCII
DEFAULT_PREFIX = {4: 24, 6: 64}


@dataclass(frozen=True)
class Settings:
    state_dir: Path = DEFAULT_STATE_DIR
    ipam_data_dir: Path = DEFAULT_DATA_DIR      # the lease store CNI's pybridge-ipam uses too
    ipam_store: dict | None = None              # a `store` object (etcd); None: file in ipam_data_dir
    default_pool4: ipaddress.IPv4Network = DEFAULT_POOL4
    default_pool6: ipaddress.IPv6Network = DEFAULT_POOL6


@dataclass
class Driver:
    """What handlers share: settings and the state store (no in-memory caches: workers are
    separate processes, the files are the only truth)."""
    settings: Settings = field(default_factory=Settings)
    state: StateStore = field(init=False)

    def __post_init__(self) -> None:
        self.state = StateStore(self.settings.state_dir)
