"""Main-table routes of one namespace."""

from __future__ import annotations

import errno
import ipaddress

from cni_bridge.kernel.handle import Handle
from cni_bridge.kernel.nlsock import NetlinkError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Routes(Handle):
    """The route requests of a namespace handle (see netlink.Netlink)."""

    def add_route(self, dst: IPNetwork, gateway: IPAddress | None, index: int | None = None) -> None:
        try:
            self.raw.add_route(dst, gateway, index)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise

    def routes(self, family: int) -> list[tuple[IPNetwork, IPAddress | None, int | None]]:
        """Main-table routes as (dst, gateway, oif)."""
        out = []
        for msg in self.ipr.get_routes(family=family, table=254):
            dst = msg.get("RTA_DST")
            plen = msg["dst_len"]
            if dst is None:
                dst = "0.0.0.0" if family == 2 else "::"
            gw = msg.get("RTA_GATEWAY")
            out.append((ipaddress.ip_network(f"{dst}/{plen}", strict=False),
                        ipaddress.ip_address(gw) if gw else None, msg.get("RTA_OIF")))
        return out
