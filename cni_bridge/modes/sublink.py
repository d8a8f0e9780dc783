"""What macvlan, ipvlan and vlan modes share: a child link of a host NIC (the `master`) that is
moved into the container as CNI_IFNAME.

Life cycle of one attachment:
1. create the child on the host under a *deterministic* temporary name (`temp_name`), so that a
   crash before step 2 leaves something DEL / GC can find by name and delete;
2. one RTM_SETLINK moves it into the netns and renames it to CNI_IFNAME (no collision with a host
   link called like CNI_IFNAME, the reason the reference plugins use a temporary name too);
3. addresses, link up, routes (modes/common.configure_container).
DEL deletes the temporary name on the host and CNI_IFNAME (or a half-renamed temporary name) in
the netns when it still exists; a deleted netns took the link with it. No bridge, no NAT.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from cni_bridge.attachment import Addressing, Attachment, build_result, interface_entry
from cni_bridge.config import NetworkSpec
from cni_bridge.crashpoint import step
from cni_bridge.errors import INTERNAL, PluginError, config_error
from cni_bridge.kernel import netlink
from cni_bridge.kernel.netlink import Link, Netlink, NetnsGone
from cni_bridge.modes.common import (
    Lease,
    Undo,
    check_container,
    configure_container,
    container_interface,
    open_netns,
    require_free_ifname,
    require_mtu_within,
    with_default_routes,
)

TEMP_PREFIX = "pbl"  # + 11 hex digits of Attachment.host_ifname: 14 bytes


@dataclass(frozen=True)
class ChildKind:
    """How to create one child link and how to recognise it again in CHECK."""
    kind: str                                   # rtnetlink kind: macvlan | ipvlan | vlan
    attrs: dict[str, Any] = field(default_factory=dict)  # kind-specific pyroute2 link() arguments
    mode: str | int | None = None               # expected LinkDetails.mode (None: not compared)
    vlan_id: int | None = None                  # expected LinkDetails.vlan_id
    mac_allowed: bool = True                    # ipvlan children share the master's MAC
    kernel_feature: str = ""                    # named in the error when the kernel lacks the kind
    # errno of a failed creation -> why, in the mode's words (None: no specific explanation)
    explain: Callable[[NetworkSpec, Link, int], str | None] | None = None


def temp_name(att: Attachment) -> str:
    """Host-side name of the child between creation and the move: derived from container id +
    ifname like the bridge mode's veth name, so DEL and GC can delete a leftover without state."""
    return TEMP_PREFIX + att.host_ifname[len("veth"):]


def resolve_master(host: Netlink, spec: NetworkSpec, name: str | None) -> Link:
    """The parent NIC: `name`, else the interface of the host's default route (reference
    plugins' default); checks that it exists and that `mtu` does not exceed its MTU."""
    if name is None:
        link = host.default_route_link()
        if link is None:
            raise config_error(f"mode {spec.mode}: no master given and the host has no default route "
                               "to take it from", "set \"master\" to the parent interface")
    else:
        link = host.link(name)
        if link is None:
            raise config_error(f"mode {spec.mode}: master interface {name} not found on the host")
    require_mtu_within(spec.mtu, link.mtu, f"master {link.name}")
    return link


def _creation_error(spec: NetworkSpec, child: ChildKind, master: Link,
                    exc: netlink.NetlinkError) -> PluginError:
    what = f"cannot create a {child.kind} link on {master.name}"
    text = netlink.netlink_error_text(exc)
    if exc.code == 95:  # EOPNOTSUPP: "Unknown device type", or a lower device that refuses
        if child.kind == "vlan" and os.path.exists("/proc/net/vlan"):
            return config_error(f"{what}: {master.name} cannot carry VLANs", text)
        return config_error(f"this kernel has no {child.kind} support ({child.kernel_feature} missing)", text)
    reason = child.explain(spec, master, exc.code) if child.explain is not None else None
    if reason:
        return config_error(f"{what}: {reason}", text)
    if exc.code == 16:  # EBUSY: the master is a bridge port or a master of another link type
        return config_error(f"{what}: {master.name} is busy (enslaved to a bridge/bond, or already the "
                            "parent of links of another type)", text)
    if exc.code == 17:  # EEXIST
        return PluginError(INTERNAL, f"{what}: a link with the same name or VLAN id already exists", text)
    return PluginError(INTERNAL, what, text)


def create_child(host: Netlink, spec: NetworkSpec, att: Attachment, child: ChildKind,
                 master: Link, name: str) -> None:
    """Create the child link `name` on `master` in the host namespace (also what a Docker driver
    needs: Docker moves and renames the interface itself)."""
    kwargs: dict[str, Any] = {"ifname": name, "kind": child.kind, "link": master.index, **child.attrs}
    if spec.mtu:
        kwargs["mtu"] = spec.mtu
    if att.mac:
        kwargs["address"] = att.mac
    try:
        host.add_link(**kwargs)
    except netlink.NetlinkError as exc:
        raise _creation_error(spec, child, master, exc) from None


def add(spec: NetworkSpec, att: Attachment, lease: Lease, child: ChildKind,
        master_name: str | None, finish: Callable[[Link], dict[str, Any]] | None = None) -> dict[str, Any]:
    """`finish`: called with the configured link in the namespace; what it returns is added to
    the link's interface entry of the result (macvtap: the character device)."""
    if att.mac and not child.mac_allowed:
        raise config_error(f"mode {spec.mode} cannot set a MAC address: {child.kind} links share "
                           "the master's MAC")
    tmp = temp_name(att)
    undo = Undo()
    with netlink.root() as host, open_netns(att) as ns:
        try:
            master = resolve_master(host, spec, master_name)
            require_free_ifname(ns, att)  # before anything is leased or created
            addressing = lease()
            host.delete_link(tmp)  # left by an ADD that crashed before the move
            create_child(host, spec, att, child, master, tmp)
            undo.push(lambda: host.delete_link(tmp))
            step(f"{child.kind}-created")
            created = host.link(tmp)
            if created is None:
                raise PluginError(INTERNAL, f"{child.kind} link {tmp} vanished right after creation")
            try:
                host.move_link(created.index, ns, att.ifname)
            except BaseException:
                with contextlib.suppress(Exception):  # moved but not renamed; never delete a
                    ns.delete_link(tmp)                 # CNI_IFNAME that we did not make
                raise
            undo.push(lambda: ns.delete_link(att.ifname))
            step(f"{child.kind}-moved-into-netns")
            inner = ns.link(att.ifname)
            if inner is None:
                raise PluginError(INTERNAL, f"{att.ifname} not found in the container after the move")
            if addressing.ips:  # announce the (possibly reused) address at once, as the reference does
                ns.set_sysctl(f"net/ipv4/conf/{att.ifname}/arp_notify", "1")
                ns.set_sysctl(f"net/ipv6/conf/{att.ifname}/ndisc_notify", "1")
                step("arp-notify-sysctl")
            addressing = with_default_routes(addressing, spec.is_default_gateway)
            configure_container(ns, inner.index, addressing,
                                allow_ipv6_on_ipv4=spec.allow_ipv6_on_ipv4_interface)
            entry = interface_entry(att.ifname, inner.mac, att.netns)
            if finish is not None:
                entry.update(finish(inner))
            return build_result([entry], 0, addressing)
        except netlink.NetlinkError as exc:
            undo.run()
            raise PluginError(INTERNAL, f"{child.kind}: netlink request failed",
                              netlink.netlink_error_text(exc)) from None
        except BaseException:
            undo.run()
            raise


def delete(att: Attachment) -> None:
    """Idempotent; works without the netns (the link died with it) and after a crashed ADD."""
    tmp = temp_name(att)
    with netlink.root() as host:
        host.delete_link(tmp)
    if not att.netns:
        return
    try:
        with netlink.netns(att.netns) as ns:
            if not ns.delete_link(att.ifname):
                ns.delete_link(tmp)
    except NetnsGone:
        pass


def check(spec: NetworkSpec, att: Attachment, prev: dict[str, Any], child: ChildKind,
          master_name: str | None) -> None:
    """The interface exists in the netns, is a `child.kind` link of the master in the expected
    mode / VLAN id, and carries the addresses and routes of prevResult."""
    addressing = Addressing.from_result(prev)
    entry = container_interface(prev, att.ifname, att.netns)
    if entry.get("sandbox") != att.netns:
        raise PluginError(INTERNAL, f"prevResult puts {att.ifname} in {entry.get('sandbox')}, "
                          f"not in {att.netns}")
    with netlink.root() as host:
        master = resolve_master(host, spec, master_name)
    with open_netns(att) as ns:
        check_container(ns, att.ifname, entry.get("mac"), addressing)
        details = ns.link_details(att.ifname)
    if details is None:
        raise PluginError(INTERNAL, f"interface {att.ifname} not found in the container")
    if details.link.kind != child.kind:
        raise PluginError(INTERNAL, f"{att.ifname} in the container is a {details.link.kind or 'device'}, "
                          f"not a {child.kind} link")
    if child.mode is not None and details.mode != child.mode:
        raise PluginError(INTERNAL, f"{att.ifname} is in {child.kind} mode {details.mode}, "
                          f"expected {child.mode}")
    if child.vlan_id is not None and details.vlan_id != child.vlan_id:
        raise PluginError(INTERNAL, f"{att.ifname} has VLAN id {details.vlan_id}, expected {child.vlan_id}")
    # The parent index is only comparable when it lives in another namespace (the host).
    if details.parent_netnsid is not None and details.parent != master.index:
        raise PluginError(INTERNAL, f"{att.ifname} is not a child of master {master.name}")
    if spec.mtu and details.link.mtu != spec.mtu:
        raise PluginError(INTERNAL, f"{att.ifname} has mtu {details.link.mtu}, expected {spec.mtu}")


# --- Docker (libnetwork remote driver) ---------------------------------------------------------
# Docker moves and renames the interface itself (Join returns `src_name`), so the child is only
# created on the host under that name; after Leave Docker moves it back, DeleteEndpoint deletes it.

def docker_create_network(spec: NetworkSpec, master_name: str | None) -> dict[str, Any]:
    """CreateNetwork: nothing to build, but a missing master or too large an MTU fails now."""
    with netlink.root() as host:
        resolve_master(host, spec, master_name)
    return {}


def docker_create_endpoint(spec: NetworkSpec, att: Attachment, child: ChildKind, master_name: str | None,
                           src_name: str) -> str | None:
    """The child link `src_name` on the master; returns its MAC (None when the kind shares the
    master's, so that Docker does not try to set one)."""
    if att.mac and not child.mac_allowed:
        raise config_error(f"mode {spec.mode} cannot set a MAC address: {child.kind} links share "
                           "the master's MAC")
    with netlink.root() as host:
        master = resolve_master(host, spec, master_name)
        host.delete_link(src_name)  # left by a CreateEndpoint that crashed
        create_child(host, spec, att, child, master, src_name)
        created = host.link(src_name)
        if created is None:
            raise PluginError(INTERNAL, f"{child.kind} link {src_name} vanished right after creation")
        return created.mac if child.mac_allowed else None


def docker_delete_endpoint(src_name: str) -> None:
    """Idempotent: the link may have died with the container's namespace."""
    with netlink.root() as host:
        host.delete_link(src_name)


def docker_entry_points(child: Callable[[NetworkSpec], ChildKind],
                        master: Callable[[NetworkSpec], str | None]) -> tuple[Callable[..., Any], ...]:
    """create_network, delete_network, create_endpoint, delete_endpoint of one child-link mode,
    given how the mode names its child kind and its master."""
    def create_network(spec: NetworkSpec, addressing: Addressing) -> dict[str, Any]:
        return docker_create_network(spec, master(spec))

    def delete_network(spec: NetworkSpec, created: dict[str, Any]) -> None:
        """Nothing was built for the network itself."""

    def create_endpoint(spec: NetworkSpec, att: Attachment, addressing: Addressing, src_name: str) -> str | None:
        return docker_create_endpoint(spec, att, child(spec), master(spec), src_name)

    def delete_endpoint(spec: NetworkSpec, att: Attachment, addresses: list, src_name: str) -> None:
        docker_delete_endpoint(src_name)

    return create_network, delete_network, create_endpoint, delete_endpoint
