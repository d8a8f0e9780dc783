"""The IPAM section of a network config, parsed and checked once.

Key names follow the reference `host-local` plugin (`ranges`, `routes`, `dataDir`, legacy top-level
`subnet`/`rangeStart`/`rangeEnd`/`gateway`) so existing configs work unchanged. Every check that can
be made without the store is made here, so the store never sees an impossible range: a bad config
is error 7 with a message that names the offending value.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Union

from cni_bridge import validate
from cni_bridge.errors import config_error

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

DEFAULT_DATA_DIR = Path("/var/lib/cni/pybridge")
DEFAULT_ETCD_PREFIX = "/pybridge"
DEFAULT_ETCD_TIMEOUT = 5.0
STORE_TYPES = ("file", "etcd")
HOST_ID_ENV = "PYBRIDGE_HOST_ID"
_HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_PREFIX_RE = re.compile(r"(/[A-Za-z0-9._-]+)+")

# host-local refuses subnets that leave fewer than two host addresses; so do we, which also means
# every range has a distinct network (and, for IPv4, broadcast) address to keep out of the pool.
_MAX_PREFIX = {4: 30, 6: 126}


@dataclass(frozen=True)
class AddressRange:
    """One contiguous pool `range_start..range_end` inside `subnet` (both ends included)."""
    subnet: IPNetwork
    range_start: IPAddress
    range_end: IPAddress
    gateway: IPAddress | None

    @property
    def first(self) -> int:
        return int(self.range_start)

    @property
    def last(self) -> int:
        return int(self.range_end)

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def contains(self, address: IPAddress) -> bool:
        return address.version == self.subnet.version and self.first <= int(address) <= self.last

    def never_leased(self, address: IPAddress) -> bool:
        """The network address, the IPv4 broadcast address and the gateway are never handed out."""
        if address == self.subnet.network_address or address == self.gateway:
            return True
        return self.subnet.version == 4 and address == self.subnet.broadcast_address

    def describe(self) -> str:
        return f"{self.subnet} ({self.range_start}-{self.range_end})"


RangeSet = tuple[AddressRange, ...]


@dataclass(frozen=True)
class RouteSpec:
    """Same shape as attachment.RouteConfig, kept separate on purpose: importing attachment (and
    hashlib with it) would add ~5 ms to every exec of the standalone `pybridge-ipam`."""
    dst: IPNetwork
    gw: IPAddress | None = None


@dataclass(frozen=True)
class StoreSpec:
    """Where leases live: `file` (a directory per network under data_dir, one host) or `etcd`
    (shared by every host that names the same endpoints and prefix). Parsed from the `store` key
    (or the legacy top-level `dataDir`); `cni_bridge.ipam.backend.open_store` turns it into a store."""
    type: str = "file"
    data_dir: Path = DEFAULT_DATA_DIR
    endpoints: tuple[str, ...] = ()
    prefix: str = DEFAULT_ETCD_PREFIX
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    timeout: float = DEFAULT_ETCD_TIMEOUT
    host: str | None = None  # None: $PYBRIDGE_HOST_ID, else the host name

    def host_id(self) -> str:
        """Which host a lease belongs to (GC of one host never releases another's leases)."""
        value = self.host or os.environ.get(HOST_ID_ENV)
        if not value:
            import socket  # lazy: only etcd stores ask, and the exec path should not pay for it
            value = socket.gethostname()
        if not _HOST_RE.fullmatch(value):
            raise config_error(f"ipam.store: host id {value!r} must be letters, digits, '.', '_', '-'",
                               f"set ipam.store.host or ${HOST_ID_ENV}")
        return value

    def describe(self) -> str:
        if self.type == "file":
            return f"file:{self.data_dir}"
        return f"etcd:{','.join(self.endpoints)}{self.prefix}"

    def to_dict(self) -> dict[str, Any]:
        """The `store` object this spec was parsed from (kept by the Docker driver's state)."""
        if self.type == "file":
            return {"type": "file", "dataDir": str(self.data_dir)}
        out: dict[str, Any] = {"type": "etcd", "endpoints": list(self.endpoints), "prefix": self.prefix,
                               "timeout": self.timeout}
        out.update({k: v for k, v in (("cacert", self.cacert), ("cert", self.cert), ("key", self.key),
                                      ("host", self.host)) if v})
        return out


@dataclass(frozen=True)
class IpamConfig:
    """`ranges[i]` is one range set: each ADD gets exactly one address from every set."""
    ranges: tuple[RangeSet, ...]
    routes: tuple[RouteSpec, ...] = ()
    data_dir: Path = DEFAULT_DATA_DIR
    dns: dict = field(default_factory=dict)
    store: StoreSpec = StoreSpec()

    def set_of(self, address: IPAddress) -> int | None:
        """Index of the range set that contains `address`, or None."""
        for index, range_set in enumerate(self.ranges):
            if any(r.contains(address) for r in range_set):
                return index
        return None

    def range_of(self, address: IPAddress) -> AddressRange | None:
        return next((r for rs in self.ranges for r in rs if r.contains(address)), None)

    def gateways(self) -> frozenset[IPAddress]:
        return frozenset(r.gateway for rs in self.ranges for r in rs if r.gateway is not None)


def _address(value: Any, what: str) -> IPAddress:
    return validate.ip_address(value, f"ipam: {what}")


def _network(value: Any, what: str) -> IPNetwork:
    if not isinstance(value, str) or "/" not in value:
        raise config_error(f"ipam: {what} must be a CIDR string like 10.1.0.0/24, got {value!r}")
    return validate.ip_network(value, f"ipam: {what}")  # host-local accepts host bits


def parse_range(raw: Any, where: str) -> AddressRange:
    """One range dict (`subnet`, optional `rangeStart`, `rangeEnd`, `gateway`) with host-local defaults."""
    if not isinstance(raw, Mapping):
        raise config_error(f"ipam: {where} must be an object with a 'subnet'")
    if "subnet" not in raw:
        raise config_error(f"ipam: {where} has no 'subnet'")
    subnet = _network(raw["subnet"], f"{where}.subnet")
    if subnet.prefixlen > _MAX_PREFIX[subnet.version]:
        raise config_error(f"ipam: {where}.subnet {subnet} is too small to allocate from")
    default_end = subnet.broadcast_address - 1 if subnet.version == 4 else subnet.broadcast_address
    bounds = {}
    for key, default in (("rangeStart", subnet.network_address + 1), ("rangeEnd", default_end),
                         ("gateway", subnet.network_address + 1)):
        value = raw.get(key)
        bounds[key] = default if value in (None, "") else _address(value, f"{where}.{key}")
        if bounds[key] not in subnet:
            raise config_error(f"ipam: {where}.{key} {bounds[key]} is outside subnet {subnet}")
        if bounds[key] == subnet.network_address or (
                subnet.version == 4 and bounds[key] == subnet.broadcast_address):
            raise config_error(f"ipam: {where}.{key} {bounds[key]} is the network or broadcast "
                               f"address of {subnet}")
    start, end = bounds["rangeStart"], bounds["rangeEnd"]
    if start > end:
        raise config_error(f"ipam: {where}.rangeStart {start} is after rangeEnd {end}")
    return AddressRange(subnet, start, end, bounds["gateway"])


def _check_overlaps(ranges: list[tuple[str, AddressRange]]) -> None:
    """Two ranges sharing an address would let one address be leased twice through two sets."""
    ordered = sorted(ranges, key=lambda item: (item[1].subnet.version, item[1].first))
    for (where_a, a), (where_b, b) in zip(ordered, ordered[1:]):
        if a.subnet.version == b.subnet.version and b.first <= a.last:
            raise config_error(f"ipam: {where_a} ({a.range_start}-{a.range_end}) overlaps "
                               f"{where_b} ({b.range_start}-{b.range_end})")


def _range_sets(ipam: Mapping[str, Any]) -> Iterator[tuple[str, list[Any]]]:
    """Legacy top-level range first (host-local prepends it), then `ranges`."""
    if ipam.get("subnet") not in (None, ""):
        yield "ipam", [{k: ipam.get(k) for k in ("subnet", "rangeStart", "rangeEnd", "gateway")}]
    raw_sets = ipam.get("ranges")
    if raw_sets is None:
        return
    if not isinstance(raw_sets, list):
        raise config_error("ipam.ranges must be a list of range sets (lists of ranges)")
    for i, raw_set in enumerate(raw_sets):
        if not isinstance(raw_set, list) or not raw_set:
            raise config_error(f"ipam.ranges[{i}] must be a non-empty list of ranges")
        yield f"ipam.ranges[{i}]", raw_set


def _routes(raw: Any) -> tuple[RouteSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise config_error("ipam.routes must be a list of {dst, gw} objects")
    routes = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or "dst" not in item:
            raise config_error(f"ipam.routes[{i}] must be an object with a 'dst'")
        dst = _network(item["dst"], f"ipam.routes[{i}].dst")
        gw = None if item.get("gw") in (None, "") else _address(item["gw"], f"ipam.routes[{i}].gw")
        if gw is not None and gw.version != dst.version:
            raise config_error(f"ipam.routes[{i}]: gw {gw} and dst {dst} are different IP versions")
        routes.append(RouteSpec(dst, gw))
    return tuple(routes)


def _data_dir(raw: Any) -> Path:
    if raw in (None, ""):
        return DEFAULT_DATA_DIR
    if not isinstance(raw, str) or not raw.startswith("/") or "\x00" in raw:
        raise config_error(f"ipam.dataDir must be an absolute path, got {raw!r}")
    return Path(raw)


def data_dir_of(ipam: Any) -> Path:
    """Only the store location: DEL, GC and STATUS must work even if the ranges no longer parse."""
    return _data_dir(ipam.get("dataDir") if isinstance(ipam, Mapping) else None)


def _path_option(raw: Mapping[str, Any], name: str) -> str | None:
    value = raw.get(name)
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value:
        raise config_error(f"ipam.store.{name} must be an absolute path, got {value!r}")
    return value


def parse_store(raw: Any, legacy_data_dir: Any = None) -> StoreSpec:
    """The `store` object (absent: the file store in the top-level `dataDir`); error 7 if bad."""
    if raw is None:
        return StoreSpec(data_dir=_data_dir(legacy_data_dir))
    if not isinstance(raw, Mapping):
        raise config_error("ipam.store must be an object with a 'type' (file or etcd)")
    kind = raw.get("type", "file")
    if kind not in STORE_TYPES:
        raise config_error(f"ipam.store.type must be one of {', '.join(STORE_TYPES)}, got {kind!r}")
    if kind == "file":
        return StoreSpec(data_dir=_data_dir(raw.get("dataDir", legacy_data_dir)))
    endpoints = raw.get("endpoints")
    if isinstance(endpoints, str):
        endpoints = [e for e in endpoints.split(",") if e]
    if not isinstance(endpoints, list) or not endpoints or not all(isinstance(e, str) for e in endpoints):
        raise config_error("ipam.store.endpoints must be a non-empty list of URLs (http://HOST:2379)")
    prefix = raw.get("prefix", DEFAULT_ETCD_PREFIX)
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise config_error(f"ipam.store.prefix must look like /pybridge (no trailing '/'), got {prefix!r}")
    timeout = raw.get("timeout", DEFAULT_ETCD_TIMEOUT)
    if isinstance(timeout, str):
        try:
            timeout = float(timeout)
        except ValueError:
            pass
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 300:
        raise config_error(f"ipam.store.timeout must be seconds between 0 and 300, got {timeout!r}")
    host = raw.get("host")
    if host is not None and (not isinstance(host, str) or not _HOST_RE.fullmatch(host)):
        raise config_error(f"ipam.store.host must be letters, digits, '.', '_', '-', got {host!r}")
    spec = StoreSpec("etcd", DEFAULT_DATA_DIR, tuple(endpoints), prefix, _path_option(raw, "cacert"),
                     _path_option(raw, "cert"), _path_option(raw, "key"), float(timeout), host)
    if spec.key and not spec.cert:
        raise config_error("ipam.store.key needs ipam.store.cert")
    from cni_bridge.ipam.etcd import EtcdClient  # lazy: file stores never load the etcd client
    EtcdClient(spec.endpoints)  # checks the URLs
    return spec


def store_of(ipam: Any) -> StoreSpec:
    """Only the store: DEL, GC and STATUS must work even if the ranges no longer parse."""
    if not isinstance(ipam, Mapping):
        return StoreSpec()
    return parse_store(ipam.get("store"), ipam.get("dataDir"))


def parse_ipam_config(ipam: Mapping[str, Any]) -> IpamConfig:
    """Parse the `ipam` object of a network config; error 7 on anything inconsistent."""
    if not isinstance(ipam, Mapping):
        raise config_error("ipam must be an object")
    sets: list[RangeSet] = []
    everything: list[tuple[str, AddressRange]] = []
    for where, raw_set in _range_sets(ipam):
        parsed = [parse_range(raw, f"{where}[{j}]" if where != "ipam" else where)
                  for j, raw in enumerate(raw_set)]
        if len({r.subnet.version for r in parsed}) > 1:
            raise config_error(f"ipam: {where} mixes IPv4 and IPv6 ranges; put each family in its "
                               "own range set ([[v4 ranges], [v6 ranges]])")
        sets.append(tuple(parsed))
        everything += [(f"{where}[{j}]", r) for j, r in enumerate(parsed)]
    if not sets:
        raise config_error("ipam: no address ranges: set 'ranges' (or 'subnet')")
    _check_overlaps(everything)
    dns = ipam.get("dns") or {}
    if not isinstance(dns, Mapping):
        raise config_error("ipam.dns must be an object (nameservers, domain, search, options)")
    store = parse_store(ipam.get("store"), ipam.get("dataDir"))
    return IpamConfig(tuple(sets), _routes(ipam.get("routes")), store.data_dir, dict(dns), store)
