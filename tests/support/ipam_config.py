"""IPAM configs for the IPAM tests: one network name, `ipam` sections and whole network configs
whose dataDir is the test's (never /var/lib), parsed or as JSON objects."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from cni_bridge.ipam.config import IpamConfig, parse_ipam_config

__all__ = ["NETWORK", "config", "ip", "ipam_section", "net_config"]

NETWORK = "testnet"


def ip(text: str):
    return ipaddress.ip_address(text)


def ipam_section(data_dir: Path, *subnets: str | list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """An `ipam` object with one range set per argument (a subnet string or a list of ranges)."""
    sets = [[{"subnet": s}] if isinstance(s, str) else s for s in subnets]
    return {"type": "pybridge-ipam", "dataDir": str(data_dir), "ranges": sets, **extra}


def net_config(data_dir: Path, *subnets: str | list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A whole network config as the main plugin passes it to the IPAM functions."""
    return {"cniVersion": "1.1.0", "name": NETWORK, "type": "pybridge",
            "ipam": ipam_section(data_dir, *subnets), **extra}


def config(data_dir: Path, *subnets: str | list[dict[str, Any]]) -> IpamConfig:
    return parse_ipam_config(ipam_section(data_dir, *subnets))
