"""macvlan mode: the container gets its own MAC on a parent NIC (`master`; default: the interface
of the host's default route). Sub-modes (`macvlanMode`): bridge (children talk to each other
inside the kernel), private (they cannot), vepa (their traffic goes out to the switch, which must
hairpin it back), passthru (one child owns the NIC). No bridge, no NAT; see sublink.py."""

from __future__ import annotations

import errno
from typing import Any

from cni_bridge.attachment import Attachment, IPAddress
from cni_bridge.config import NetworkSpec
from cni_bridge.kernel.netlink import Link
from cni_bridge.modes import sublink
from cni_bridge.modes.common import Lease


def explain(spec: NetworkSpec, master: Link, code: int) -> str | None:
    if code != errno.EINVAL:
        return None
    if spec.macvlan_mode == "passthru":
        return (f"passthru mode allows a single macvlan on a master and no other macvlan beside it; "
                f"{master.name} already has one (or cannot be a macvlan master)")
    return (f"{master.name} may already carry a passthru macvlan, which excludes all others, "
            "or cannot be a macvlan master")


def child(spec: NetworkSpec) -> sublink.ChildKind:
    return sublink.ChildKind("macvlan", {"macvlan_mode": spec.macvlan_mode}, mode=spec.macvlan_mode,
                             kernel_feature="CONFIG_MACVLAN / module macvlan", explain=explain)


def add(spec: NetworkSpec, att: Attachment, lease: Lease) -> dict[str, Any]:
    return sublink.add(spec, att, lease, child(spec), spec.master)


def delete(spec: NetworkSpec, att: Attachment, addresses: list[IPAddress]) -> None:
    sublink.delete(att)


def check(spec: NetworkSpec, att: Attachment, prev: dict[str, Any]) -> None:
    sublink.check(spec, att, prev, child(spec), spec.master)


# Docker (libnetwork remote driver) entry points, see sublink.py.
create_network, delete_network, create_endpoint, delete_endpoint = sublink.docker_entry_points(
    child, lambda spec: spec.master)
