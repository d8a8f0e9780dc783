"""libnetwork remote NetworkDriver handlers (`docker network create -d pybridge`).

Translation only: Docker's requests become a `NetworkSpec` (options.py + config.py), an
`Attachment` and an `Addressing`; the mode module does the kernel work through its Docker entry
points (`create_network`, `delete_network`, `create_endpoint`, `delete_endpoint`, see
modes/bridge.py). What must survive restarts is written to the state store before the kernel
work starts ("creating") and confirmed after it ("ready"), so `recover()` can clean up after a
driver that was killed half-way. A write that fails (disk full, I/O error) undoes the kernel work
before the error goes back to Docker (`_write`). Handlers never call the Docker API (dockerd
waits for us).

Network record: {"id", "config" (CNI-key dict), "ipv4"/"ipv6": [{"pool", "gateway"}],
"internal", "status", "created" (what the mode made; handed back at teardown)}.
Endpoint record: {"id", "network", "host_ifname", "src_name", "mac", "addresses", "status"}.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from types import ModuleType
from typing import Any, Callable

from cni_bridge import dhcp, modes
from cni_bridge.attachment import Addressing, Attachment, IpConfig
from cni_bridge.config import NetworkSpec, parse_network
from cni_bridge.crashpoint import step
from cni_bridge.docker import options as docker_options
from cni_bridge.docker import ports as docker_ports
from cni_bridge.docker.body import Body
from cni_bridge.docker.context import Driver
from cni_bridge.errors import INTERNAL, PluginError, config_error, shown

log = logging.getLogger("cni_bridge.docker")

ENDPOINT_IFNAME = "docker"  # the `ifname` half of an endpoint's Attachment identity
SRC_PREFIX = "pbc"          # container-side end on the host until Docker moves it: pbc + 11 hex
DST_PREFIX = "eth"
NETWORKS_LOCK = "networks"
_MAC_RE = re.compile(r"^(?:[0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$")


# --- plugin-level ------------------------------------------------------------------------------
def get_capabilities(ctx: Driver, body: Body) -> dict[str, Any]:
    return {"Scope": "local", "ConnectivityScope": "local"}


def allocate_network(ctx: Driver, body: Body) -> dict[str, Any]:
    """Swarm's manager-side allocation; a local-scope driver has nothing to allocate."""
    return {"Options": {}}


def nothing(ctx: Driver, body: Body) -> dict[str, Any]:
    """FreeNetwork, DiscoverNew, DiscoverDelete: no cluster state, no node discovery."""
    return {}


# --- networks ----------------------------------------------------------------------------------
def create_network(ctx: Driver, body: Body) -> dict[str, Any]:
    nid = body.ident("NetworkID")
    options = body.mapping("Options")
    ip_data = {4: _ip_data(body, "IPv4Data"), 6: _ip_data(body, "IPv6Data")}
    config = docker_options.network_config(nid, options)
    spec = parse_network(config)
    driver = _mode(spec)
    addressing = Addressing([IpConfig(ipaddress.ip_interface(f"{d['gateway']}/{ipaddress.ip_network(d['pool']).prefixlen}"),
                                      ipaddress.ip_address(d["gateway"]))
                             for version in (4, 6) for d in ip_data[version] if d["gateway"]])
    record = {"id": nid, "config": config, "ipv4": ip_data[4], "ipv6": ip_data[6],
              "internal": docker_options.flag(options, docker_options.INTERNAL), "status": "creating"}
    with ctx.state.lock(NETWORKS_LOCK):
        existing = ctx.state.get("networks", nid)
        if existing is not None:
            if existing.get("status") == "ready" and existing["config"] == config:
                return {}  # a retried request
            raise config_error(f"network {nid[:12]} already exists in the driver's state")
        _refuse_overlap(ctx, spec, record)
        if spec.dhcp:
            _dhcp_source(ctx, record)  # refused before anything is made
        _write(ctx, "networks", nid, record)
        try:
            created = driver.create_network(spec, addressing)
        except BaseException:
            _drop(ctx, "networks", nid)
            raise
        record.update(status="ready", created=created)
        _write(ctx, "networks", nid, record, undo=lambda: driver.delete_network(spec, created))
    log.info("network %s created: mode %s%s", nid[:12], spec.mode,
             f", bridge {spec.bridge}" if spec.mode == "bridge" else "")
    return {}


def delete_network(ctx: Driver, body: Body) -> dict[str, Any]:
    nid = body.ident("NetworkID")
    with ctx.state.lock(NETWORKS_LOCK):
        record = ctx.state.get("networks", nid)
        if record is None:
            return {}  # idempotent: dockerd retries after errors
        spec = parse_network(record["config"])
        for endpoint in ctx.state.all("endpoints"):  # dockerd deletes them first; a crash may not
            if endpoint.get("network") == nid:
                _remove_endpoint(ctx, spec, endpoint)
        if spec.dhcp:
            dhcp.stop(spec.name)
        _mode(spec).delete_network(spec, record.get("created") or {})
        ctx.state.delete("networks", nid)
    log.info("network %s deleted", nid[:12])
    return {}


def _ip_data(body: Body, key: str) -> list[dict[str, str | None]]:
    out = []
    for i, item in enumerate(body.items(key)):
        entry = Body(f"{body.method} {key}[{i}]", item)
        pool = entry.network("Pool")
        if pool is None:
            raise config_error(f"{entry.method}: Pool is required")
        gateway = entry.address("Gateway")
        if gateway is not None and gateway not in pool:
            raise config_error(f"{entry.method}: gateway {gateway} is not in pool {pool}")
        out.append({"pool": str(pool), "gateway": str(gateway) if gateway else None})
    return out


def _refuse_overlap(ctx: Driver, spec: NetworkSpec, record: dict[str, Any]) -> None:
    """Two bridges routing one subnet would black-hole half the traffic: refuse it clearly."""
    if spec.mode != "bridge":
        return
    mine = [ipaddress.ip_network(d["pool"]) for d in record["ipv4"] + record["ipv6"]]
    for other in ctx.state.all("networks"):
        if other["config"].get("mode", "bridge") != "bridge" or other["config"].get("bridge") == spec.bridge:
            continue
        for d in other["ipv4"] + other["ipv6"]:
            theirs = ipaddress.ip_network(d["pool"])
            if any(net.version == theirs.version and net.overlaps(theirs) for net in mine):
                raise config_error(f"subnet {theirs} is already used by pybridge network {other['id'][:12]} "
                                   f"on bridge {other['config'].get('bridge')}")


# --- endpoints ---------------------------------------------------------------------------------
def create_endpoint(ctx: Driver, body: Body) -> dict[str, Any]:
    nid, eid = body.ident("NetworkID"), body.ident("EndpointID")
    iface = body.sub("Interface")
    address4, address6 = iface.interface("Address"), iface.interface("AddressIPv6")
    given_mac = iface.string("MacAddress")
    if given_mac and (not _MAC_RE.fullmatch(given_mac) or int(given_mac[:2], 16) & 1):
        raise config_error(f"CreateEndpoint: invalid MAC address {shown(given_mac)}")
    network = _network(ctx, nid, body.method)
    spec = parse_network(network["config"])
    driver = _mode(spec)
    mac = given_mac or (_mac_for(address4) if getattr(driver, "DOCKER_SETS_MAC", True) else None)
    att = Attachment(eid, ENDPOINT_IFNAME, None, mac)
    addressing = _endpoint_addressing(network, [a for a in (address4, address6) if a is not None])
    record = {"id": eid, "network": nid, "host_ifname": att.host_ifname, "src_name": src_name(att),
              "mac": mac, "addresses": [str(a.address) for a in addressing.ips], "status": "creating"}
    if ctx.state.get("endpoints", eid) is not None:
        raise config_error(f"endpoint {eid[:12]} already exists")
    _write(ctx, "endpoints", eid, record)
    step("docker-endpoint-recorded")
    try:
        made_mac = driver.create_endpoint(spec, att, addressing, record["src_name"])
    except BaseException:
        _drop(ctx, "endpoints", eid)
        raise
    record.update(status="ready", mac=made_mac or mac)
    _write(ctx, "endpoints", eid, record,
           undo=lambda: driver.delete_endpoint(spec, att, addressing.addresses(), record["src_name"]))
    step("docker-endpoint-ready")
    if spec.dhcp:
        try:
            _dhcp_add(ctx, network, spec, record)
        except BaseException:
            _remove_endpoint(ctx, spec, record)
            raise
    if given_mac or not record["mac"]:
        return {"Interface": {}}
    return {"Interface": {"MacAddress": record["mac"]}}


def delete_endpoint(ctx: Driver, body: Body) -> dict[str, Any]:
    nid, eid = body.ident("NetworkID"), body.ident("EndpointID")
    record = ctx.state.get("endpoints", eid)
    network = ctx.state.get("networks", nid)
    if record is None:  # unknown (state lost?): the names are derived from the id, clean anyway
        att = Attachment(eid, ENDPOINT_IFNAME, None)
        record = {"id": eid, "network": nid, "host_ifname": att.host_ifname, "src_name": src_name(att),
                  "addresses": []}
    spec = parse_network(network["config"]) if network is not None else None
    _remove_endpoint(ctx, spec, record)
    return {}


def _remove_endpoint(ctx: Driver, spec: NetworkSpec | None, record: dict[str, Any]) -> None:
    att = Attachment(record["id"], ENDPOINT_IFNAME, None, record.get("mac"))
    addresses = [ipaddress.ip_interface(a).ip for a in record.get("addresses", [])]
    if record.get("ports"):
        _unpublish(spec, record)
    if spec is not None:
        _mode(spec).delete_endpoint(spec, att, addresses, record["src_name"])
        if spec.dhcp:
            dhcp.remove_host(spec.name, record["host_ifname"])
    else:  # the network is gone from our state: its links (and a shaping ifb) are all that can be left
        modes.driver("bridge").delete_endpoint(
            parse_network({"name": record.get("network") or "unknown", "bridge": "unknown", "bandwidth": {}}),
            att, [], record["src_name"])
    ctx.state.delete("endpoints", record["id"])


def remove_endpoints_holding(ctx: Driver, pool: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
    """ReleaseAddress of an address an endpoint record still holds: dockerd gave up on that
    endpoint. It releases an address after DeleteEndpoint, or after a CreateEndpoint that
    failed for it -- and then sends no DeleteEndpoint. A CreateEndpoint whose worker died after
    the record was written (before the answer went out) leaves such a record, its veth pair and
    masquerade entry; remove them before the address can be handed out again."""
    networks = {n["id"]: n for n in ctx.state.all("networks")}
    removed = []
    for endpoint in ctx.state.all("endpoints"):
        network = networks.get(endpoint.get("network"))
        if network is None or pool not in {d["pool"] for d in network["ipv4"] + network["ipv6"]}:
            continue
        if address not in {ipaddress.ip_interface(a).ip for a in endpoint.get("addresses", [])}:
            continue
        _remove_endpoint(ctx, parse_network(network["config"]), endpoint)
        removed.append(endpoint["id"])
        log.warning("endpoint %s removed: dockerd released its address %s (its CreateEndpoint failed)",
                    endpoint["id"][:12], address)
    return removed


def endpoint_oper_info(ctx: Driver, body: Body) -> dict[str, Any]:
    """Also the published ports under Docker's own keys, with the host ports pybridge chose.
    (dockerd 20.10-27 read these keys only from built-in drivers, as Go types: a remote
    driver's answer does not reach `docker port`; see docs/docker.md.)"""
    body.ident("NetworkID")
    record = _endpoint(ctx, body)
    value = {"hostIfname": record["host_ifname"], "srcName": record["src_name"],
             "mac": record.get("mac") or "", "addresses": record.get("addresses", [])}
    if record.get("ports"):
        value[docker_ports.PORTMAP] = record["ports"]
    if record.get("exposed"):
        value[docker_ports.EXPOSED] = record["exposed"]
    return {"Value": value}


def join(ctx: Driver, body: Body) -> dict[str, Any]:
    step("docker-join-received")  # crash injection: the driver dies between CreateEndpoint and Join
    nid = body.ident("NetworkID")
    record = _endpoint(ctx, body)
    body.string("SandboxKey")  # Docker moves the interface there itself; nothing to remember
    network = _network(ctx, nid, body.method)
    spec = parse_network(network["config"])
    response: dict[str, Any] = {"InterfaceName": {"SrcName": record["src_name"], "DstPrefix": DST_PREFIX},
                                "DisableGatewayService": False}
    if spec.is_default_gateway:
        versions = {ipaddress.ip_interface(a).version for a in record.get("addresses", [])}
        for version, key in ((4, "Gateway"), (6, "GatewayIPv6")):
            data = network["ipv4" if version == 4 else "ipv6"]
            if version in versions and data and data[0]["gateway"]:
                response[key] = data[0]["gateway"]
    return response


def leave(ctx: Driver, body: Body) -> dict[str, Any]:
    """Docker moves the interface back under its SrcName (or it dies with the sandbox); the
    pair itself goes at DeleteEndpoint."""
    body.ident("NetworkID")
    _endpoint(ctx, body)
    return {}


def program_external_connectivity(ctx: Driver, body: Body) -> dict[str, Any]:
    """Publish the endpoint's ports (-p, -P): DNAT from host ports (firewall/portmap.py). All
    or nothing; the ports chosen for "any port" are remembered in the endpoint record, which
    EndpointOperInfo reports and a restarted driver restores from."""
    nid, eid = body.ident("NetworkID"), body.ident("EndpointID")
    options = body.mapping("Options")
    exposed = docker_ports.exposed(options)
    bindings = docker_ports.bindings(options)
    if not bindings:  # nothing to publish: remember --expose'd ports for EndpointOperInfo
        record = ctx.state.get("endpoints", eid)
        if record is not None and record.get("status") == "ready" and exposed != record.get("exposed", []):
            _write(ctx, "endpoints", eid, dict(record, exposed=exposed))
        return {}
    record = dict(_endpoint(ctx, body), exposed=exposed)
    addresses = [ipaddress.ip_interface(a).ip for a in record.get("addresses", [])]
    wanted = docker_ports.mappings(bindings, addresses)
    if wanted:
        network = _network(ctx, nid, body.method)
        spec = parse_network(network["config"])
        if spec.mode != "bridge":
            raise config_error(f"published ports (-p) need a bridge network; this one is mode {spec.mode}")
        subnets = [ipaddress.ip_network(d["pool"]) for d in network["ipv4"] + network["ipv6"]]
        if record.get("ports"):  # programmed again (a retried request): replace, not add
            modes.driver("bridge").unpublish(spec, record["host_ifname"])
        made = modes.driver("bridge").publish(spec, record["host_ifname"], subnets, wanted)
        record["ports"] = docker_ports.encode(made)
        log.info("endpoint %s: published %s", record["id"][:12], ", ".join(m.describe() for m in made))
        _write(ctx, "endpoints", record["id"], record,
               undo=lambda: modes.driver("bridge").unpublish(spec, record["host_ifname"]))
    return {}


def revoke_external_connectivity(ctx: Driver, body: Body) -> dict[str, Any]:
    """Unpublish the endpoint's ports (the container stops, or its gateway network changes)."""
    nid = body.ident("NetworkID")
    eid = body.ident("EndpointID")
    record = ctx.state.get("endpoints", eid)
    network = ctx.state.get("networks", nid)
    if record is None or network is None or not record.get("ports"):
        return {}
    _unpublish(parse_network(network["config"]), record)
    record.pop("ports", None)
    ctx.state.put("endpoints", eid, record)
    return {}


def _unpublish(spec: NetworkSpec | None, record: dict[str, Any]) -> None:
    if spec is not None and spec.mode == "bridge":
        modes.driver("bridge").unpublish(spec, record["host_ifname"], docker_ports.decode(record.get("ports", [])))


def _write(ctx: Driver, kind: str, key: str, record: dict[str, Any],
           undo: Callable[[], object] = lambda: None) -> None:
    """Write a record; if that fails (ENOSPC, EIO), run `undo` (the kernel work done since the
    "creating" record) and drop the record before the error goes to Docker, so nothing is left
    that blocks a retry. What cannot be undone now stays "creating" for `recover()`."""
    try:
        ctx.state.put(kind, key, record)
    except BaseException:
        _drop(ctx, kind, key, undo)
        raise


def _drop(ctx: Driver, kind: str, key: str, undo: Callable[[], object] = lambda: None) -> None:
    """Roll back after a failure; the original error is the one Docker must see."""
    try:
        undo()
        ctx.state.delete(kind, key)
    except Exception as exc:  # noqa: BLE001 - best effort, logged; recovery at the next start retries
        log.warning("%s %s: rollback incomplete (%s); the next start of the driver finishes it",
                    kind[:-1], key[:12], exc)


# --- recovery ----------------------------------------------------------------------------------
def recover(ctx: Driver) -> list[str]:
    """At start-up: undo what a driver killed in the middle of CreateNetwork / CreateEndpoint
    left behind (records still "creating"; Docker saw those calls fail), and report files that
    are not usable records (skipped: one bad file must not keep the driver from starting).
    Returns what was done or found, one line each."""
    networks, bad = ctx.state.scan("networks")
    endpoints, bad_endpoints = ctx.state.scan("endpoints")
    bad += bad_endpoints + ctx.state.scan("pools")[1]
    done = [f"skipped unusable state file {line}" for line in bad]
    by_id = {n["id"]: n for n in networks}
    for endpoint in endpoints:
        network = by_id.get(endpoint["network"])
        if endpoint["status"] != "ready" or network is None:
            done.append(_recover(ctx, "endpoint", endpoint["id"], lambda: _remove_endpoint(
                ctx, parse_network(network["config"]) if network is not None else None, endpoint)))
    for network in networks:
        if network["status"] != "ready":
            done.append(_recover(ctx, "network", network["id"], lambda: _remove_network(ctx, network)))
    for endpoint in endpoints:
        network = by_id.get(endpoint["network"])
        if endpoint["status"] == "ready" and endpoint.get("ports") and network is not None \
                and network["status"] == "ready":
            done += _restore_ports(network, endpoint)
    done += _restore_dhcp(ctx, networks, endpoints)
    return done


def _restore_dhcp(ctx: Driver, networks: list[dict[str, Any]], endpoints: list[dict[str, Any]]) -> list[str]:
    """The DHCP servers of `dhcp=true` networks: entries written again from the endpoint records
    (a reboot wiped them with /run), then every server with entries started if it is not running
    (this also brings back those of CNI networks)."""
    done = []
    for network in networks:
        spec = parse_network(network["config"]) if network["status"] == "ready" else None
        if spec is None or not spec.dhcp:
            continue
        for endpoint in endpoints:
            if endpoint["network"] == network["id"] and endpoint["status"] == "ready":
                try:
                    if _dhcp_add(ctx, network, spec, endpoint):
                        done.append(f"started the DHCP server of network {network['id'][:12]}")
                except Exception as exc:  # noqa: BLE001 - one endpoint must not stop the start
                    done.append(f"could not restore the DHCP entry of endpoint {endpoint['id'][:12]}: {exc}")
    return done + dhcp.restore()


def _dhcp_source(ctx: Driver, network: dict[str, Any]) -> dhcp.AddressSource:
    pool = network["ipv4"][0]["pool"] if network["ipv4"] else None
    source = docker_ipam_source(ctx, pool) if pool else None
    if source is None:
        raise config_error("dhcp=true needs an IPv4 pool of the pybridge IPAM driver (--ipam-driver pybridge): "
                           "the DHCP server leases its own address there")
    return source


def _dhcp_add(ctx: Driver, network: dict[str, Any], spec: NetworkSpec, endpoint: dict[str, Any]) -> bool:
    """The endpoint's MAC and IPv4 address into the network's DHCP server (keyed by host veth);
    True if that started the server."""
    addressing = _endpoint_addressing(network, [ipaddress.ip_interface(a) for a in endpoint.get("addresses", [])])
    info, ip = dhcp.network_info(spec, addressing), dhcp.ipv4_of(addressing)
    if info is None or ip is None or not endpoint.get("mac"):
        return False
    return dhcp.add_host(info, endpoint["host_ifname"], endpoint["mac"], ip.address.ip, _dhcp_source(ctx, network))


def docker_ipam_source(ctx: Driver, pool: str):
    from cni_bridge.docker import ipam as docker_ipam  # lazy: docker/ipam.py imports this module
    return docker_ipam.dhcp_source(ctx, pool)


def _restore_ports(network: dict[str, Any], endpoint: dict[str, Any]) -> list[str]:
    """Published ports the packet filter lost (reboot, firewall reload, a `nft flush ruleset`)
    while the endpoint lives on: publish them again, on the same host ports."""
    bridge = modes.driver("bridge")
    try:
        spec = parse_network(network["config"])
        wanted = docker_ports.decode(endpoint["ports"])
        if set(wanted) <= set(bridge.published(spec, endpoint["host_ifname"])):
            return []
        subnets = [ipaddress.ip_network(d["pool"]) for d in network["ipv4"] + network["ipv6"]]
        bridge.publish(spec, endpoint["host_ifname"], subnets, wanted)
    except Exception as exc:  # noqa: BLE001 - one endpoint must not stop the start
        return [f"could not restore the published ports of endpoint {endpoint['id'][:12]}: {exc}"]
    return [f"restored the published ports of endpoint {endpoint['id'][:12]}"]


def _recover(ctx: Driver, what: str, key: str, remove: Callable[[], None]) -> str:
    try:
        remove()
    except Exception as exc:  # noqa: BLE001 - a record's junk (bad addresses) must not stop the start
        return f"could not remove half-created {what} {key[:12]} (left for the next start): {exc}"
    return f"removed half-created {what} {key[:12]}"


def _remove_network(ctx: Driver, network: dict[str, Any]) -> None:
    spec = parse_network(network["config"])
    ours = spec.mode == "bridge" and spec.bridge == docker_options.default_bridge(network["id"])
    _mode(spec).delete_network(spec, {"bridge_created": ours})
    ctx.state.delete("networks", network["id"])


# --- helpers -----------------------------------------------------------------------------------
def src_name(att: Attachment) -> str:
    """The container end's name on the host (Docker renames it to eth<N> in the sandbox)."""
    return SRC_PREFIX + att.host_ifname[len("veth"):]


def _mac_for(address: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None) -> str:
    """Docker's convention: 02:42 + the IPv4 address (stable, unique in the subnet); else random."""
    if address is not None and address.version == 4:
        raw = b"\x02\x42" + address.ip.packed
    else:
        raw = bytes([0x02, 0x42]) + os.urandom(4)
    return ":".join(f"{b:02x}" for b in raw)


def _endpoint_addressing(network: dict[str, Any], addresses: list) -> Addressing:
    """The endpoint's addresses with their pool's prefix and gateway. An address outside every
    pool of the network is refused: dockerd never asks for one (it checks `--ip` itself), and the
    network's firewall sets would otherwise learn a subnet that is not the network's."""
    ips = []
    for address in addresses:
        data = network["ipv4" if address.version == 4 else "ipv6"]
        pool = next((d for d in data if address.ip in ipaddress.ip_network(d["pool"])), None)
        if pool is None:
            raise config_error(f"CreateEndpoint: address {address} is not in a subnet of network "
                               f"{network['id'][:12]}")
        gateway = ipaddress.ip_address(pool["gateway"]) if pool["gateway"] else None
        prefix = ipaddress.ip_network(pool["pool"]).prefixlen
        ips.append(IpConfig(ipaddress.ip_interface(f"{address.ip}/{prefix}"), gateway))
    return Addressing(ips)


def _mode(spec: NetworkSpec) -> ModuleType:
    driver = modes.driver(spec.mode)
    if not hasattr(driver, "create_endpoint"):
        raise config_error(f"mode {spec.mode} is not available through the Docker driver yet")
    return driver


def _network(ctx: Driver, nid: str, method: str) -> dict[str, Any]:
    record = ctx.state.get("networks", nid)
    if record is None or record.get("status") != "ready":
        raise PluginError(INTERNAL, f"{method}: network {nid[:12]} is not known to the pybridge driver "
                          "(its state was lost or it is being created)")
    return record


def _endpoint(ctx: Driver, body: Body) -> dict[str, Any]:
    eid = body.ident("EndpointID")
    record = ctx.state.get("endpoints", eid)
    if record is None or record.get("status") != "ready":
        raise PluginError(INTERNAL, f"{body.method}: endpoint {eid[:12]} is not known to the pybridge driver")
    return record


HANDLERS = {
    "NetworkDriver.GetCapabilities": get_capabilities,
    "NetworkDriver.CreateNetwork": create_network,
    "NetworkDriver.DeleteNetwork": delete_network,
    "NetworkDriver.AllocateNetwork": allocate_network,
    "NetworkDriver.FreeNetwork": nothing,
    "NetworkDriver.CreateEndpoint": create_endpoint,
    "NetworkDriver.DeleteEndpoint": delete_endpoint,
    "NetworkDriver.EndpointOperInfo": endpoint_oper_info,
    "NetworkDriver.Join": join,
    "NetworkDriver.Leave": leave,
    "NetworkDriver.DiscoverNew": nothing,
    "NetworkDriver.DiscoverDelete": nothing,
    "NetworkDriver.ProgramExternalConnectivity": program_external_connectivity,
    "NetworkDriver.RevokeExternalConnectivity": revoke_external_connectivity,
}
