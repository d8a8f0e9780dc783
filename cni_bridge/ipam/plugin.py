"""The CNI IPAM plugin `pybridge-ipam`: config dict + CNI parameters in, CNI 1.x IPAM result out.

The main plugin calls these functions in-process; the `pybridge-ipam` executable (for the Go
`bridge` or any other main plugin) reaches them through the CNI front end, which owns env/stdin
parsing, error objects and result version conversion. Nothing here prints or exits.
"""

from __future__ import annotations

from typing import Any, Mapping

from cni_bridge import validate
from cni_bridge.errors import UNKNOWN_CONTAINER, PluginError, config_error, env_error
from cni_bridge.ipam.backend import Store, open_store
from cni_bridge.ipam.config import IPAddress, IpamConfig, StoreSpec, parse_ipam_config, store_of
from cni_bridge.ipam.lease import Lease

VALID_ATTACHMENTS = "cni.dev/valid-attachments"


def _section(config: Mapping[str, Any], *keys: str) -> Any:
    """config[k1][k2]... or None when any level is absent or not an object."""
    value: Any = config
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def store_spec(config: Mapping[str, Any]) -> StoreSpec:
    """Where this network's leases live, without requiring the ranges to parse (DEL, GC)."""
    return store_of(_section(config, "ipam"))


def store(network: str, config: Mapping[str, Any]) -> Store:
    """The lease store of a network config (DEL, GC: even if the ranges no longer parse)."""
    return open_store(store_spec(config), network)


def ipam_config(config: Mapping[str, Any]) -> IpamConfig:
    """The `ipam` section with the `ipRanges` capability prepended, as host-local does."""
    ipam = _section(config, "ipam")
    if not isinstance(ipam, Mapping):
        raise config_error("network config has no 'ipam' object")
    runtime_ranges = _section(config, "runtimeConfig", "ipRanges")
    if runtime_ranges:
        if not isinstance(runtime_ranges, list):
            raise config_error("runtimeConfig.ipRanges must be a list of range sets")
        ipam = {**ipam, "ranges": runtime_ranges + list(ipam.get("ranges") or [])}
    return parse_ipam_config(ipam)


def _parse_ips(values: Any, source: str, make_error) -> list[IPAddress]:
    if not isinstance(values, list):
        raise make_error(f"{source} must be a list of IP addresses")
    found = []
    for value in values:  # "10.1.0.5/24" is accepted, its prefix length ignored (as host-local)
        text = value.split("/", 1)[0] if isinstance(value, str) else value
        found.append(validate.ip_address(text, source, make_error))
    return found


def requested_ips(cni_args: Mapping[str, str], config: Mapping[str, Any]) -> list[IPAddress]:
    """Static addresses from CNI_ARGS `IP=a,b`, `args.cni.ips` and the `ips` capability."""
    found: list[IPAddress] = []
    if cni_args.get("IP"):
        found += _parse_ips(cni_args["IP"].split(","), "CNI_ARGS IP", env_error)
    for keys in (("args", "cni", "ips"), ("runtimeConfig", "ips")):
        values = _section(config, *keys)
        if values:
            found += _parse_ips(values, ".".join(keys), config_error)
    return list(dict.fromkeys(found))


def result(leases: list[Lease], cfg: IpamConfig) -> dict[str, Any]:
    """A CNI 1.x IPAM result (the front end converts it to the requested version)."""
    ips = []
    for lease in leases:
        entry = {"address": f"{lease.address}/{lease.subnet.prefixlen}"}
        if lease.gateway is not None:
            entry["gateway"] = str(lease.gateway)
        ips.append(entry)
    routes = [{"dst": str(r.dst), **({"gw": str(r.gw)} if r.gw is not None else {})} for r in cfg.routes]
    return {"ips": ips, "routes": routes, "dns": dict(cfg.dns)}


def ipam_add(network: str, container_id: str, ifname: str, config: Mapping[str, Any],
             cni_args: Mapping[str, str]) -> dict[str, Any]:
    cfg = ipam_config(config)
    leases = open_store(cfg.store, network).allocate(container_id, ifname, cfg, requested_ips(cni_args, config))
    return result(leases, cfg)


def ipam_del(network: str, container_id: str, ifname: str, config: Mapping[str, Any]) -> None:
    """Idempotent; needs only the store key so a DEL still frees the lease after the ranges changed."""
    store(network, config).release(container_id, ifname)


def ipam_check(network: str, container_id: str, ifname: str, config: Mapping[str, Any]) -> list[Lease]:
    """Error 3 unless every range set of the current config has a lease for this attachment."""
    cfg = ipam_config(config)
    leases = open_store(cfg.store, network).leases_of(container_id, ifname)
    covered = {cfg.set_of(lease.address) for lease in leases}
    missing = [i for i in range(len(cfg.ranges)) if i not in covered]
    if missing:
        have = ", ".join(str(lease.address) for lease in leases) or "none"
        raise PluginError(UNKNOWN_CONTAINER, f"no address leased to container {container_id} ({ifname}) "
                          f"in range set(s) {', '.join(map(str, missing))} of network {network}",
                          f"leases held: {have}")
    return leases


def valid_attachments(config: Mapping[str, Any]) -> set[tuple[str, str]] | None:
    """GC's keep-list; None when the key is absent (which means: release nothing)."""
    if VALID_ATTACHMENTS not in config:
        return None
    entries = config[VALID_ATTACHMENTS]
    if not isinstance(entries, list) or not all(
            isinstance(e, Mapping) and isinstance(e.get("containerID"), str) and isinstance(e.get("ifname"), str)
            for e in entries):
        raise config_error(f"{VALID_ATTACHMENTS} must be a list of {{containerID, ifname}} objects")
    return {(e["containerID"], e["ifname"]) for e in entries}


def ipam_gc(network: str, config: Mapping[str, Any]) -> list[Lease]:
    """CNI 1.1 GC: release every lease not in the valid list; an absent list releases nothing.
    Leases of the Docker IPAM driver in a shared store and a DHCP server's own address are not
    the runtime's to judge: kept."""
    valid = valid_attachments(config)
    if valid is None:
        return []
    return store(network, config).gc(valid, keep=lambda lease: lease.held_by_docker or lease.held_by_dhcp)


def ipam_status(network: str, config: Mapping[str, Any]) -> None:
    """CNI 1.1 STATUS: error 7 for a bad config, 50 when no lease could be written."""
    cfg = ipam_config(config)
    open_store(cfg.store, network).check_writable()
