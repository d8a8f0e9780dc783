"""tap mode: a tap device named CNI_IFNAME in the container's namespace, for VM runtimes whose
VMM runs in the pod's namespace (Kata Containers, Firecracker) and opens that tap by name.

How the tap reaches the network: exactly like a bridge attachment up to the pod's namespace (the
network's bridge, gateway, forwarding, masquerade: modes/bridge.py), a veth pair whose host end
(`veth<11 hex>`) is a bridge port; its other end stays in the namespace under a derived name
(`pbr<11 hex>`, `peer_name`), and a tc ingress redirect in each direction joins it to the tap
(kernel/redirect.py). That is Kata's default "tcfilter" model and what AWS's `tc-redirect-tap`
CNI plugin does for Firecracker. Why not a tap made on the host and enslaved to the bridge: a
bridge port cannot live in another namespace (moving it out of the host removes it from the
bridge), and the runtime expects the tap inside the pod.

The addresses belong to the guest behind the tap: the result lists them on the tap's interface
entry (runtimes hand them to the guest), but nothing in the namespace carries them, so the
namespace's own stack never answers for the guest (the redirect bypasses it anyway). The tap's
MAC (CNI_ARGS MAC / runtimeConfig.mac when given) is the one reported: the guest NIC must use it.

DEL deletes the host veth (its peer goes with it) and, when the namespace is still there, the
tap; a namespace that is gone took the tap with it (the kernel deletes virtual links of a dying
namespace). GC drops masquerade members as the bridge mode does.
"""

from __future__ import annotations

import contextlib
from typing import Any

from cni_bridge.attachment import Addressing, Attachment, IPAddress
from cni_bridge.config import NetworkSpec
from cni_bridge.crashpoint import step
from cni_bridge.errors import INTERNAL, PluginError
from cni_bridge.kernel import netlink
from cni_bridge.kernel.netlink import Netlink, NetnsGone
from cni_bridge.modes import bridge
from cni_bridge.modes.common import (
    Lease,
    Undo,
    container_interface,
    open_netns,
    require_free_ifname,
    with_default_routes,
)

PEER_PREFIX = "pbr"  # + 11 hex digits of Attachment.host_ifname: the veth end inside the namespace


def peer_name(att: Attachment) -> str:
    """The namespace-side veth end, derived like the host end so DEL needs no state."""
    return PEER_PREFIX + att.host_ifname[len("veth"):]


def make_tap(where: Netlink, name: str, *, owner: int | None, group: int | None, multi_queue: bool,
             mac: str | None, mtu: int | None, master: int | None = None) -> netlink.Link:
    """A persistent tap in `where`'s namespace (also the host's: `cni-bridge vm attach`), with
    the device errors (EPERM, EBUSY, EINVAL ...) said in the mode's words."""
    try:
        return where.create_tap(name, owner=owner, group=group, multi_queue=multi_queue, mac=mac, mtu=mtu,
                                master=master)
    except OSError as exc:
        raise PluginError(INTERNAL, f"cannot create tap device {name}",
                          f"/dev/net/tun: {exc.strerror or exc}") from None


def add(spec: NetworkSpec, att: Attachment, lease: Lease) -> dict[str, Any]:
    undo = Undo()
    peer = peer_name(att)
    with netlink.root() as host, open_netns(att) as ns:
        try:
            require_free_ifname(ns, att)  # before anything is leased or created
            addressing = lease()
            port = bridge.setup_network(host, spec, addressing)
            host.delete_link(att.host_ifname)  # stale end of an earlier, crashed ADD
            veth = host.create_veth_into(att.host_ifname, peer, ns, mtu=spec.mtu, master=port.index)
            undo.push(lambda: host.delete_link(att.host_ifname))
            step("veth-into-netns")
            if spec.hairpin_mode:
                host.set_hairpin(veth.index, True)
                step("hairpin")
            tap = make_tap(ns, att.ifname, owner=spec.owner, group=spec.group, multi_queue=spec.multi_queue,
                           mac=att.mac, mtu=spec.mtu)
            undo.push(lambda: ns.delete_link(att.ifname))
            step("tap-created")
            inner = ns.link(peer)
            if inner is None:
                raise PluginError(INTERNAL, f"veth end {peer} not found in the container")
            for index in (inner.index, tap.index):
                ns.set_up(index, no_ipv6_addresses=True)
            step("container-link-up")
            ns.redirect_ingress(inner.index, tap.index)
            ns.redirect_ingress(tap.index, inner.index)
            step("tc-redirect")
            addressing = with_default_routes(addressing, spec.is_default_gateway)
            return bridge.join_network(host, spec, att, addressing, undo, port, veth, tap.mac)
        except BaseException as exc:
            undo.fail(exc)


def delete(spec: NetworkSpec, att: Attachment, addresses: list[IPAddress]) -> None:
    """Idempotent; without the namespace only the host side is left to remove."""
    bridge.delete(spec, att, addresses)
    if not att.netns:
        return
    with contextlib.suppress(NetnsGone), netlink.netns(att.netns) as ns:
        ns.delete_link(att.ifname)
        step("tap-deleted")


def check(spec: NetworkSpec, att: Attachment, prev: dict[str, Any]) -> None:
    """The tap exists in the namespace with the owner, group and queue mode asked for, the MAC
    of prevResult, and the redirects both ways to the veth end whose host side is on the bridge."""
    addressing = Addressing.from_result(prev)
    entry = container_interface(prev, att.ifname, att.netns)
    with open_netns(att) as ns:
        details = ns.link_details(att.ifname)
        if details is None or details.tun is None or not details.tun.tap:
            raise PluginError(INTERNAL, f"{att.ifname} in the container is not a tap device")
        tun = details.tun
        wanted = (spec.owner, spec.group, spec.multi_queue)
        if (tun.owner, tun.group, tun.multi_queue) != wanted:
            raise PluginError(INTERNAL, f"tap {att.ifname} has owner {tun.owner}, group {tun.group}, multi-queue "
                              f"{tun.multi_queue}; expected {wanted[0]}, {wanted[1]}, {wanted[2]}")
        if entry.get("mac") and details.link.mac.lower() != str(entry["mac"]).lower():
            raise PluginError(INTERNAL, f"tap {att.ifname} has MAC {details.link.mac}, expected {entry['mac']}")
        inner = ns.link(peer_name(att))
        if inner is None:
            raise PluginError(INTERNAL, f"veth end {peer_name(att)} missing in the container")
        if ns.ingress_redirect_target(inner.index) != details.link.index or \
                ns.ingress_redirect_target(details.link.index) != inner.index:
            raise PluginError(INTERNAL, f"the tc redirects between {peer_name(att)} and {att.ifname} are missing")
    bridge.check_host_side(spec, att.host_ifname, addressing)


gc = bridge.gc
