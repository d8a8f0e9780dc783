"""Which network a VM port joins: a CNI network (its config in the CNI config directory) or a
pybridge Docker network (the driver's state), turned into what an attachment needs: the
`NetworkSpec` every mode uses and the lease stores to take addresses from.

A CNI network's addresses come from its `pybridge-ipam` store (the same store and owner-key
conventions as a container's, so the network's containers and VMs share one range without
collisions); a network without `ipam` gives L2-only ports. Any other IPAM plugin is refused:
it would have to be exec'd with a runtime's CNI environment. A Docker network needs the pybridge
IPAM driver (`--ipam-driver pybridge`): its pools name the stores; with dockerd's own IPAM the
addresses are dockerd's and a VM cannot take one.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from cni_bridge.attachment import Addressing, IpConfig, RouteConfig
from cni_bridge.config import NetworkSpec, parse_network
from cni_bridge.docker.ipam import pool_config
from cni_bridge.errors import config_error, shown
from cni_bridge.inventory.gather import config_files, plugins_of
from cni_bridge.ipam.config import IpamConfig
from cni_bridge.ipam.lease import Lease
from cni_bridge.ipam.plugin import ipam_config
from cni_bridge.state import StateStore

CNI, DOCKER = "cni", "docker"
IPAM_TYPE = "pybridge-ipam"
SHORT_ID = 12  # a Docker network may be named by a unique prefix of its id this long or longer


@dataclass(frozen=True)
class LeaseSource:
    """One lease store a port takes an address from (one per Docker pool, one for CNI)."""
    store: str          # the store's network name (a directory under data_dir)
    config: IpamConfig  # ranges, routes, dataDir

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir


@dataclass(frozen=True)
class VmNetwork:
    name: str                      # as recorded: the CNI network name or the Docker network id
    source: str                    # CNI or DOCKER
    spec: NetworkSpec
    leases: tuple[LeaseSource, ...] = ()
    origin: str = ""               # the config file, or "docker driver state"
    config: dict[str, Any] = field(default_factory=dict)  # CNI: the plugin's config with the network name

    @property
    def forward(self) -> bool:
        """Whether the masquerade table carries the FORWARD accepts (CNI), or the network keeps
        them for its whole life (the Docker driver's)."""
        return self.source == CNI


def addressing(leases: Iterable[Lease], sources: Iterable[LeaseSource]) -> Addressing:
    """The port's addresses with their prefix and gateway, plus the CNI network's routes."""
    ips = [IpConfig(ipaddress.ip_interface(f"{lease.address}/{lease.subnet.prefixlen}"), lease.gateway)
           for lease in leases]
    routes = [RouteConfig(r.dst, r.gw) for source in sources for r in source.config.routes]
    return Addressing(ips, routes)


def resolve(name: str, conf_dirs: Iterable[Path], state_dir: Path | None) -> VmNetwork:
    """NETWORK of `cni-bridge vm`: a CNI network name first, else a Docker network id (or a
    unique prefix of at least 12 characters). Error 7 when neither is found or usable."""
    found = cni_network(name, conf_dirs)
    if found is None and state_dir is not None:
        found = docker_network(name, state_dir)
    if found is None:
        dirs = ", ".join(str(d) for d in conf_dirs)
        raise config_error(f"no network {shown(name)}: no CNI config of that name in {dirs} and no pybridge "
                           "Docker network with that id", "Docker networks are named by id: "
                           "docker network inspect -f '{{.Id}}' NAME")
    if found.spec.mode != "bridge":
        raise config_error(f"network {name} is mode {found.spec.mode}: VM ports join bridge networks")
    return found


def cni_network(name: str, conf_dirs: Iterable[Path]) -> VmNetwork | None:
    """The first config (in file-name order, as libcni) whose network is `name` and whose
    plugin list has a `pybridge` plugin."""
    for path in config_files(conf_dirs):
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(document, dict) or document.get("name") != name:
            continue
        for plugin in plugins_of(document):
            if plugin.get("type") == "pybridge":
                config = {**plugin, "name": name, "cniVersion": document.get("cniVersion")}
                return VmNetwork(name, CNI, parse_network(config), _cni_leases(name, config), str(path), config)
    return None


def _cni_leases(name: str, config: dict[str, Any]) -> tuple[LeaseSource, ...]:
    ipam = config.get("ipam")
    if not ipam:
        return ()
    if not isinstance(ipam, dict) or ipam.get("type") != IPAM_TYPE:
        raise config_error(f"network {name} uses IPAM {shown(ipam.get('type') if isinstance(ipam, dict) else ipam)}: "
                           f"VM ports take their addresses from {IPAM_TYPE} stores only")
    return (LeaseSource(name, ipam_config(config)),)


def docker_network(name: str, state_dir: Path) -> VmNetwork | None:
    store = StateStore(state_dir)
    records = [r for r in store.all("networks") if r.get("status") == "ready"
               and (r["id"] == name or (len(name) >= SHORT_ID and r["id"].startswith(name)))]
    if not records:
        return None
    if len(records) > 1:
        raise config_error(f"{shown(name)} names more than one Docker network: give more of the id")
    record = records[0]
    spec = parse_network(record["config"])
    pools = {p["pool"]: p for p in store.all("pools")}
    sources = []
    for data in record["ipv4"] + record["ipv6"]:
        pool = pools.get(data["pool"])
        if pool is None:
            raise config_error(f"Docker network {record['id'][:SHORT_ID]}: pool {data['pool']} is not the pybridge "
                               "IPAM driver's", "VM ports need --ipam-driver pybridge (dockerd's own IPAM "
                               "keeps its addresses to itself)")
        gateway = data.get("gateway")
        sources.append(LeaseSource(pool["store"], pool_config(pool, gateway=ipaddress.ip_address(gateway)
                                                              if gateway else None)))
    return VmNetwork(record["id"], DOCKER, spec, tuple(sources), "docker driver state")
