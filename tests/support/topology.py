"""The uplink topology: a stand-in for a physical NIC with an "outside world" behind it.

Why: no test may touch a real NIC. A veth pair plays the NIC: one end stays in the root
namespace (use it as `master` / `uplink`), the other lives in a namespace that plays the outside
host, so masquerade, flat and macvlan networks can be proven by traffic to that namespace only.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from tests.support.host import run
from tests.support.netns import Netns, create_netns
from tests.support.session import session, unique_name
from tests.support.subnets import OUTSIDE_POOL4, unique_subnet

__all__ = ["Uplink", "create_uplink"]


@dataclasses.dataclass
class Uplink:
    """A stand-in for a physical NIC: `host_if` in the root namespace (use it as `master` /
    `uplink`); its peer `outside_if` lives in `outside`, a namespace playing the outside world."""

    host_if: str
    outside: Netns
    outside_if: str
    subnet: ipaddress.IPv4Network
    outside_ip: ipaddress.IPv4Address
    host_ip: ipaddress.IPv4Address | None
    subnet6: ipaddress.IPv6Network | None = None
    outside_ip6: ipaddress.IPv6Address | None = None
    host_ip6: ipaddress.IPv6Address | None = None

    def delete(self) -> None:
        run(["ip", "link", "delete", self.host_if], check=False)  # takes the peer with it
        self.outside.delete()


def create_uplink(
    outside_cidr: str | None = None,
    *,
    host_addr: bool = True,
    ipv6: bool = True,
    outside_gateway: str | None = None,
) -> Uplink:
    """Make the veth pair and the outside namespace.

    `outside_cidr` (e.g. '198.18.7.2/24') is the outside end's address; default: .2 of a fresh
    /24 from 198.18.0.0/15. With `host_addr` the root end gets .1 (the host's "public" address,
    what a masqueraded container appears as); turn it off when the uplink will be enslaved to a
    bridge. `outside_gateway` adds a default route in the outside namespace (only there).
    """
    if outside_cidr:
        iface = ipaddress.ip_interface(outside_cidr)
        subnet = iface.network
        outside_ip = iface.ip
        s = session()
        s.subnets.append(subnet)
        if s.registered:
            s.register()
    else:
        subnet = unique_subnet(4, 24, pool=str(OUTSIDE_POOL4))
        outside_ip = subnet.network_address + 2
    host_ip = subnet.network_address + 1 if host_addr else None
    if host_ip == outside_ip:
        host_ip = subnet.network_address + 2
    outside = create_netns(unique_name("out"))
    host_if = unique_name("up")
    outside_if = "ext0"
    up = Uplink(host_if, outside, outside_if, subnet, outside_ip, host_ip)
    try:
        run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", outside_if, "netns", outside.name])
        outside.ip("addr", "add", f"{outside_ip}/{subnet.prefixlen}", "dev", outside_if)
        outside.ip("link", "set", outside_if, "up")
        if host_ip is not None:
            run(["ip", "addr", "add", f"{host_ip}/{subnet.prefixlen}", "dev", host_if])
        if ipv6:
            up.subnet6 = unique_subnet(6)
            up.outside_ip6 = up.subnet6.network_address + 2
            outside.ip("addr", "add", f"{up.outside_ip6}/64", "dev", outside_if, "nodad")
            if host_addr:
                up.host_ip6 = up.subnet6.network_address + 1
                run(["ip", "addr", "add", f"{up.host_ip6}/64", "dev", host_if, "nodad"])
        if outside_gateway:
            outside.ip("route", "add", "default", "via", outside_gateway)
        run(["ip", "link", "set", host_if, "up"])
    except Exception:
        up.delete()
        raise
    return up
