"""Planning an allocation before any store is touched, the same for every store backend: which
range set a requested (static) address belongs to, and which current leases an ADD keeps."""

from __future__ import annotations

from typing import Sequence

from cni_bridge.errors import config_error
from cni_bridge.ipam.config import IPAddress, IpamConfig
from cni_bridge.ipam.lease import Lease
from cni_bridge.ipam.pool import Pool


def assign_requested(network: str, config: IpamConfig, requested: Sequence[IPAddress],
                     allow_gateway: bool) -> dict[int, IPAddress]:
    """Map each static address to the range set that contains it; error 7 if it cannot be."""
    wanted: dict[int, IPAddress] = {}
    gateways = config.gateways()
    for address in dict.fromkeys(requested):
        if getattr(address, "scope_id", None):  # fd00::5%x would be a second lease of fd00::5
            raise config_error(f"requested address {address} must not carry a zone index")
        index = config.set_of(address)
        if index is None:
            ranges = "; ".join(r.describe() for rs in config.ranges for r in rs)
            raise config_error(f"requested address {address} is not in any range of network "
                               f"{network}", f"ranges: {ranges}")
        if index in wanted:
            raise config_error(f"requested addresses {wanted[index]} and {address} are in the same "
                               f"range set {index}; only one address per range set")
        if Pool(config.ranges[index], gateways).never_leased(address) and not (
                allow_gateway and address in gateways):
            raise config_error(f"requested address {address} is a network, broadcast or gateway "
                               "address and cannot be leased")
        wanted[index] = address
    return wanted


def reusable(current: Sequence[Lease], config: IpamConfig, wanted: dict[int, IPAddress]) -> dict[int, Lease]:
    """Idempotent ADD: the attachment's leases that still fit the config and the request, by set."""
    keep: dict[int, Lease] = {}
    for lease in current:
        index = config.set_of(lease.address)
        if index is not None and index not in keep and wanted.get(index, lease.address) == lease.address:
            keep[index] = lease
    return keep
