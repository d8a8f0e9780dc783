"""The records the store keeps on disk and how they are named and encoded.

Everything here is human-readable JSON (one object, one line) so an operator can `cat` a network
directory and see who holds what. See `store.py` for the directory layout.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from cni_bridge.ipam.config import IPAddress, IPNetwork

OWNER_PREFIX = "owner."
# A readable owner file name is "<container id>+<ifname>" ('+' is in neither alphabet). Container
# ids may be 256 characters, more than a file name may hold: long ones are named by a hash
# (the owner file still contains the id and ifname).
_MAX_READABLE_OWNER = 200


# The Docker IPAM driver (cni_bridge/docker/ipam.py) leases in the same stores: owner
# "docker-<32 hex>" with ifname "docker", a pool's gateway "docker-gw-<hex>" with "gateway". A
# store may be shared with a CNI network (--ipam-opt network=NAME); no CNI runtime can list
# these in a GC's valid attachments, so CNI GC must leave them alone.
DOCKER_OWNER_PREFIX = "docker-"
DOCKER_IFNAMES = ("docker", "gateway")
# The DHCP server of a `dhcp: true` network (cni_bridge/dhcp) leases its own address as
# "pbdhcp-<hash>" with ifname "dhcp": no runtime lists it in a GC either.
DHCP_OWNER_PREFIX = "pbdhcp-"
DHCP_IFNAME = "dhcp"


class CorruptRecord(ValueError):
    """A file in the store that cannot be decoded; reported by path and skipped, never fatal."""


@dataclass(frozen=True)
class Lease:
    """One leased address. `range_set` is the index of the range set at allocation time."""
    address: IPAddress
    subnet: IPNetwork
    gateway: IPAddress | None
    container_id: str
    ifname: str
    since: float
    range_set: int
    host: str | None = None  # the host that holds it (etcd store; None in a file store: this host)

    @property
    def owner(self) -> tuple[str, str]:
        return (self.container_id, self.ifname)

    @property
    def held_by_docker(self) -> bool:
        return self.container_id.startswith(DOCKER_OWNER_PREFIX) and self.ifname in DOCKER_IFNAMES

    @property
    def held_by_dhcp(self) -> bool:
        return self.container_id.startswith(DHCP_OWNER_PREFIX) and self.ifname == DHCP_IFNAME

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (also what `cni-bridge ipam ls --json` should print)."""
        return {"address": str(self.address), "subnet": str(self.subnet),
                "gateway": None if self.gateway is None else str(self.gateway),
                "container_id": self.container_id, "ifname": self.ifname, "since": self.since,
                "range_set": self.range_set, **({"host": self.host} if self.host is not None else {})}

    def encode(self) -> bytes:
        return (json.dumps(self.to_dict()) + "\n").encode()

    @classmethod
    def decode(cls, raw: bytes) -> "Lease":
        try:
            data = json.loads(raw)
            gateway = data.get("gateway")
            lease = cls(ipaddress.ip_address(data["address"]), ipaddress.ip_network(data["subnet"]),
                        None if gateway is None else ipaddress.ip_address(gateway),
                        str(data["container_id"]), str(data["ifname"]), float(data["since"]),
                        int(data["range_set"]), None if data.get("host") is None else str(data["host"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptRecord(f"{exc.__class__.__name__}: {exc}") from None
        if lease.address not in lease.subnet:
            raise CorruptRecord(f"address {lease.address} is outside subnet {lease.subnet}")
        return lease


def lease_name(address: IPAddress) -> str:
    """Lease files are named by the canonical address text: "is it free" is one stat()."""
    return str(address)


def parse_lease_name(name: str) -> IPAddress | None:
    """The address a directory entry names, or None for any other file (lock, owner.*, temp files).

    Called for every entry of a scan (a /16 directory holds 100k+ names), so IPv4 is parsed by
    hand (several times faster than ipaddress); only canonical spellings count.
    """
    if ":" in name:
        if "%" in name:  # a zone index: never a lease of ours (fd00::5%x is not fd00::5)
            return None
        try:
            address = ipaddress.IPv6Address(name)
        except ValueError:
            return None
        return address if str(address) == name else None
    parts = name.split(".")
    if len(parts) != 4:
        return None
    value = 0
    for part in parts:
        if not part.isdigit() or not part.isascii() or (part[0] == "0" and part != "0") or len(part) > 3:
            return None
        octet = int(part)
        if octet > 255:
            return None
        value = value << 8 | octet
    return ipaddress.IPv4Address(value)


def owner_name(container_id: str, ifname: str) -> str:
    readable = f"{container_id}+{ifname}"
    if len(readable) <= _MAX_READABLE_OWNER:
        return OWNER_PREFIX + readable
    import hashlib  # rare path; hashlib costs ~2 ms to import on every exec otherwise
    return OWNER_PREFIX + "sha256-" + hashlib.sha256(readable.encode()).hexdigest()


def encode_owner(container_id: str, ifname: str, addresses: list[IPAddress], host: str | None = None) -> bytes:
    data: dict[str, Any] = {"container_id": container_id, "ifname": ifname,
                            "addresses": [str(a) for a in addresses]}
    if host is not None:
        data["host"] = host
    return (json.dumps(data) + "\n").encode()


def decode_owner(raw: bytes) -> tuple[str, str, list[IPAddress]]:
    """(container id, ifname, addresses) of an owner index file."""
    try:
        data = json.loads(raw)
        return (str(data["container_id"]), str(data["ifname"]),
                [ipaddress.ip_address(a) for a in data["addresses"]])
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptRecord(f"{exc.__class__.__name__}: {exc}") from None
