"""Read-only discovery of what pybridge has on this host, for `cni-bridge status` and `gc`.

Nothing here changes the host. Two steps: `gather` reads files, then the kernel, into `Facts`
(gather.py); `judge` turns them into an `Inventory` (judge.py, pure). `gc` adds a third step on
top, its own judgement of what is stale (stale.py), and the removals (reclaim.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from cni_bridge.inventory.gather import gather, netns_map, read_configs
from cni_bridge.inventory.judge import judge
from cni_bridge.inventory.model import (
    ATTACHED,
    DOCKER,
    STALE,
    UNKNOWN,
    Container,
    Endpoint,
    Facts,
    Inventory,
    Network,
    NetworkConfig,
    Sources,
)
from cni_bridge.ipam.config import DEFAULT_DATA_DIR
from cni_bridge.state import DEFAULT_STATE_DIR

DEFAULT_CONF_DIR = Path("/etc/cni/net.d")
DEFAULT_CNI_CACHE_DIR = Path("/var/lib/cni")

__all__ = ["ATTACHED", "DOCKER", "STALE", "UNKNOWN", "Container", "Endpoint", "Facts", "Inventory", "Network",
           "NetworkConfig", "Sources", "collect", "gather", "judge", "netns_map", "read_configs"]


def collect(*, data_dirs: Iterable[Path] = (DEFAULT_DATA_DIR,), conf_dirs: Iterable[Path] = (DEFAULT_CONF_DIR,),
            state_dir: Path | None = DEFAULT_STATE_DIR, cache_dir: Path | None = DEFAULT_CNI_CACHE_DIR,
            only: Iterable[str] | None = None, with_netns: bool = True, grace: float = 60.0,
            port_dir: Path | None = None) -> Inventory:
    """Everything pybridge has on this host; `only` limits the networks shown to some names
    (claims on host veths are still gathered from every network)."""
    sources = Sources(tuple(map(Path, data_dirs)), tuple(map(Path, conf_dirs)), state_dir, cache_dir, port_dir)
    wanted = set(only) if only is not None else None
    return judge(gather(sources, wanted, with_netns=with_netns), wanted, grace)
