"""What a network's DHCP server knows, on disk under `$PYBRIDGE_RUN_DIR/dhcp/<network>/`:

    network.json   the network's side: bridge, MTU, subnet, gateway, routes, DNS, and the server's
                   own address with the lease store that holds it (so stop and gc can release it)
    entries.json   {key: {"mac", "address"}}: one entry per attachment (key: the host veth or tap
                   name, which DEL derives without the container's namespace)
    hosts          dnsmasq's dhcp-hostsfile, rendered from entries.json ("MAC,ADDRESS" lines)
    opts           dnsmasq's dhcp-optsfile: router, classless routes, DNS, MTU
    dnsmasq.pid, leases, dnsmasq.log   dnsmasq's own files

Every file is written to a temporary name and renamed over the old one: dnsmasq, re-reading
hosts and opts on SIGHUP, sees the old file or the new one, never half of one. The directory is
on tmpfs (/run): a reboot wipes it together with the server it describes; the runtimes and the
Docker driver then attach their containers again, which writes it anew.

Pure file handling and rendering; the process is dnsmasq.py, the plumbing server.py.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cni_bridge import locks

DIR_NAME = "dhcp"
NETNS_PREFIX = "pbdhcp-"
VETH_PREFIX = "pbd"        # host end on the bridge: pbd + 11 hex of the network name (14 bytes)
INNER_IFNAME = "dhcp0"     # the server's end, alone in its namespace
# /run/netns/<name> is a file name (255 bytes) and network names may have 256 characters: the
# longest are hashed. Docker's network ids (64 hex) stay readable.
MAX_READABLE_NETNS = 128


def digest(network: str) -> str:
    return hashlib.sha256(network.encode()).hexdigest()


def netns_name(network: str) -> str:
    """`pbdhcp-<network>` (network names are letters, digits, '_', '.', '-': a safe file name),
    or `pbdhcp-h<24 hex>` for names longer than MAX_READABLE_NETNS."""
    readable = NETNS_PREFIX + network
    return readable if len(readable) <= MAX_READABLE_NETNS else NETNS_PREFIX + "h" + digest(network)[:24]


def veth_name(network: str) -> str:
    return VETH_PREFIX + digest(network)[:11]


def lease_owner(network: str, docker: bool) -> tuple[str, str]:
    """The server address's owner in the lease store. Docker's stores keep their own owners
    (`docker-` + ifname `docker`: CNI GC leaves them, ReleasePool frees them); CNI stores get
    `pbdhcp-<hash>` + `dhcp`, which pybridge-ipam's GC leaves alone (ipam/lease.py)."""
    if docker:
        return ("docker-dhcp-" + digest(network)[:24], "docker")
    return (NETNS_PREFIX + digest(network)[:24], "dhcp")


def root() -> Path:
    return Path(locks.RUN_DIR) / DIR_NAME


def network_dir(network: str) -> Path:
    """Named like the namespace: one directory per network, a bounded file name."""
    return root() / netns_name(network)[len(NETNS_PREFIX):]


@dataclass(frozen=True)
class ServerAddress:
    """The server's address and where it is leased (a pybridge lease store)."""
    address: str          # CIDR, on INNER_IFNAME
    data_dir: str
    store: str
    owner: tuple[str, str]


@dataclass(frozen=True)
class NetworkInfo:
    """The network-wide half of what dnsmasq serves (from the IPAM result or the Docker record)."""
    network: str
    bridge: str
    subnet: str                     # IPv4 CIDR
    gateway: str | None = None
    mtu: int | None = None
    routes: list[tuple[str, str | None]] = field(default_factory=list)   # (dst, gw)
    dns: dict[str, Any] = field(default_factory=dict)
    server: ServerAddress | None = None

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self)) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "NetworkInfo":
        data = json.loads(raw)
        server = data.pop("server", None)
        data["routes"] = [tuple(r) for r in data.get("routes", [])]
        if server is not None:
            server = ServerAddress(**{**server, "owner": tuple(server["owner"])})
        return cls(**data, server=server)


def write_file(path: Path, data: bytes) -> None:
    """Atomic replace (temporary file + rename), readable by dnsmasq after it dropped root."""
    tmp = path.with_name(f".tmp.{path.name}.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_info(directory: Path) -> NetworkInfo | None:
    try:
        return NetworkInfo.from_json((directory / "network.json").read_bytes())
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError):
        return None


def read_entries(directory: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads((directory / "entries.json").read_bytes())
    except FileNotFoundError:
        return {}
    except ValueError:
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and "mac" in v and "address" in v} \
        if isinstance(data, dict) else {}


def write_entries(directory: Path, entries: dict[str, dict[str, str]]) -> None:
    write_file(directory / "entries.json", (json.dumps(entries, sort_keys=True) + "\n").encode())


def render_hosts(entries: dict[str, dict[str, str]]) -> str:
    """dhcp-hostsfile: one `MAC,ADDRESS` per entry (an entry makes its MAC "known")."""
    return "".join(f"{e['mac'].lower()},{e['address']}\n" for _, e in sorted(entries.items()))


def render_opts(info: NetworkInfo) -> str:
    """dhcp-optsfile. With classless static routes (option 121) a client ignores the router
    option (RFC 3442), so the default route is repeated there."""
    lines = []
    if info.gateway:
        lines.append(f"option:router,{info.gateway}")
    routes = [(dst, gw or info.gateway) for dst, gw in info.routes
              if ipaddress.ip_network(dst, strict=False).version == 4 and (gw or info.gateway)]
    extra = [(dst, gw) for dst, gw in routes if ipaddress.ip_network(dst, strict=False).prefixlen != 0]
    if extra:
        default = next(((d, g) for d, g in routes if ipaddress.ip_network(d, strict=False).prefixlen == 0),
                       ("0.0.0.0/0", info.gateway) if info.gateway else None)
        pairs = extra + ([default] if default else [])
        lines.append("option:classless-static-route," + ",".join(f"{d},{g}" for d, g in pairs))
    servers = [s for s in info.dns.get("nameservers", []) if ipaddress.ip_address(s).version == 4]
    if servers:
        lines.append("option:dns-server," + ",".join(servers))
    if info.dns.get("domain"):
        lines.append(f"option:domain-name,{info.dns['domain']}")
    if info.dns.get("search"):
        lines.append("option:domain-search," + ",".join(info.dns["search"]))
    if info.mtu:
        lines.append(f"option:mtu,{info.mtu}")
    return "".join(line + "\n" for line in lines)
