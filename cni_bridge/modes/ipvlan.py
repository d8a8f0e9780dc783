"""ipvlan mode: like macvlan, but every child shares the parent's MAC and the kernel demultiplexes
by IP address. `ipvlanMode` l2 | l3 | l3s. Chained after another plugin without `master`, the
parent is the single interface of prevResult, and without an `ipam` block prevResult's addresses
configure the ipvlan link (both as the reference plugin). See sublink.py for the life cycle."""

from __future__ import annotations

import errno
from typing import Any

from cni_bridge import validate
from cni_bridge.attachment import Addressing, Attachment, IPAddress
from cni_bridge.config import NetworkSpec
from cni_bridge.errors import config_error
from cni_bridge.kernel.netlink import Link
from cni_bridge.modes import sublink
from cni_bridge.modes.common import Lease

USES_PREV_RESULT = True
MODE_NUMBERS = {"l2": 0, "l3": 1, "l3s": 2}  # IFLA_IPVLAN_MODE


def _explain(spec: NetworkSpec, master: Link, code: int) -> str | None:
    if code == errno.EINVAL:
        return f"{master.name} cannot be an ipvlan master (it must be an Ethernet device, not loopback)"
    return None


def child(spec: NetworkSpec) -> sublink.ChildKind:
    number = MODE_NUMBERS[spec.ipvlan_mode]
    return sublink.ChildKind("ipvlan", {"ipvlan_mode": number}, mode=number, mac_allowed=False,
                             kernel_feature="CONFIG_IPVLAN / module ipvlan", explain=_explain)


def chained_master(spec: NetworkSpec, prev: dict[str, Any] | None) -> str | None:
    """`master`, else (chained) the single named interface of prevResult, else None (the
    interface of the default route)."""
    if spec.master or not prev:
        return spec.master
    interfaces = prev.get("interfaces") or []
    if len(interfaces) == 1 and isinstance(interfaces[0], dict) and interfaces[0].get("name"):
        return validate.ifname(interfaces[0]["name"], "master (from prevResult)")
    raise config_error("chained ipvlan without master: prevResult must hold exactly one named "
                       "interface to use as the master", f"it holds {len(interfaces)}")


def add(spec: NetworkSpec, att: Attachment, lease: Lease,
        prev: dict[str, Any] | None = None) -> dict[str, Any]:
    def addressing() -> Addressing:
        leased = lease()
        if prev and not spec.ipam and not leased.ips:
            configured = Addressing.from_result(prev)
            return Addressing(configured.ips, configured.routes, leased.dns or configured.dns)
        return leased
    return sublink.add(spec, att, addressing, child(spec), chained_master(spec, prev))


def delete(spec: NetworkSpec, att: Attachment, addresses: list[IPAddress]) -> None:
    sublink.delete(att)


def check(spec: NetworkSpec, att: Attachment, prev: dict[str, Any]) -> None:
    # prevResult of CHECK is the final result: a chained master is its one host-side interface.
    master = spec.master
    if master is None:
        host_side = [i.get("name") for i in prev.get("interfaces") or []
                     if isinstance(i, dict) and i.get("name") and not i.get("sandbox")]
        if len(host_side) == 1:
            master = validate.ifname(host_side[0], "master (from prevResult)")
    sublink.check(spec, att, prev, child(spec), master)


DOCKER_SETS_MAC = False  # children share the master's MAC: the Docker driver must not pick one


# Docker (libnetwork remote driver) entry points, see sublink.py.
create_network, delete_network, create_endpoint, delete_endpoint = sublink.docker_entry_points(
    child, lambda spec: spec.master)
