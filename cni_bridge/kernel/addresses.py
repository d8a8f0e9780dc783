"""Interface addresses of one namespace."""

from __future__ import annotations

import errno
import ipaddress

from cni_bridge.kernel.handle import Handle
from cni_bridge.kernel.nlsock import NetlinkError

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class Addresses(Handle):
    """The address requests of a namespace handle (see netlink.Netlink)."""

    def addresses(self, index: int, family: int = 0) -> list[IPInterface]:
        """Addresses of one interface; `family` 0 (both), 2 or 10. The kernel dumps only that
        interface's addresses (strict netlink), so the cost is flat in the interfaces attached."""
        return [ipaddress.ip_interface((ipaddress.ip_address(packed), prefixlen))
                for packed, prefixlen in self.raw.addresses(index, family)]

    def add_address(self, index: int, iface: IPInterface) -> None:
        """Add an address; already present is fine. IPv6 skips DAD so it is usable at once
        (IFA_F_NODAD); IPv4 gets the subnet's broadcast address below /31."""
        try:
            self.raw.add_address(index, iface)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise

    def delete_address(self, index: int, iface: IPInterface) -> None:
        try:
            self.ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except NetlinkError as exc:
            if exc.code not in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                raise
