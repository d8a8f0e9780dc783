"""Steps every mode shares: configuring the container side, checking it, undo bookkeeping."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from typing import Callable, Iterator, NoReturn

from cni_bridge.attachment import Addressing, Attachment, IPAddress, RouteConfig
from cni_bridge.crashpoint import step
from cni_bridge.errors import INTERNAL, INVALID_ENV, PluginError, config_error
from cni_bridge.kernel import netlink
from cni_bridge.kernel.netlink import Netlink, NetnsGone

# What a mode's add() gets instead of an address: it calls it (runs IPAM) only once it has seen
# that the container has no interface of that name, so an ADD refused for an existing interface
# never touches the lease store (whose rollback would free a live attachment's lease).
Lease = Callable[[], "Addressing"]

DEFAULT_V4 = ipaddress.ip_network("0.0.0.0/0")
DEFAULT_V6 = ipaddress.ip_network("::/0")


class Undo:
    """A stack of compensating actions, run in reverse when an ADD fails half-way."""

    def __init__(self) -> None:
        self._steps: list[Callable[[], object]] = []

    def push(self, step: Callable[[], object]) -> None:
        self._steps.append(step)

    def run(self) -> None:
        while self._steps:
            step = self._steps.pop()
            try:
                step()
            except Exception:  # best effort: keep undoing the rest
                pass

    def fail(self, exc: BaseException) -> NoReturn:
        """Undo everything, then re-raise; a netlink error becomes a PluginError the user can read.
        Call from an `except BaseException as exc:` block."""
        self.run()
        if isinstance(exc, netlink.NetlinkError):
            raise PluginError(INTERNAL, "netlink request failed", netlink.netlink_error_text(exc)) from None
        raise exc


@contextlib.contextmanager
def open_netns(att: Attachment) -> Iterator[Netlink]:
    """The container namespace; a missing or invalid CNI_NETNS is an environment error (code 4),
    raised on entry, before anything has been done."""
    if not att.netns:
        raise PluginError(INVALID_ENV, "CNI_NETNS is required for this command")
    with contextlib.ExitStack() as stack:
        try:
            ns = stack.enter_context(netlink.netns(att.netns))
        except NetnsGone as exc:
            raise PluginError(INVALID_ENV, f"CNI_NETNS: {exc}") from None
        yield ns


def require_free_ifname(ns: Netlink, att: Attachment) -> None:
    """The spec: an ADD for an interface that already exists in the container MUST fail. A
    runtime that repeats an ADD (e.g. after the fast path's "try again") gets this, and nothing
    has been changed; it must DEL the attachment before adding it again."""
    if ns.link(att.ifname) is not None:
        raise PluginError(INVALID_ENV, f"container already has an interface named {att.ifname} (CNI_IFNAME)",
                          f"in CNI_NETNS {att.netns}; nothing was changed. An ADD for an existing interface "
                          "is an error (CNI spec): DEL the attachment before adding it again")


def with_default_routes(addressing: Addressing, enabled: bool) -> Addressing:
    """Add a default route per family via that family's gateway (isDefaultGateway)."""
    if not enabled:
        return addressing
    routes = list(addressing.routes)
    for ip in addressing.ips:
        default = DEFAULT_V4 if ip.address.version == 4 else DEFAULT_V6
        if ip.gateway is not None and not any(r.dst == default for r in routes):
            routes.append(RouteConfig(default, ip.gateway))
    return Addressing(addressing.ips, routes, addressing.dns)


def configure_container(ns: Netlink, index: int, addressing: Addressing, *,
                        allow_ipv6_on_ipv4: bool = False) -> None:
    """Addresses, link up, routes. Routes whose gateway is not on-link are reported clearly.

    An interface given IPv4 addresses only is brought up with IPv6 address generation "none"
    (in the same netlink request): no link-local address, so no DAD, MLD reports or router
    solicitations, which a bridge without a multicast querier floods into every container
    attached (work for the whole host that grows with the containers). Docker does the like
    since 26.0.2 (it sets disable_ipv6). Not the `disable_ipv6` sysctl here: each new namespace's
    first /proc/sys/net/ipv6 lookup walks one cached entry per namespace that made one before,
    so it would grow with the containers itself. Router advertisements are still processed (see
    docs/configuration.md). `allowIPv6OnIPv4Interface` keeps the kernel default, like the reference
    plugins. An interface without any address (L2-only networks) is not touched."""
    versions = {ip.address.version for ip in addressing.ips}
    no_ipv6 = versions == {4} and not allow_ipv6_on_ipv4
    for ip in addressing.ips:
        ns.add_address(index, ip.address)
        step("container-address")
    ns.set_up(index, no_ipv6_addresses=no_ipv6)
    step("container-link-up")
    for route in addressing.routes:
        gw = route.gw
        if gw is None:
            gw = next((ip.gateway for ip in addressing.ips
                       if ip.gateway is not None and ip.address.version == route.dst.version), None)
        try:
            ns.add_route(route.dst, gw, index)
        except netlink.NetlinkError as exc:
            raise PluginError(INTERNAL, f"cannot add route {route.dst} via {gw}",
                              netlink.netlink_error_text(exc)) from None
        step("container-route")


def check_container(ns: Netlink, ifname: str, mac: str | None, addressing: Addressing) -> int:
    """Verify the container interface, its addresses and routes; returns its index."""
    link = ns.link(ifname)
    if link is None:
        raise PluginError(INTERNAL, f"interface {ifname} not found in the container")
    if mac and link.mac.lower() != mac.lower():
        raise PluginError(INTERNAL, f"interface {ifname} has MAC {link.mac}, expected {mac}")
    present = set(ns.addresses(link.index))
    for ip in addressing.ips:
        if ip.address not in present:
            raise PluginError(INTERNAL, f"address {ip.address} missing on {ifname} in the container")
    for family in (socket.AF_INET, socket.AF_INET6):
        have = {(dst, gw) for dst, gw, _ in ns.routes(family)}
        for route in addressing.routes:
            if route.dst.version != (4 if family == socket.AF_INET else 6):
                continue
            if not any(dst == route.dst and (route.gw is None or gw == route.gw) for dst, gw in have):
                raise PluginError(INTERNAL, f"route {route.dst}" + (f" via {route.gw}" if route.gw else "")
                                  + " missing in the container")
    return link.index


def container_interface(prev: dict, ifname: str, netns: str | None) -> dict:
    """The container-side interface entry of a prevResult (matching name and sandbox)."""
    for entry in prev.get("interfaces") or []:
        if entry.get("name") == ifname and entry.get("sandbox"):
            return entry
    raise config_error(f"prevResult has no interface {ifname} in a sandbox")


def require_mtu_within(mtu: int | None, limit: int, what: str) -> None:
    if mtu is not None and mtu > limit:
        raise config_error(f"mtu {mtu} is larger than the {what}'s mtu {limit}")


__all__ = ["Undo", "open_netns", "configure_container", "check_container", "with_default_routes",
           "container_interface", "IPAddress", "Lease", "require_free_ifname"]
