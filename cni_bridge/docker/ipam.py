"""libnetwork remote IPAM driver (`--ipam-driver pybridge`) on the pybridge lease store.

Pools are driver state (state.py, kind "pools"); addresses are leases in the same file store the
CNI `pybridge-ipam` uses, one directory per pool (`--ipam-opt network=NAME` names it, so a CNI
network of that name shares the range without collisions; default `docker-<subnet>`). Docker's
RequestAddress does not say for whom, so every address gets a generated owner
`docker-<32 hex>` / ifname `docker`; ReleaseAddress frees by address. The gateway is leased too
(owner `docker-gw-<pool hash>`), so a CNI network sharing the range never hands it out.

Same request -> same PoolID (reference counted); overlapping pools are refused. We answer
RequiresRequestReplay false: pools and leases are persisted, dockerd need not replay them.
"""

from __future__ import annotations

import ipaddress
import socket
import uuid
from typing import Any, Iterable

from cni_bridge import validate
from cni_bridge.docker import network
from cni_bridge.docker.body import Body
from cni_bridge.docker.context import DEFAULT_PREFIX, Driver
from cni_bridge.errors import TRY_AGAIN, PluginError, config_error, shown
from cni_bridge.ipam.backend import Store, open_store
from cni_bridge.ipam.config import IpamConfig, parse_ipam_config
from cni_bridge.kernel import netlink
from cni_bridge.state import pool_key

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LOCAL_SPACE = "pybridge-local"
GLOBAL_SPACE = "pybridge-global"
GATEWAY_REQUEST = "com.docker.network.gateway"
OWNER_PREFIX = "docker-"
OWNER_IFNAME = "docker"
GATEWAY_IFNAME = "gateway"
POOL_OPTIONS = ("network", "dataDir")
LOCK = "ipam"


# --- capabilities ------------------------------------------------------------------------------
def get_capabilities(ctx: Driver, body: Body) -> dict[str, Any]:
    return {"RequiresMACAddress": False, "RequiresRequestReplay": False}


def get_default_address_spaces(ctx: Driver, body: Body) -> dict[str, Any]:
    return {"LocalDefaultAddressSpace": LOCAL_SPACE, "GlobalDefaultAddressSpace": GLOBAL_SPACE}


# --- pools -------------------------------------------------------------------------------------
def request_pool(ctx: Driver, body: Body) -> dict[str, Any]:
    space = body.string("AddressSpace") or LOCAL_SPACE
    pool = body.network("Pool")
    sub_pool = body.network("SubPool")
    v6 = body.boolean("V6")
    options = _pool_options(body)
    if pool is not None and pool.version != (6 if v6 else 4):
        raise config_error(f"RequestPool: pool {pool} is not an IPv{6 if v6 else 4} subnet")
    if sub_pool is not None:
        if pool is None:
            raise config_error("RequestPool: SubPool (--ip-range) needs Pool (--subnet)")
        if sub_pool.version != pool.version or not sub_pool.subnet_of(pool):  # type: ignore[arg-type]
            raise config_error(f"RequestPool: --ip-range {sub_pool} is not inside --subnet {pool}")
    if pool is not None and pool.prefixlen > (126 if v6 else 30):
        raise config_error(f"RequestPool: pool {pool} is too small to allocate from")
    with ctx.state.lock(LOCK):
        pools = ctx.state.all("pools")
        if pool is None:
            pool = _free_default_pool(ctx, 6 if v6 else 4, pools)
            default = True
        else:
            default = False
        pool_id = f"{space}/{pool}" + (f"/{sub_pool}" if sub_pool else "")
        record = ctx.state.get("pools", pool_key(pool_id))
        if record is not None:
            if record["options"] != options:
                raise config_error(f"RequestPool: pool {pool} is already in use with other options "
                                   f"({shown(record['options'])})")
            record["refs"] += 1
        else:
            for other in pools:
                if ipaddress.ip_network(other["pool"]).overlaps(pool) and other["space"] == space:  # type: ignore[arg-type]
                    raise config_error(f"RequestPool: {pool} overlaps pool {other['pool']} already in use")
            record = {"id": pool_id, "space": space, "pool": str(pool), "sub_pool": str(sub_pool or ""),
                      "v6": v6, "refs": 1, "default": default, "options": options,
                      "store": options.get("network") or _store_name(pool),
                      "data_dir": options.get("dataDir") or str(ctx.settings.ipam_data_dir),
                      "store_spec": None if options.get("dataDir") else ctx.settings.ipam_store,
                      "gateway": None, "gateway_refs": 0}
            pool_config(record)  # the lease store must accept this range: fail now, not at the first address
        ctx.state.put("pools", pool_key(pool_id), record)
    return {"PoolID": pool_id, "Pool": str(pool), "Data": {}}


def release_pool(ctx: Driver, body: Body) -> dict[str, Any]:
    pool_id = body.string("PoolID", required=True)
    with ctx.state.lock(LOCK):
        record = ctx.state.get("pools", pool_key(pool_id))
        if record is None:
            return {}  # released already: ReleasePool is retried by dockerd after errors
        record["refs"] -= 1
        if record["refs"] > 0:
            ctx.state.put("pools", pool_key(pool_id), record)
            return {}
        _release_leftovers(record)
        ctx.state.delete("pools", pool_key(pool_id))
    return {}


def _pool_options(body: Body) -> dict[str, str]:
    """`--ipam-opt network=NAME` (share the store of CNI network NAME), `--ipam-opt dataDir=/path`."""
    out: dict[str, str] = {}
    for key, value in body.mapping("Options").items():
        if key.startswith("com.docker."):
            continue  # Docker's own annotations
        if key not in POOL_OPTIONS:
            raise config_error(f"RequestPool: unknown --ipam-opt {shown(key, quote=False)}",
                               "supported: " + ", ".join(POOL_OPTIONS))
        if not isinstance(value, str):
            raise config_error(f"RequestPool: --ipam-opt {key} must be a string")
        out[key] = value
    if "network" in out:
        validate.network_name(out["network"])
    if "dataDir" in out and not out["dataDir"].startswith("/"):
        raise config_error(f"RequestPool: --ipam-opt dataDir must be an absolute path, got {shown(out['dataDir'])}")
    return out


def _store_name(pool: IPNetwork) -> str:
    """docker-10.213.3.0-24, docker-fd42-7062-7269-1---64: valid network (directory) names."""
    return OWNER_PREFIX + str(pool).replace("/", "-").replace(":", "-")


def host_networks(version: int) -> list[IPNetwork]:
    """Subnets in use on the host: main-table routes and the prefixes of every address.
    (Read-only netlink queries; the default pool must not shadow anything reachable.)"""
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    with netlink.root() as host:
        nets: list[IPNetwork] = [dst for dst, _, _ in host.routes(family) if dst.prefixlen > 0]
        for link in host.links():
            nets += [a.network for a in host.addresses(link.index) if a.version == version]
    return nets


def _free_default_pool(ctx: Driver, version: int, pools: Iterable[dict[str, Any]]) -> IPNetwork:
    base = ctx.settings.default_pool4 if version == 4 else ctx.settings.default_pool6
    taken = [n for n in host_networks(version) if not n.is_link_local]
    taken += [net for p in pools if (net := ipaddress.ip_network(p["pool"])).version == version]
    for candidate in base.subnets(new_prefix=DEFAULT_PREFIX[version]):
        if not any(candidate.overlaps(t) for t in taken):  # type: ignore[arg-type]
            return candidate
    raise PluginError(TRY_AGAIN, f"RequestPool: no free /{DEFAULT_PREFIX[version]} left in the default "
                      f"range {base}", "name a subnet with --subnet, or remove unused networks")


# --- addresses ---------------------------------------------------------------------------------
def request_address(ctx: Driver, body: Body) -> dict[str, Any]:
    record = _pool(ctx, body)
    address = body.address("Address")
    options = body.mapping("Options")
    pool = ipaddress.ip_network(record["pool"])
    if address is not None and address not in pool:
        raise config_error(f"RequestAddress: {address} is not in pool {pool}")
    if options.get("RequestAddressType") == GATEWAY_REQUEST:
        return {"Address": f"{_gateway(ctx, record, address)}/{pool.prefixlen}", "Data": {}}
    store = _store(record)
    owner = OWNER_PREFIX + uuid.uuid4().hex
    if address is not None:
        leases = store.allocate(owner, OWNER_IFNAME, pool_config(record, whole_pool=True), [address])
    else:
        leases = store.allocate(owner, OWNER_IFNAME, pool_config(record))
    return {"Address": f"{leases[0].address}/{pool.prefixlen}", "Data": {}}


def release_address(ctx: Driver, body: Body) -> dict[str, Any]:
    record = _pool(ctx, body)
    address = body.address("Address")
    if address is None:
        raise config_error("ReleaseAddress: Address is required")
    if record.get("gateway") == str(address):
        with ctx.state.lock(LOCK):
            record = ctx.state.get("pools", pool_key(record["id"])) or record
            if record.get("gateway") == str(address):
                record["gateway_refs"] = max(0, record["gateway_refs"] - 1)
                last = record["gateway_refs"] == 0
                if last:
                    record["gateway"] = None
                ctx.state.put("pools", pool_key(record["id"]), record)  # first: a failed write changes nothing
                if last:
                    _store(record).release_address(address)
                return {}
    network.remove_endpoints_holding(ctx, record["pool"], address)  # before the address can be reused
    _store(record).release_address(address)
    return {}


def _gateway(ctx: Driver, record: dict[str, Any], address: IPAddress | None) -> IPAddress:
    """The pool's gateway: the asked-for address, else the first host address (else any free one).
    Networks sharing one pool share its gateway (counted, like the pool)."""
    with ctx.state.lock(LOCK):
        record = ctx.state.get("pools", pool_key(record["id"])) or record
        current = ipaddress.ip_address(record["gateway"]) if record.get("gateway") else None
        if current is not None:
            if address is not None and address != current:
                raise config_error(f"RequestAddress: pool {record['pool']} already has gateway {current}, "
                                   f"cannot use {address}")
            chosen = current
        else:
            chosen = _lease_gateway(record, address)
        record["gateway"] = str(chosen)
        record["gateway_refs"] = record.get("gateway_refs", 0) + 1
        try:
            ctx.state.put("pools", pool_key(record["id"]), record)
        except BaseException:
            if current is None:  # the lease just taken would be held by nobody
                _store(record).release_address(chosen)
            raise
    return chosen


def _lease_gateway(record: dict[str, Any], address: IPAddress | None) -> IPAddress:
    pool = ipaddress.ip_network(record["pool"])
    store = _store(record)
    owner = f"{OWNER_PREFIX}gw-{pool_key(record['id'])[:16]}"
    wanted = address if address is not None else pool.network_address + 1
    try:
        leases = store.allocate(owner, GATEWAY_IFNAME, pool_config(record, whole_pool=True, gateway=wanted),
                                [wanted], allow_gateway=True)
    except PluginError:
        if address is not None:
            raise
        leases = store.allocate(owner, GATEWAY_IFNAME, pool_config(record))  # .1 is taken: any free one
    return leases[0].address


def _pool(ctx: Driver, body: Body) -> dict[str, Any]:
    pool_id = body.string("PoolID", required=True)
    record = ctx.state.get("pools", pool_key(pool_id))
    if record is None:
        raise config_error(f"{body.method}: unknown pool {shown(pool_id)} (not requested from this driver, "
                           "or already released)")
    return record


def _store_object(record: dict[str, Any]) -> dict[str, Any]:
    """The pool's `store` (etcd when the driver serves with --ipam-store etcd), else its dataDir."""
    return record.get("store_spec") or {"type": "file", "dataDir": record["data_dir"]}


def _store(record: dict[str, Any]) -> Store:
    return open_store(pool_config(record).store, record["store"])


def pool_config(record: dict[str, Any], *, whole_pool: bool = False, gateway: IPAddress | None = None) -> IpamConfig:
    """The store's view of a pool: dynamic picks stay in --ip-range, static ones may use the
    whole --subnet (as Docker's own IPAM allows)."""
    pool = ipaddress.ip_network(record["pool"])
    rng: dict[str, Any] = {"subnet": str(pool)}
    sub = record.get("sub_pool")
    if sub and not whole_pool:
        sub_net = ipaddress.ip_network(sub)
        first, last = sub_net.network_address, sub_net.broadcast_address
        if first == pool.network_address:
            first += 1
        if pool.version == 4 and last == pool.broadcast_address:
            last -= 1
        rng.update(rangeStart=str(first), rangeEnd=str(last))
    gw = gateway or (ipaddress.ip_address(record["gateway"]) if record.get("gateway") else None)
    if gw is not None:
        rng["gateway"] = str(gw)
    return parse_ipam_config({"ranges": [[rng]], "store": _store_object(record)})


def _release_leftovers(record: dict[str, Any]) -> None:
    """Last ReleasePool: free the Docker-owned leases dockerd did not release (it crashed, or
    this is a forced removal; or the driver died inside RequestAddress, after the lease was
    written but before dockerd learnt the address) and remove a default-named store that is
    empty now. The store's GC also drops owner files that point at no lease (a RequestAddress
    killed between writing its owner file and its lease)."""
    store = _store(record)
    pool = ipaddress.ip_network(record["pool"])
    # One decision under the store's lock: in a store shared with a CNI network (--ipam-opt
    # network=NAME), a CNI lease written meanwhile must not be mistaken for a leftover.
    store.gc(set(), keep=lambda lease: not (lease.address in pool and lease.container_id.startswith(OWNER_PREFIX)))
    if record["store"] == _store_name(pool):
        store.remove_if_empty()  # decided under the store's lock: a lease written meanwhile keeps it


def dhcp_source(ctx: Driver, pool: str):
    """Where a `dhcp=true` network's DHCP server leases its own address: the pybridge pool of
    that subnet (dynamic range), or None when the pool is not this driver's."""
    from cni_bridge import dhcp  # lazy: only dhcp networks
    record = next((r for r in ctx.state.all("pools") if r.get("pool") == pool), None)
    return None if record is None else dhcp.for_docker(record, pool_config(record))


HANDLERS = {
    "IpamDriver.GetCapabilities": get_capabilities,
    "IpamDriver.GetDefaultAddressSpaces": get_default_address_spaces,
    "IpamDriver.RequestPool": request_pool,
    "IpamDriver.ReleasePool": release_pool,
    "IpamDriver.RequestAddress": request_address,
    "IpamDriver.ReleaseAddress": release_address,
}
