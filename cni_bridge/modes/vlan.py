"""vlan mode: an 802.1q sub-interface (`vlanId`) of `master` moved into the container. The kernel
allows one link per VLAN id and master, so one container per (master, vlanId); to share a VLAN
between containers use a bridge network with `uplink` + `vlanId` (uplink.py). See sublink.py."""

from __future__ import annotations

import errno
from typing import Any

from cni_bridge.attachment import Attachment, IPAddress
from cni_bridge.config import NetworkSpec
from cni_bridge.errors import config_error
from cni_bridge.kernel.netlink import Link
from cni_bridge.modes import sublink
from cni_bridge.modes.common import Lease


def _explain(spec: NetworkSpec, master: Link, code: int) -> str | None:
    if code == errno.EEXIST:
        return (f"VLAN id {spec.vlan_id} already exists on {master.name} (one link per VLAN id and "
                "master; to share a VLAN use a bridge network with uplink and vlanId)")
    return None


def child(spec: NetworkSpec) -> sublink.ChildKind:
    return sublink.ChildKind("vlan", {"vlan_id": spec.vlan_id}, vlan_id=spec.vlan_id,
                             kernel_feature="CONFIG_VLAN_8021Q / module 8021q", explain=_explain)


def _master(spec: NetworkSpec) -> str:
    if not spec.master:
        raise config_error("mode vlan needs master: the host interface to create the VLAN on")
    return spec.master


def add(spec: NetworkSpec, att: Attachment, lease: Lease) -> dict[str, Any]:
    return sublink.add(spec, att, lease, child(spec), _master(spec))


def delete(spec: NetworkSpec, att: Attachment, addresses: list[IPAddress]) -> None:
    sublink.delete(att)


def check(spec: NetworkSpec, att: Attachment, prev: dict[str, Any]) -> None:
    sublink.check(spec, att, prev, child(spec), _master(spec))


# Docker (libnetwork remote driver) entry points, see sublink.py.
create_network, delete_network, create_endpoint, delete_endpoint = sublink.docker_entry_points(
    child, _master)
