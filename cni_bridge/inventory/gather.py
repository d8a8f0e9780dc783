"""The gather step: read what pybridge has on this host into `Facts`. Reads only, judges nothing.

Sources, each optional:
- CNI configs (`/etc/cni/net.d`): which networks use `pybridge` / `pybridge-ipam`, their mode,
  bridge or master, ipMasq and IPAM dataDir;
- the IPAM lease stores (default `/var/lib/cni/pybridge`, plus every dataDir a config names):
  who holds which address since when -- every store, whatever networks were asked for, since
  each lease claims its owner's host veth (`gc` must see every claim on a shared bridge);
- the Docker driver's state (`/var/lib/cni-bridge/docker`): networks and endpoints;
- the VM port records (`/var/lib/cni-bridge/vm`, `cni-bridge vm`): tap, network, addresses;
- libcni's cache (`/var/lib/cni/results`): the netns path a runtime attached an interface in;
- then the kernel: links (bridges, host veths and their peers), bridge addresses, the
  `pybridge_*` nftables tables with their owner-tagged set elements, and the container side of
  each endpoint of the networks asked for.

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
from pathlib import Path
from typing import Any, Iterable, Iterator

from cni_bridge import firewall
from cni_bridge.attachment import Attachment
from cni_bridge.errors import PluginError
from cni_bridge.inventory.model import (
    DOCKER_ENDPOINT_IFNAME,
    DOCKER_OWNER_PREFIX,
    Container,
    Facts,
    HostLink,
    NetworkConfig,
    Sources,
    wanted_name,
)
from cni_bridge.ipam.backend import host_leases, list_networks, location, spec_at
from cni_bridge.ipam.config import store_of
from cni_bridge.ipam.lease import DHCP_OWNER_PREFIX
from cni_bridge.kernel import netlink
from cni_bridge.kernel.nft import nft
from cni_bridge.modes import vxlan as vxlan_port
from cni_bridge.overlay.reconcile import current, peers_of
from cni_bridge.state import KINDS, StateStore
from cni_bridge.vm import names as vm_names

NETNS_DIRS = ("/run/netns", "/var/run/netns", "/run/docker/netns", "/var/run/docker/netns")
LINK_MODES = ("macvlan", "ipvlan", "vlan", "macvtap")
CONFIG_SUFFIXES = (".conflist", ".conf", ".json")

Probe = tuple[str | None, str | None, str]   # (host veth name, cached netns path, ifname)


def gather(sources: Sources, wanted: set[str] | None, *, with_netns: bool = True) -> Facts:
    """Files first, then the kernel (see Facts)."""
    facts = gather_files(sources)
    gather_host(facts, wanted, with_netns=with_netns)
    return facts


def gather_files(sources: Sources) -> Facts:
    """Configs, Docker driver state, every lease store, libcni's cache: all of them, unfiltered."""
    facts = Facts(sources, time.time())
    facts.configs = read_configs(sources.conf_dirs, facts.config_errors)
    if sources.state_dir:
        _read_docker_state(facts, sources.state_dir)
    if sources.port_dir:
        _read_vm_ports(facts, sources.port_dir)
    data_dirs = dict.fromkeys([*map(str, sources.data_dirs), *(c.data_dir for c in facts.configs if c.data_dir)])
    facts.stores = read_stores(data_dirs, facts.store_errors)
    facts.cache = read_cni_cache(sources.cache_dir) if sources.cache_dir else {}
    facts.problems += [*facts.config_errors, *(f"Docker driver state: {line}" for line in facts.docker_errors),
                       *(f"VM port records: {line}" for line in facts.vm_errors),
                       *facts.store_errors]
    return facts


def gather_host(facts: Facts, wanted: set[str] | None, *, with_netns: bool = True) -> None:
    """The kernel's side: links, tables, and for the networks asked for their masquerade
    members and the container side of their endpoints."""
    read_links(facts, with_netns)
    read_tables(facts, wanted)
    for probe in probes(facts, wanted):
        facts.containers[probe] = find_container(facts, *probe)
        if probe[1]:
            facts.netns_present[probe[1]] = os.path.exists(probe[1])


def read_links(facts: Facts, with_netns: bool) -> None:
    """Host links, namespace ids, and the addresses of bridges (and of link modes' masters)."""
    named = {c.bridge for c in facts.configs}
    with netlink.root() as host:
        details = host.all_link_details()
        facts.netns = netns_map(host) if with_netns else {}
        facts.links = {d.link.name: _host_link(d) for d in details}
        facts.addresses = {d.link.name: _addresses(host, d.link.index) for d in details
                           if d.link.kind == "bridge" or d.link.name in named}
        facts.vxlan = read_vxlan_ports(host)


def read_vxlan_ports(host: netlink.Netlink) -> dict[str, dict[str, Any]]:
    """Bridge name -> its pybridge vxlan port (`vx-<vni>`) with the peers and remote endpoints
    the kernel's FDB and neighbour table hold (programmed ones; learned ones with `group`)."""
    bridges = {link.index: link.name for link in host.links() if link.kind == "bridge"}
    out: dict[str, dict[str, Any]] = {}
    for vx in host.all_vxlan_details():
        if vx.link.master not in bridges or vx.link.name != vxlan_port.device_name(vx.vni or 0):
            continue
        peers, endpoints = peers_of(current(host, vx.link.index))
        out[bridges[vx.link.master]] = {"device": vx.link.name, "vni": vx.vni, "local": vx.local, "port": vx.port,
                                        "group": vx.group, "up": vx.link.up, "peers": peers, "endpoints": endpoints}
    return out


def _addresses(host: netlink.Netlink, index: int) -> list[str]:
    return [str(a) for a in host.addresses(index) if not (a.version == 6 and a.ip.is_link_local)]


def read_tables(facts: Facts, wanted: set[str] | None) -> None:
    facts.tables = set(firewall.pybridge_tables())
    if not nft.available():
        facts.problems.append("nftables is not available: masquerade state unknown")
    for name in network_names(facts, wanted):
        facts.table_names[name] = firewall.table_name(name)
        if facts.table_names[name] in facts.tables:
            facts.members[name] = {str(a): owner for a, owner in firewall.members(name).items()}


def network_names(facts: Facts, wanted: set[str] | None) -> list[str]:
    names = [c.name for c in facts.configs] + [str(r["id"]) for r in facts.docker_networks] \
        + [str(r["network"]) for r in facts.vm_ports.values()]
    return [n for n in dict.fromkeys(names + list(facts.stores)) if n and wanted_name(n, wanted)]


def probes(facts: Facts, wanted: set[str] | None) -> list[Probe]:
    """Which container sides to look at: those of the endpoints of the networks asked for."""
    out: list[Probe] = []
    for name, stores in facts.stores.items():
        if wanted_name(name, wanted):
            for owner in dict.fromkeys(lease.owner for leases in stores.values() for lease in leases):
                if not owner[0].startswith((DOCKER_OWNER_PREFIX, DHCP_OWNER_PREFIX)) and vm_names.tap_of_owner(*owner) is None:
                    out.append((Attachment(*owner, None).host_ifname, facts.cache.get((name, *owner)), owner[1]))
    out += [(rec["host_ifname"], None, DOCKER_ENDPOINT_IFNAME) for rec in facts.docker_endpoints
            if wanted_name(rec["network"], wanted)]
    return list(dict.fromkeys(out))


# --- files -----------------------------------------------------------------------------------
def plugins_of(document: Any) -> list[dict[str, Any]]:
    if not isinstance(document, dict):
        return []
    if isinstance(document.get("plugins"), list):
        return [{**p, "name": document.get("name")} for p in document["plugins"] if isinstance(p, dict)]
    return [document]


def config_files(conf_dirs: Iterable[Path]) -> Iterator[Path]:
    for conf_dir in conf_dirs:
        with contextlib.suppress(OSError):
            for fname in sorted(os.listdir(conf_dir)):
                if fname.endswith(CONFIG_SUFFIXES):
                    yield Path(conf_dir) / fname


def read_configs(conf_dirs: Iterable[Path], problems: list[str]) -> list[NetworkConfig]:
    """Networks whose config uses pybridge as main plugin or pybridge-ipam as IPAM."""
    found = []
    for path in config_files(conf_dirs):
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"cannot read CNI config {path}: {exc}")
            continue
        found += [cfg for plugin in plugins_of(document) if (cfg := _network_config(path, plugin))]
    return found


def _network_config(path: Path, plugin: dict[str, Any]) -> NetworkConfig | None:
    ipam = plugin.get("ipam") if isinstance(plugin.get("ipam"), dict) else {}
    ours_ipam = ipam.get("type") == "pybridge-ipam"
    name = plugin.get("name")
    if (plugin.get("type") != "pybridge" and not ours_ipam) or not isinstance(name, str):
        return None
    mode = plugin.get("mode", "bridge") if plugin.get("type") == "pybridge" else None
    link = plugin.get("master") if mode in LINK_MODES else plugin.get("bridge", "cni0")
    try:  # the file store's directory, or the etcd store's location string (ipam.backend.location)
        data_dir = location(store_of(ipam)) if ours_ipam else None
    except PluginError:  # a store that does not parse: ADD fails on it too; no leases to judge
        data_dir = None
    return NetworkConfig(name, str(path), str(plugin.get("type")), mode, link if isinstance(link, str) else None,
                         str(plugin.get("ipMasq", False)).lower() == "true", data_dir)


def _read_docker_state(facts: Facts, state_dir: Path) -> None:
    """Usable records, and the files that are not (reported; they make claims incomplete)."""
    if not (state_dir / "networks").is_dir():
        return
    store = StateStore(state_dir)
    try:
        scans = {kind: store.scan(kind) for kind in KINDS}
    except PluginError as exc:
        facts.docker_errors.append(str(exc))
        return
    facts.docker_networks, facts.docker_endpoints = scans["networks"][0], scans["endpoints"][0]
    facts.docker_errors += [f"unusable file {line} (skipped)" for _, bad in scans.values() for line in bad]


def _read_vm_ports(facts: Facts, port_dir: Path) -> None:
    try:
        records, bad = StateStore(port_dir).scan(vm_names.KIND)
    except PluginError as exc:
        facts.vm_errors.append(str(exc))
        return
    facts.vm_ports = {r["tap"]: r for r in records}
    facts.vm_errors += [f"unusable file {line} (skipped)" for line in bad]


def read_stores(data_dirs: Iterable[Path | str], errors: list[str]) -> dict[str, dict[str, list[Any]]]:
    """network -> store location -> leases, for every store under every data dir (an etcd
    store: this host's leases only); a store that cannot be read is an entry in `errors`."""
    out: dict[str, dict[str, list[Any]]] = {}
    for data_dir in data_dirs:
        try:
            spec = spec_at(data_dir)
            names = list_networks(spec)
        except PluginError as exc:
            errors.append(f"lease store {data_dir}: {exc}")
            continue
        for name in names:
            try:
                out.setdefault(name, {})[str(data_dir)] = host_leases(spec, name)
            except PluginError as exc:
                errors.append(f"lease store {data_dir}/{name}: {exc}")
    return out


def read_cni_cache(cache_dir: Path) -> dict[tuple[str, str, str], str]:
    """(network, container id, ifname) -> netns path, from libcni's result cache."""
    out: dict[tuple[str, str, str], str] = {}
    results = cache_dir / "results"
    with contextlib.suppress(OSError):
        for name in os.listdir(results):
            entry = _read_json(results / name)
            netns = _cached_netns(entry) if isinstance(entry, dict) else ""
            if netns:
                out[(str(entry.get("networkName")), str(entry.get("containerId")), str(entry.get("ifName")))] = netns
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _cached_netns(entry: dict[str, Any]) -> str:
    if entry.get("netns"):
        return str(entry["netns"])
    for iface in (entry.get("result") or {}).get("interfaces") or []:
        if isinstance(iface, dict) and iface.get("sandbox") and iface.get("name") == entry.get("ifName"):
            return str(iface["sandbox"])
    return ""


# --- kernel ----------------------------------------------------------------------------------
def _host_link(details: Any) -> HostLink:
    link = details.link
    peer = details.parent if link.kind == "veth" else None
    return HostLink(link.name, link.index, link.kind, link.mac, link.up, link.master, peer,
                    details.parent_netnsid if peer is not None else None)


def _namespace_files(extra_dirs: Iterable[str] = ()) -> Iterator[str]:
    for directory in (*NETNS_DIRS, *extra_dirs):
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(directory)):
                yield os.path.join(directory, name)
    with contextlib.suppress(OSError):
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                yield f"/proc/{pid}/ns/net"


def netns_map(host: Any, extra_dirs: Iterable[str] = ()) -> dict[int, str]:
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


def container_side(netns_path: str, *, index: int | None = None, name: str | None = None) -> Container:
    """Look at one interface inside a namespace (by index for veth peers, else by name)."""
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


def find_container(facts: Facts, host_ifname: str | None, cached_netns: str | None, ifname: str) -> Container | None:
    """The container side through the host veth's peer, else through libcni's cached netns."""
    link = facts.links.get(host_ifname) if host_ifname else None
    if link is not None and link.peer is not None and link.peer_netnsid is None:
        return _host_side_peer(facts, link.peer)  # Docker's endpoint before Join
    path = facts.netns.get(link.peer_netnsid) if link is not None and link.peer_netnsid is not None else None
    if path is not None:
        return container_side(path, index=link.peer)
    return container_side(cached_netns, name=ifname) if cached_netns else None


def _host_side_peer(facts: Facts, index: int) -> Container:
    peer = next((p for p in facts.links.values() if p.index == index), None)
    return Container("(host)", peer.name if peer else None, peer.mac if peer else None, [], peer is not None)
