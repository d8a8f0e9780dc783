"""macvtap mode: like macvlan (a child of `master` in one of the `macvlanMode` sub-modes, moved
into the container as CNI_IFNAME, see sublink.py), but the child is a macvtap: besides being a
network interface it has a character device, `/dev/tap<ifindex>`, through which a VMM (QEMU
`-netdev tap,fd=N` on the opened device, Kata, KubeVirt) sends and receives the guest's frames.

The device node: the kernel names it after the link's index and re-creates it when the link
moves into the container's namespace (with the index it has there); devtmpfs on /dev shows it at
once (udev, where it runs, too). It is reported as the interface's `socketPath` (CNI 1.1's field
for the path through which the interface's traffic is reached) so the runtime can bind it into
the container; `owner` / `group` are applied to the node so that an unprivileged VMM can open it.
A host without the node (no devtmpfs) gets error 999 rather than a result that names a missing
file. The addresses belong to the guest but are configured on the link as for macvlan: the guest
uses the link's MAC (reported), and the VMM reads its addressing from the result.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from cni_bridge.attachment import Attachment, IPAddress
from cni_bridge.config import NetworkSpec
from cni_bridge.errors import INTERNAL, PluginError
from cni_bridge.kernel.netlink import Link
from cni_bridge.modes import macvlan, sublink
from cni_bridge.modes.common import Lease, container_interface, open_netns

DEVICE_DIR = "/dev"


def device_path(index: int) -> str:
    return f"{DEVICE_DIR}/tap{index}"


def child(spec: NetworkSpec) -> sublink.ChildKind:
    return sublink.ChildKind("macvtap", {"macvtap_mode": spec.macvlan_mode}, mode=spec.macvlan_mode,
                             kernel_feature="CONFIG_MACVTAP / module macvtap", explain=macvlan.explain)


def _device(spec: NetworkSpec):
    def finish(link: Link) -> dict[str, Any]:
        path = device_path(link.index)
        try:
            if spec.owner is not None or spec.group is not None:
                os.chown(path, -1 if spec.owner is None else spec.owner, -1 if spec.group is None else spec.group)
            else:
                os.stat(path)
        except OSError as exc:
            hint = "is devtmpfs mounted on /dev?" if exc.errno == errno.ENOENT else exc.strerror
            raise PluginError(INTERNAL, f"macvtap device {path} of {link.name} is not usable", hint) from None
        return {"socketPath": path}
    return finish


def add(spec: NetworkSpec, att: Attachment, lease: Lease) -> dict[str, Any]:
    return sublink.add(spec, att, lease, child(spec), spec.master, finish=_device(spec))


def delete(spec: NetworkSpec, att: Attachment, addresses: list[IPAddress]) -> None:
    sublink.delete(att)


def check(spec: NetworkSpec, att: Attachment, prev: dict[str, Any]) -> None:
    """sublink's checks, and that prevResult's device is still the link's and present."""
    sublink.check(spec, att, prev, child(spec), spec.master)
    reported = container_interface(prev, att.ifname, att.netns).get("socketPath")
    with open_netns(att) as ns:
        link = ns.link(att.ifname)
    if link is None:
        raise PluginError(INTERNAL, f"interface {att.ifname} not found in the container")
    path = device_path(link.index)
    if reported is not None and reported != path:
        raise PluginError(INTERNAL, f"{att.ifname}'s device is {path}, prevResult says {reported}")
    if not os.path.exists(path):
        raise PluginError(INTERNAL, f"macvtap device {path} of {att.ifname} is missing")
