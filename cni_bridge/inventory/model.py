"""What `cni-bridge status` shows and `gc` judges: plain data, no I/O.

`Facts` is what the gather step read (files, then the kernel); `Inventory` is what the judge step
made of it: networks with their endpoints judged attached / stale / unknown, and the claims on
host veths that `gc` needs to prove a port is nobody's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cni_bridge.ipam.lease import Lease

# Endpoint states
ATTACHED = "attached"   # the host link or the container interface exists
STALE = "stale"         # neither exists, and nothing suggests it is still being set up
UNKNOWN = "unknown"     # cannot tell (a foreign main plugin, a link mode without a cache entry)
DOCKER = "docker"       # an address the Docker IPAM driver holds; dockerd owns its life cycle

ALL_BRIDGES = "*"       # key of Claims.unprovable: no port of any bridge can be judged
DOCKER_OWNER_PREFIX = "docker-"    # leases the Docker IPAM driver holds (cni_bridge/docker/ipam.py)
DOCKER_ENDPOINT_IFNAME = "docker"  # cni_bridge/docker/network.py ENDPOINT_IFNAME


def wanted_name(name: str, wanted: set[str] | None) -> bool:
    """`wanted` names networks; a Docker network may also be named by its short id."""
    return wanted is None or name in wanted or name[:12] in wanted


@dataclass(frozen=True)
class Sources:
    """Where pybridge's state is looked for (the options of `status` and `gc`)."""
    data_dirs: tuple[Path, ...]
    conf_dirs: tuple[Path, ...]
    state_dir: Path | None
    cache_dir: Path | None
    port_dir: Path | None = None   # VM port records (cni_bridge/vm)


@dataclass
class NetworkConfig:
    """What a CNI config file says about one network."""
    name: str
    path: str
    plugin: str                 # main plugin type ("pybridge", or e.g. "bridge" with pybridge-ipam)
    mode: str | None
    bridge: str | None          # bridge (bridge mode) or master (link modes)
    ip_masq: bool
    data_dir: str | None        # None: the IPAM is not pybridge-ipam


@dataclass(frozen=True)
class HostLink:
    """One link of the host namespace, as the judges need it (a copy of what netlink reports)."""
    name: str
    index: int
    kind: str
    mac: str
    up: bool
    master: int | None = None
    peer: int | None = None          # IFLA_LINK: a veth's peer index, in `peer_netnsid`'s namespace
    peer_netnsid: int | None = None  # None: the peer is in the host namespace


@dataclass
class Container:
    """The container side of an endpoint, as seen inside its network namespace."""
    netns: str | None
    ifname: str | None = None
    mac: str | None = None
    addresses: list[str] = field(default_factory=list)
    present: bool = False       # the interface was found in the namespace


@dataclass
class Endpoint:
    container_id: str
    ifname: str
    source: str                 # "cni", "docker" (driver endpoint), "docker-ipam" (address only) or "vm"
    state: str
    host_ifname: str | None = None
    host_link: bool = False
    host_master: str | None = None
    leased: list[str] = field(default_factory=list)
    since: float | None = None
    masquerade: list[str] = field(default_factory=list)
    container: Container | None = None
    docker_endpoint: str | None = None
    why: str = ""               # why the state was chosen (shown by gc)
    data_dir: str | None = None  # the lease store holding `leased`


@dataclass
class Network:
    name: str
    sources: list[str] = field(default_factory=list)
    plugin: str | None = None
    mode: str | None = None
    bridge: str | None = None   # bridge name or master NIC
    bridge_present: bool | None = None
    bridge_up: bool | None = None
    bridge_addresses: list[str] = field(default_factory=list)
    ip_masq: bool | None = None
    data_dir: str | None = None
    table: str | None = None
    table_present: bool = False
    masquerade: dict[str, str] = field(default_factory=dict)   # address -> owner
    vxlan: dict[str, Any] | None = None  # the bridge's vxlan port: device, vni, local, group, peers, endpoints
    endpoints: list[Endpoint] = field(default_factory=list)
    docker_id: str | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class Claims:
    """Host veths that some owner claims, from every source found whatever networks were asked
    for: a lease (its owner's veth name) or a Docker endpoint record. `unprovable`: bridges whose
    ports cannot be judged at all (bridge -> why; ALL_BRIDGES when a source could not be read)."""
    ports: set[str] = field(default_factory=set)
    unprovable: dict[str, str] = field(default_factory=dict)

    def why_unprovable(self, bridge: str) -> str | None:
        return self.unprovable.get(ALL_BRIDGES) or self.unprovable.get(bridge)


@dataclass
class Facts:
    """Everything the gather step read, before any judgement. Files are read before the kernel:
    a port made in between looks unclaimed here, which is why gc re-verifies before deleting."""
    sources: Sources
    now: float
    configs: list[NetworkConfig] = field(default_factory=list)
    config_errors: list[str] = field(default_factory=list)
    docker_networks: list[dict[str, Any]] = field(default_factory=list)
    docker_endpoints: list[dict[str, Any]] = field(default_factory=list)
    docker_errors: list[str] = field(default_factory=list)       # unusable state files
    vm_ports: dict[str, dict[str, Any]] = field(default_factory=dict)  # tap -> VM port record
    vm_errors: list[str] = field(default_factory=list)           # unusable VM port records
    stores: dict[str, dict[str, list[Lease]]] = field(default_factory=dict)  # network -> dataDir -> leases
    store_errors: list[str] = field(default_factory=list)         # lease stores that could not be read
    cache: dict[tuple[str, str, str], str] = field(default_factory=dict)    # (net, cid, ifname) -> netns
    links: dict[str, HostLink] = field(default_factory=dict)
    netns: dict[int, str] = field(default_factory=dict)          # netnsid -> path
    tables: set[str] = field(default_factory=set)                # pybridge_* nft tables present
    table_names: dict[str, str] = field(default_factory=dict)    # network -> its table's name
    members: dict[str, dict[str, str]] = field(default_factory=dict)        # network -> address -> owner
    addresses: dict[str, list[str]] = field(default_factory=dict)           # bridge -> its addresses
    vxlan: dict[str, dict[str, Any]] = field(default_factory=dict)          # bridge -> its vxlan port
    containers: dict[tuple[str | None, str | None, str], Container | None] = field(default_factory=dict)
    netns_present: dict[str, bool] = field(default_factory=dict)            # cached netns path -> exists
    problems: list[str] = field(default_factory=list)

    def name_of(self, index: int | None) -> str | None:
        """The name of the host link with this index (a master, a veth's host-side peer)."""
        return next((link.name for link in self.links.values() if link.index == index), None) if index else None


@dataclass
class Inventory:
    networks: list[Network]
    foreign_tables: list[str]   # pybridge_* tables that belong to no network found here
    netns: dict[int, str]       # netnsid -> path
    problems: list[str]
    claims: Claims = field(default_factory=Claims)
    links: dict[str, HostLink] = field(default_factory=dict)
    sources: Sources | None = None

    def to_dict(self) -> dict[str, Any]:
        """What `status --json` prints (claims, links and sources are gc's working data)."""
        return {"networks": [asdict(n) for n in self.networks], "foreign_tables": self.foreign_tables,
                "netns": self.netns, "problems": self.problems}

    def network(self, name: str) -> Network | None:
        return next((n for n in self.networks if n.name == name), None)
