"""The one place that turns a store spec (the `store` key of the ipam config) into a lease store.

Both stores have the same methods (leases_of, all_leases, allocate, release, release_address, gc,
remove_if_empty, check_writable) and the same `network` and `dir` attributes, described by the
`Store` protocol. The etcd store is imported only when a config asks for it, so exec'd plugins on
file stores never load the etcd client.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Protocol, Sequence

from cni_bridge.ipam.config import IPAddress, IpamConfig, StoreSpec, parse_store
from cni_bridge.ipam.lease import Lease


class Store(Protocol):
    network: str

    def leases_of(self, container_id: str, ifname: str) -> list[Lease]: ...
    def all_leases(self) -> list[Lease]: ...
    def allocate(self, container_id: str, ifname: str, config: IpamConfig,
                 requested: Sequence[IPAddress] = (), *, allow_gateway: bool = False) -> list[Lease]: ...
    def release(self, container_id: str, ifname: str) -> list[Lease]: ...
    def release_address(self, address: IPAddress) -> Lease | None: ...
    def gc(self, valid: set[tuple[str, str]], *,
           keep: Callable[[Lease], bool] | None = None) -> list[Lease]: ...
    def remove_if_empty(self) -> bool: ...
    def check_writable(self) -> None: ...


def open_store(spec: StoreSpec, network: str) -> Store:
    if spec.type == "etcd":
        from cni_bridge.ipam.etcdstore import EtcdLeaseStore  # lazy: see the module docstring
        return EtcdLeaseStore(spec, network)
    from cni_bridge.ipam.store import LeaseStore  # lazy: as above, the other way round
    return LeaseStore(spec.data_dir, network)


def list_networks(spec: StoreSpec) -> list[str]:
    """Networks with a store: directories under dataDir, or networks with a lease in etcd."""
    if spec.type == "etcd":
        from cni_bridge.ipam import etcdstore  # lazy
        return etcdstore.list_networks(spec)
    from cni_bridge.ipam import store  # lazy
    return store.list_networks(spec.data_dir)


ETCD_LOCATION = "etcd:"


def location(spec: StoreSpec) -> str:
    """One string that names a store and reopens it (spec_at): the inventory keeps it where it
    kept the data directory, which stays the plain path for file stores."""
    if spec.type == "file":
        return str(spec.data_dir)
    return ETCD_LOCATION + json.dumps(spec.to_dict(), sort_keys=True)


def spec_at(where: str | Path) -> StoreSpec:
    text = str(where)
    if text.startswith(ETCD_LOCATION):
        return parse_store(json.loads(text[len(ETCD_LOCATION):]))
    return StoreSpec(data_dir=Path(text))


def host_leases(spec: StoreSpec, network: str) -> list[Lease]:
    """The leases this host is responsible for (gc and status judge only those): every lease of a
    file store, this host's of an etcd store."""
    leases = open_store(spec, network).all_leases()
    if spec.type != "etcd":
        return leases
    host = spec.host_id()
    return [lease for lease in leases if lease.host == host]
