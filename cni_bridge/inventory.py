"""Read-only discovery of what pybridge has on this host, for `cni-bridge status` and `gc`.

Nothing here changes the host. Sources, each optional:
- CNI configs (`/etc/cni/net.d`): which networks use `pybridge` / `pybridge-ipam`, their mode,
  bridge or master, ipMasq and IPAM dataDir;
- the IPAM lease stores (default `/var/lib/cni/pybridge`, plus every dataDir a config names):
  who holds which address since when;
- the Docker driver's state (`/var/lib/cni-bridge/docker`): networks and endpoints;
- the kernel: links (bridges, host veths and their peers), addresses and MACs inside container
  namespaces, and the `pybridge_*` nftables tables with their owner-tagged set elements;
- libcni's cache (`/var/lib/cni/results`): the netns path a runtime attached an interface in.

Why an endpoint's container is found through the veth peer: leases do not record the netns
path. The host end of a pybridge veth has a deterministic name (`Attachment.host_ifname`), and
its IFLA_LINK / IFLA_LINK_NETNSID name the peer's index and namespace; namespace ids are mapped
to paths by asking the kernel for the id of every namespace file found in the usual places.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from cni_bridge.attachment import Attachment
from cni_bridge.ipam.config import DEFAULT_DATA_DIR
from cni_bridge.state import DEFAULT_STATE_DIR

DEFAULT_CONF_DIR = Path("/etc/cni/net.d")
DEFAULT_CNI_CACHE_DIR = Path("/var/lib/cni")
NETNS_DIRS = ("/run/netns", "/var/run/netns", "/run/docker/netns", "/var/run/docker/netns")
DOCKER_OWNER_PREFIX = "docker-"    # leases the Docker IPAM driver holds (cni_bridge/docker/ipam.py)
DOCKER_ENDPOINT_IFNAME = "docker"  # cni_bridge/docker/network.py ENDPOINT_IFNAME
LINK_MODES = ("macvlan", "ipvlan", "vlan")

# Endpoint states
ATTACHED = "attached"   # the host link or the container interface exists
STALE = "stale"         # neither exists, and nothing suggests it is still being set up
UNKNOWN = "unknown"     # cannot tell (a foreign main plugin, a link mode without a cache entry)
DOCKER = "docker"       # an address the Docker IPAM driver holds; dockerd owns its life cycle


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
    source: str                 # "cni", "docker" (driver endpoint) or "docker-ipam" (address only)
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
    endpoints: list[Endpoint] = field(default_factory=list)
    docker_id: str | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class Inventory:
    networks: list[Network]
    foreign_tables: list[str]   # pybridge_* tables that belong to no network found here
    netns: dict[int, str]       # netnsid -> path
    problems: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def network(self, name: str) -> Network | None:
        return next((n for n in self.networks if n.name == name), None)


# --- configs -------------------------------------------------------------------------------
def _plugins_of(document: Any) -> list[dict[str, Any]]:
    if not isinstance(document, dict):
        return []
    if isinstance(document.get("plugins"), list):
        return [{**p, "name": document.get("name")} for p in document["plugins"] if isinstance(p, dict)]
    return [document]


def read_configs(conf_dirs: Iterable[Path], problems: list[str]) -> list[NetworkConfig]:
    """Networks whose config uses pybridge as main plugin or pybridge-ipam as IPAM."""
    found = []
    for conf_dir in conf_dirs:
        try:
            names = sorted(os.listdir(conf_dir))
        except OSError:
            continue
        for fname in names:
            if not fname.endswith((".conflist", ".conf", ".json")):
                continue
            path = Path(conf_dir) / fname
            try:
                document = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                problems.append(f"cannot read CNI config {path}: {exc}")
                continue
            for plugin in _plugins_of(document):
                ipam = plugin.get("ipam") if isinstance(plugin.get("ipam"), dict) else {}
                ours_ipam = ipam.get("type") == "pybridge-ipam"
                if plugin.get("type") != "pybridge" and not ours_ipam:
                    continue
                name = plugin.get("name")
                if not isinstance(name, str):
                    continue
                mode = plugin.get("mode", "bridge") if plugin.get("type") == "pybridge" else None
                link = plugin.get("master") if mode in LINK_MODES else plugin.get("bridge", "cni0")
                data_dir = (ipam.get("dataDir") or str(DEFAULT_DATA_DIR)) if ours_ipam else None
                found.append(NetworkConfig(name, str(path), str(plugin.get("type")), mode,
                                           link if isinstance(link, str) else None,
                                           str(plugin.get("ipMasq", False)).lower() == "true",
                                           data_dir))
    return found


def _docker_records(state_dir: Path, problems: list[str]) -> tuple[list[dict], list[dict]]:
    if not (state_dir / "networks").is_dir():
        return [], []
    from cni_bridge.errors import PluginError
    from cni_bridge.state import StateStore
    store = StateStore(state_dir)
    try:
        (networks, bad), (endpoints, bad_endpoints) = store.scan("networks"), store.scan("endpoints")
        bad += bad_endpoints + store.scan("pools")[1]
    except PluginError as exc:
        problems.append(str(exc))
        return [], []
    problems += [f"Docker driver state: unusable file {line} (skipped)" for line in bad]
    return networks, endpoints


def _cni_cache(cache_dir: Path) -> dict[tuple[str, str, str], str]:
    """(network, container id, ifname) -> netns path, from libcni's result cache."""
    out: dict[tuple[str, str, str], str] = {}
    results = cache_dir / "results"
    try:
        names = os.listdir(results)
    except OSError:
        return out
    for name in names:
        try:
            entry = json.loads((results / name).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(entry, dict):
            continue
        netns = entry.get("netns") or ""
        if not netns:
            for iface in (entry.get("result") or {}).get("interfaces") or []:
                if isinstance(iface, dict) and iface.get("sandbox") and iface.get("name") == entry.get("ifName"):
                    netns = iface["sandbox"]
        key = (str(entry.get("networkName")), str(entry.get("containerId")), str(entry.get("ifName")))
        if netns:
            out[key] = netns
    return out


# --- kernel ----------------------------------------------------------------------------------
def _namespace_files(extra_dirs: Iterable[str] = ()) -> Iterator[str]:
    for directory in (*NETNS_DIRS, *extra_dirs):
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(directory)):
                yield os.path.join(directory, name)
    with contextlib.suppress(OSError):
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                yield f"/proc/{pid}/ns/net"


def netns_map(host, extra_dirs: Iterable[str] = ()) -> dict[int, str]:
    """netnsid (as the host namespace knows it) -> the first path found for that namespace."""
    seen: set[tuple[int, int]] = set()
    out: dict[int, str] = {}
    for path in _namespace_files(extra_dirs):
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            nsid = host.netnsid_of(fd)
        finally:
            os.close(fd)
        if nsid is not None and nsid not in out:
            out[nsid] = path
    return out


def _container_side(netns_path: str, *, index: int | None = None, name: str | None = None) -> Container:
    """Look at one interface inside a namespace (by index for veth peers, else by name)."""
    from cni_bridge import netlink
    container = Container(netns_path, name)
    try:
        with netlink.netns(netns_path) as ns:
            link = ns.link_by_index(index) if index is not None else ns.link(name or "")
            if link is None:
                return container
            container.ifname, container.mac, container.present = link.name, link.mac, True
            container.addresses = [str(a) for a in ns.addresses(link.index)
                                   if not (a.version == 6 and a.ip.is_link_local)]
    except netlink.NetnsGone:
        pass
    except OSError as exc:  # e.g. EPERM on a namespace of another user namespace
        container.ifname = f"? ({exc.strerror})"
    return container


# --- assembling ------------------------------------------------------------------------------
@dataclass
class _Host:
    by_name: dict[str, Any]
    by_index: dict[int, Any]
    netns: dict[int, str]
    tables: set[str]


def _host_view(with_netns: bool, problems: list[str]) -> _Host:
    from cni_bridge import firewall, netlink
    with netlink.root() as host:
        details = host.all_link_details()
        nsmap = netns_map(host) if with_netns else {}
    tables = set(firewall.pybridge_tables())
    if not firewall.nft.available():
        problems.append("nftables is not available: masquerade state unknown")
    return _Host({d.link.name: d for d in details}, {d.link.index: d for d in details}, nsmap, tables)


def _link_summary(net: Network, host: _Host) -> None:
    if not net.bridge:
        return
    details = host.by_name.get(net.bridge)
    net.bridge_present = details is not None
    if details is None:
        return
    net.bridge_up = details.link.up
    from cni_bridge import netlink
    with netlink.root() as h:
        net.bridge_addresses = [str(a) for a in h.addresses(details.link.index)
                                if not (a.version == 6 and a.ip.is_link_local)]


def _find_container(host: _Host, host_ifname: str | None, cached_netns: str | None,
                    ifname: str) -> Container | None:
    details = host.by_name.get(host_ifname) if host_ifname else None
    if details is not None and details.link.kind == "veth" and details.parent is not None:
        path = host.netns.get(details.parent_netnsid) if details.parent_netnsid is not None else None
        if path is not None:
            return _container_side(path, index=details.parent)
        if details.parent_netnsid is None:  # peer in the host namespace (Docker before Join)
            peer = host.by_index.get(details.parent)
            return Container("(host)", peer.link.name if peer else None, peer.link.mac if peer else None,
                             [], peer is not None)
    if cached_netns:
        return _container_side(cached_netns, name=ifname)
    return None


def _judge(ep: Endpoint, net: Network, cached_netns: str | None, now: float, grace: float) -> None:
    """attached / stale / unknown, with the reason."""
    container = ep.container
    if ep.host_link or (container is not None and container.present):
        ep.state, ep.why = ATTACHED, "host link present" if ep.host_link else "interface in netns"
        return
    if ep.since is not None and now - ep.since < grace:
        ep.state, ep.why = UNKNOWN, f"lease younger than {grace:g}s (an ADD may be in progress)"
        return
    if cached_netns and not os.path.exists(cached_netns):
        ep.state, ep.why = STALE, f"netns {cached_netns} is gone"
        return
    if cached_netns:
        ep.state, ep.why = STALE, f"no {ep.ifname} in netns {cached_netns}"
        return
    if net.plugin == "pybridge" and net.mode in (None, "bridge"):
        ep.state, ep.why = STALE, f"host veth {ep.host_ifname} is gone"
        return
    if net.plugin is None and net.mode is None:
        # No config found: a pybridge bridge attachment would have this veth; a foreign main
        # plugin (the Go bridge with pybridge-ipam) names its veths differently.
        ep.state, ep.why = UNKNOWN, "no config for this network; no veth named " + str(ep.host_ifname)
        return
    ep.state, ep.why = UNKNOWN, f"{net.plugin} {net.mode or ''} attachment without a libcni cache entry".strip()


def _lease_endpoints(net: Network, leases: list, host: _Host, cache: dict, now: float,
                     grace: float) -> list[Endpoint]:
    """`leases`: (data_dir, Lease) pairs."""
    grouped: dict[tuple[str, str, str], list] = {}
    for data_dir, lease in leases:
        grouped.setdefault((*lease.owner, str(data_dir)), []).append(lease)
    out = []
    for (cid, ifname, data_dir), held in sorted(grouped.items()):
        since = min(lease.since for lease in held)
        leased = [str(lease.address) for lease in held]
        if cid.startswith(DOCKER_OWNER_PREFIX):
            out.append(Endpoint(cid, ifname, "docker-ipam", DOCKER, leased=leased, since=since,
                                why="held by the Docker IPAM driver", data_dir=data_dir))
            continue
        host_ifname = Attachment(cid, ifname, None).host_ifname
        details = host.by_name.get(host_ifname)
        master = host.by_index.get(details.link.master) if details and details.link.master else None
        cached = cache.get((net.name, cid, ifname))
        ep = Endpoint(cid, ifname, "cni", UNKNOWN, host_ifname, details is not None,
                      master.link.name if master else None, leased, since,
                      sorted(a for a, owner in net.masquerade.items() if owner == host_ifname))
        ep.data_dir = data_dir
        ep.container = _find_container(host, host_ifname, cached, ifname)
        _judge(ep, net, cached, now, grace)
        out.append(ep)
    return out


def _docker_endpoints(net: Network, records: list[dict], host: _Host) -> list[Endpoint]:
    out = []
    for rec in records:
        host_ifname = rec.get("host_ifname")
        details = host.by_name.get(host_ifname) if host_ifname else None
        master = host.by_index.get(details.link.master) if details and details.link.master else None
        ep = Endpoint(str(rec.get("id", ""))[:12], DOCKER_ENDPOINT_IFNAME, "docker",
                      ATTACHED if details else UNKNOWN, host_ifname, details is not None,
                      master.link.name if master else None, list(rec.get("addresses") or []),
                      masquerade=sorted(a for a, owner in net.masquerade.items() if owner == host_ifname),
                      docker_endpoint=rec.get("id"),
                      why="host link present" if details else "no host link (dockerd owns this endpoint)")
        ep.container = _find_container(host, host_ifname, None, DOCKER_ENDPOINT_IFNAME)
        out.append(ep)
    return out


def collect(*, data_dirs: Iterable[Path] = (DEFAULT_DATA_DIR,), conf_dirs: Iterable[Path] = (DEFAULT_CONF_DIR,),
            state_dir: Path | None = DEFAULT_STATE_DIR, cache_dir: Path | None = DEFAULT_CNI_CACHE_DIR,
            only: Iterable[str] | None = None, with_netns: bool = True, grace: float = 60.0) -> Inventory:
    """Everything pybridge has on this host; `only` limits it to some network names."""
    from cni_bridge import firewall
    from cni_bridge.config import parse_network
    from cni_bridge.errors import PluginError
    from cni_bridge.ipam.store import LeaseStore, list_networks

    problems: list[str] = []
    wanted = set(only) if only is not None else None
    configs = [c for c in read_configs(conf_dirs, problems) if wanted is None or c.name in wanted]
    docker_nets, docker_eps = _docker_records(state_dir, problems) if state_dir else ([], [])
    networks: dict[str, Network] = {}

    def net_of(name: str) -> Network:
        return networks.setdefault(name, Network(name, table=firewall.table_name(name)))

    for cfg in configs:
        net = net_of(cfg.name)
        net.sources.append(f"config {cfg.path}")
        net.plugin = net.plugin or cfg.plugin
        net.mode = net.mode or cfg.mode
        net.bridge = net.bridge or cfg.bridge
        net.ip_masq = cfg.ip_masq if net.ip_masq is None else net.ip_masq
        net.data_dir = net.data_dir or cfg.data_dir
    for rec in docker_nets:
        name = str(rec.get("id", ""))
        if not name or (wanted is not None and name not in wanted and name[:12] not in wanted):
            continue
        net = net_of(name)
        net.sources.append("docker driver state")
        net.docker_id = name
        try:
            spec = parse_network(rec.get("config") or {})
            net.plugin, net.mode, net.ip_masq = "pybridge", spec.mode, spec.ip_masq
            net.bridge = spec.bridge if spec.mode == "bridge" else spec.master
        except PluginError as exc:
            net.problems.append(f"docker network config does not parse: {exc}")

    stores: dict[str, list[Path]] = {}
    all_dirs = list(dict.fromkeys([*map(Path, data_dirs), *(Path(c.data_dir) for c in configs if c.data_dir)]))
    for data_dir in all_dirs:
        for name in list_networks(data_dir):
            if wanted is None or name in wanted:
                stores.setdefault(name, []).append(data_dir)
    for name, dirs in stores.items():
        net = net_of(name)
        net.sources += [f"leases {d}" for d in dirs]
        net.data_dir = net.data_dir or str(dirs[0])

    host = _host_view(with_netns, problems)
    cache = _cni_cache(cache_dir) if cache_dir else {}
    now = time.time()
    for name, net in sorted(networks.items()):
        net.table_present = net.table in host.tables
        if net.table_present:
            net.masquerade = {str(a): owner for a, owner in firewall.members(name).items()}
        _link_summary(net, host)
        leases = []
        for data_dir in stores.get(name, []):
            leases += [(data_dir, lease) for lease in LeaseStore(data_dir, name).all_leases()]
        net.endpoints = _lease_endpoints(net, leases, host, cache, now, grace)
        if net.docker_id:
            net.endpoints += _docker_endpoints(net, [e for e in docker_eps if e.get("network") == net.docker_id], host)
        if net.bridge and net.bridge_present is False and any(e.state == ATTACHED for e in net.endpoints):
            net.problems.append(f"{net.bridge} does not exist but attachments do")
        if net.ip_masq and any(e.state == ATTACHED and e.source != "docker-ipam" and not e.masquerade
                               for e in net.endpoints if net.mode in (None, "bridge")):
            net.problems.append("ipMasq is on but some attached endpoints have no masquerade entry")
    known = {n.table for n in networks.values()}
    foreign = sorted(t for t in host.tables if t not in known) if wanted is None else []
    return Inventory(sorted(networks.values(), key=lambda n: n.name), foreign, host.netns, problems)
