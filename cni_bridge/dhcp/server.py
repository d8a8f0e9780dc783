"""The DHCP server of a `dhcp: true` network: entries in, a running dnsmasq out.

    add_host(info, key, mac, address, source)   an attachment (container, Docker endpoint, VM
                                                port) joins: its MAC gets its IPAM address
    remove_host(network, key)                   it leaves; the last one stops the server
    stop(network)                               the network goes (Docker DeleteNetwork, gc)
    restore()                                   start-up of the driver: servers with entries
                                                whose process is gone are started again

The server is a dnsmasq in the namespace `pbdhcp-<network>`, on the network's bridge through a
veth (host end `pbd<11 hex>`, `dhcp0` inside). Its own address is a lease of the network's
lease store (owner `pbdhcp-<hash>`/`dhcp`, or `docker-dhcp-<hash>`/`docker` in a Docker pool):
taken like any container's, so the IPAM never hands it to someone else, and released with the
server. Every change rewrites the hosts and options files and sends SIGHUP; only a server that
is not running (first member, a reboot, a killed process) is started.

Every step holds the network's DHCP lock, so attachments joining and leaving in parallel agree
on the entries and on who starts or stops the process.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cni_bridge import locks
from cni_bridge.crashpoint import step
from cni_bridge.dhcp import dnsmasq
from cni_bridge.dhcp.files import (
    INNER_IFNAME,
    NETNS_PREFIX,
    VETH_PREFIX,
    NetworkInfo,
    ServerAddress,
    digest,
    lease_owner,
    netns_name,
    network_dir,
    read_entries,
    read_info,
    render_hosts,
    render_opts,
    root,
    veth_name,
    write_entries,
    write_file,
)
from cni_bridge.errors import INTERNAL, PluginError, config_error
from cni_bridge.ipam.backend import open_store, spec_at
from cni_bridge.ipam.config import IpamConfig
from cni_bridge.kernel import netlink
from cni_bridge.kernel import netns as kernel_netns


@dataclass(frozen=True)
class AddressSource:
    """Where the server's own address is leased: a pybridge lease store (its location: the data
    directory, or an etcd store's, ipam/backend.py) and its ranges."""
    data_dir: str
    store: str
    config: IpamConfig
    docker: bool = False


def _lock(network: str):
    return locks.flocked(locks.lock_path(f"dhcp.{digest(network)[:32]}.lock"), locks.NETWORK_LOCK_TIMEOUT)


# --- the API for the attachment code (CNI ADD/DEL, Docker endpoints, VM ports) ------------------
def add_host(info: NetworkInfo, key: str, mac: str, address: ipaddress.IPv4Address,
             source: AddressSource) -> bool:
    """`key` (the host veth or tap name) now answers to `mac` with `address`; starts the server
    if it is not running (then returns True). Idempotent."""
    directory = network_dir(info.network)
    with _lock(info.network):
        directory.mkdir(parents=True, exist_ok=True, mode=0o755)
        old = read_info(directory)
        server = old.server if old is not None else None
        if server is None or not server.address or \
                ipaddress.ip_interface(server.address).network != ipaddress.ip_network(info.subnet):
            server = _lease_server_address(info, source, directory)
        info = dataclasses.replace(info, server=server)
        write_file(directory / "network.json", info.to_json())
        step("dhcp-network-recorded")
        entries = read_entries(directory)
        entries[key] = {"mac": mac.lower(), "address": str(address)}
        _publish(directory, info, entries)
        step("dhcp-host-added")
        return _ensure_running(info, directory)


def remove_host(network: str, key: str) -> None:
    """`key` is gone; the last entry takes the server with it. Idempotent."""
    directory = network_dir(network)
    with _lock(network):
        entries = read_entries(directory)
        if key not in entries and entries:
            return
        entries.pop(key, None)
        info = read_info(directory)
        if not entries or info is None:  # also what a failed first add_host left
            if directory.exists() or os.path.exists(kernel_netns.named_path(netns_name(network))):
                _stop(network, directory)
            return
        _publish(directory, info, entries)
        step("dhcp-host-removed")
        for pid in dnsmasq.pids(directory):
            dnsmasq.reload(pid)


def stop(network: str) -> None:
    """The network goes: server, namespace, veth, files and the server's lease."""
    with _lock(network):
        _stop(network, network_dir(network))


def hosts(network: str) -> dict[str, dict[str, str]]:
    """The entries: key -> {"mac", "address"}."""
    return read_entries(network_dir(network))


def check_host(network: str, key: str) -> None:
    """CHECK: the entry exists and the server runs (error 999 naming what is missing)."""
    directory = network_dir(network)
    if key not in read_entries(directory):
        raise PluginError(INTERNAL, f"dhcp: the DHCP server of network {network[:64]} has no entry for {key}")
    if not dnsmasq.pids(directory):
        raise PluginError(INTERNAL, f"dhcp: the DHCP server of network {network[:64]} is not running",
                          "`cni-bridge serve` or the next ADD starts it again")


def restore() -> list[str]:
    """At start-up of the driver: every network with entries gets its server back (after a
    killed dnsmasq, a deleted namespace or a re-created bridge). One line per server started."""
    done = []
    if not root().is_dir():
        return done
    for directory in sorted(root().iterdir()):
        info = read_info(directory)
        if info is None or not read_entries(directory):
            continue
        try:
            with _lock(info.network):
                if _ensure_running(info, directory):
                    done.append(f"started the DHCP server of network {info.network[:12]}")
        except Exception as exc:  # noqa: BLE001 - one network must not stop the others
            done.append(f"could not start the DHCP server of network {info.network[:12]}: {exc}")
    return done


# --- status and gc ----------------------------------------------------------------------------
def servers() -> list[dict[str, Any]]:
    """What `cni-bridge status` shows: one dict per directory or stray process/namespace/veth."""
    out = []
    seen_ns, seen_veth = set(), set()
    by_dir = {directory: pid for pid, directory in dnsmasq.all_servers().items()}
    for directory in sorted(root().iterdir()) if root().is_dir() else []:
        info = read_info(directory)
        entries = read_entries(directory)
        name = info.network if info is not None else directory.name
        ns, veth = netns_name(name), veth_name(name)
        seen_ns.add(ns)
        seen_veth.add(veth)
        out.append({"network": name, "netns": ns, "veth": veth, "directory": str(directory),
                    "pid": by_dir.pop(str(directory), None), "entries": len(entries),
                    "address": info.server.address if info is not None and info.server else None,
                    "netns_present": os.path.exists(kernel_netns.named_path(ns)),
                    "veth_master": _master(veth)})
    for directory, pid in by_dir.items():
        out.append({"network": None, "directory": directory, "pid": pid, "entries": 0,
                    "netns": None, "veth": None, "address": None})
    for ns in _named_namespaces():
        if ns not in seen_ns:
            out.append({"network": None, "netns": ns, "directory": None, "pid": None, "entries": 0,
                        "veth": None, "address": None})
    with netlink.root() as host:
        for link in host.links():
            if _is_server_veth(link.name) and link.name not in seen_veth:
                out.append({"network": None, "veth": link.name, "netns": None, "directory": None,
                            "pid": None, "entries": 0, "address": None})
    return out


def orphans() -> list[dict[str, Any]]:
    """Servers gc may remove: no entries left, or every entry's port (host veth or tap) gone."""
    found = []
    with netlink.root() as host:
        present = {link.name for link in host.links()}
    for server in servers():
        if server["network"] is None:
            found.append(server)
            continue
        entries = hosts(server["network"])
        if not any(key in present for key in entries):
            found.append(server)
    return found


def reclaim(server: dict[str, Any]) -> None:
    """Remove one orphan (re-checked under the network's lock when the network is known)."""
    if server["network"] is not None:
        with _lock(server["network"]):
            with netlink.root() as host:
                present = {link.name for link in host.links()}
            directory = network_dir(server["network"])
            if any(key in present for key in read_entries(directory)):
                return
            _stop(server["network"], directory)
        return
    if server.get("directory"):
        dnsmasq.stop(Path(server["directory"]))
    if server.get("netns"):
        kernel_netns.delete_named(server["netns"])
    if server.get("veth"):
        with netlink.root() as host:
            host.delete_link(server["veth"])


def release_stale_address(network: str, data_dir: str, owner: tuple[str, str]) -> bool:
    """gc: free the server address a CNI store still holds for a server that is gone (a
    reboot took it and no attachment came back). Re-checked under the network's lock: a server
    being started keeps it. True if released."""
    with _lock(network):
        if read_info(network_dir(network)) is not None:
            return False
        with netlink.root() as host:
            if host.link(veth_name(network)) is not None:
                return False
        return bool(open_store(spec_at(data_dir), network).release(*owner))


# --- internals --------------------------------------------------------------------------------
def _lease_server_address(info: NetworkInfo, source: AddressSource, directory: Path) -> ServerAddress:
    """Lease the server's address; the record naming the store and owner is written first, so
    that stop() (a DEL after a crash in the middle) finds what to release."""
    owner = lease_owner(info.network, source.docker)
    pending = ServerAddress("", str(source.data_dir), source.store, owner)
    write_file(directory / "network.json", dataclasses.replace(info, server=pending).to_json())
    store = open_store(spec_at(source.data_dir), source.store)
    subnet = ipaddress.ip_network(info.subnet)
    leases = store.allocate(*owner, source.config)
    step("dhcp-server-address")
    mine = next((lease for lease in leases if lease.address in subnet), None)
    if mine is None:
        store.release(*owner)
        raise config_error(f"dhcp: the IPAM of network {info.network[:64]} has no range in {subnet} "
                           "for the DHCP server's address")
    return ServerAddress(f"{mine.address}/{subnet.prefixlen}", str(source.data_dir), source.store, owner)


def _publish(directory: Path, info: NetworkInfo, entries: dict[str, dict[str, str]]) -> None:
    """Entries, hosts file and options file (the order a crash leaves consistent: the record
    first, the rendered files from it)."""
    write_entries(directory, entries)
    write_file(directory / "hosts", render_hosts(entries).encode())
    write_file(directory / "opts", render_opts(info).encode())


def _ensure_running(info: NetworkInfo, directory: Path) -> bool:
    """SIGHUP a healthy server; (re)build and start one that is not. True if started."""
    ns, veth = netns_name(info.network), veth_name(info.network)
    running = dnsmasq.pids(directory)
    assert info.server is not None and info.server.address, "the server's address is leased first"
    with netlink.root() as host:
        bridge = host.link(info.bridge)
        if bridge is None:
            raise PluginError(INTERNAL, f"dhcp: bridge {info.bridge} of network {info.network[:64]} is missing")
        port = host.link(veth)
        if running and port is not None and os.path.exists(kernel_netns.named_path(ns)):
            if port.master != bridge.index:  # the bridge was re-created (reboot, operator)
                host.set_link(port.index, master=bridge.index)
            for pid in running:
                dnsmasq.reload(pid)
            return False
        dnsmasq.stop(directory)
        host.delete_link(veth)
        kernel_netns.delete_named(ns)
        kernel_netns.create_named(ns)
        step("dhcp-netns")
        with netlink.netns(kernel_netns.named_path(ns)) as inside:
            host.create_veth_into(veth, INNER_IFNAME, inside, mtu=info.mtu, master=bridge.index)
            step("dhcp-veth")
            inner = inside.link(INNER_IFNAME)
            assert inner is not None
            inside.add_address(inner.index, ipaddress.ip_interface(info.server.address))
            inside.set_up(inner.index)
            lo = inside.link("lo")
            if lo is not None:
                inside.set_up(lo.index)
    dnsmasq.start(ns, directory, info.subnet)
    step("dnsmasq-started")
    return True


def _stop(network: str, directory: Path) -> None:
    info = read_info(directory)
    dnsmasq.stop(directory)
    step("dnsmasq-stopped")
    kernel_netns.delete_named(netns_name(network))
    with netlink.root() as host:
        host.delete_link(veth_name(network))
    step("dhcp-netns-deleted")
    if info is not None and info.server is not None:
        open_store(spec_at(info.server.data_dir), info.server.store).release(*info.server.owner)
        step("dhcp-server-address-released")
    shutil.rmtree(directory, ignore_errors=True)


def _master(name: str) -> str | None:
    with netlink.root() as host:
        link = host.link(name)
        if link is None or link.master is None:
            return None
        master = host.link_by_index(link.master)
        return master.name if master is not None else None


def _named_namespaces() -> list[str]:
    try:
        return sorted(n for n in os.listdir(kernel_netns.NAMED_DIR) if n.startswith(NETNS_PREFIX))
    except OSError:
        return []


def _is_server_veth(name: str) -> bool:
    rest = name[len(VETH_PREFIX):]
    return name.startswith(VETH_PREFIX) and len(rest) == 11 and all(c in "0123456789abcdef" for c in rest)
