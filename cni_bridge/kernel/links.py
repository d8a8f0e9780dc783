"""Links of one namespace: lookups, bridges, veth pairs, child links of a NIC (macvlan, ipvlan,
vlan), moving a link into another namespace, and the details CHECK and `status` read."""

from __future__ import annotations

import errno
from dataclasses import dataclass, replace

from cni_bridge.errors import INVALID_CONFIG, PluginError
from cni_bridge.kernel.handle import Handle
from cni_bridge.kernel.nlsock import NetlinkError
from cni_bridge.kernel.tuntap import TunInfo, create_tap, tun_info


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str
    mac: str
    mtu: int
    master: int | None
    up: bool


@dataclass(frozen=True)
class LinkDetails:
    """A link plus what `ip -d link` shows about its parent and kind-specific mode."""
    link: Link
    parent: int | None         # IFLA_LINK: index of the lower device (in `parent_netnsid`'s ns)
    parent_netnsid: int | None  # set when the lower device lives in another namespace
    mode: str | int | None      # macvlan / macvtap mode name, or ipvlan mode number (0 l2, 1 l3, 2 l3s)
    vlan_id: int | None
    tun: TunInfo | None = None  # tun / tap devices: type, owner, group, multi-queue


@dataclass(frozen=True)
class VxlanDetails:
    """What `ip -d link` shows of a vxlan device: the facts pybridge checks before reusing one."""
    link: Link
    vni: int | None
    local: str | None
    group: str | None
    port: int | None
    dev: int | None             # IFLA_VXLAN_LINK: index of the underlay device, if bound to one
    learning: bool
    proxy: bool


def _vxlan_from_msg(msg) -> VxlanDetails | None:
    info = msg.get("IFLA_LINKINFO")
    if not info or info.get("IFLA_INFO_KIND") != "vxlan":
        return None
    data = info.get("IFLA_INFO_DATA")
    get = data.get if data is not None else (lambda key: None)
    return VxlanDetails(_link_from_msg(msg), get("IFLA_VXLAN_ID"),
                        get("IFLA_VXLAN_LOCAL") or get("IFLA_VXLAN_LOCAL6"),
                        get("IFLA_VXLAN_GROUP") or get("IFLA_VXLAN_GROUP6"), get("IFLA_VXLAN_PORT"),
                        get("IFLA_VXLAN_LINK") or None, bool(get("IFLA_VXLAN_LEARNING")),
                        bool(get("IFLA_VXLAN_PROXY")))


def _details_from_msg(msg) -> LinkDetails:
    info = msg.get("IFLA_LINKINFO")
    data = (info.get("IFLA_INFO_DATA") if info else None) or None
    mode: str | int | None = None
    vlan_id = None
    if data is not None:
        for attr in ("IFLA_MACVLAN_MODE", "IFLA_MACVTAP_MODE", "IFLA_IPVLAN_MODE"):
            mode = data.get(attr)
            if mode is not None:
                break
        vlan_id = data.get("IFLA_VLAN_ID")
    return LinkDetails(_link_from_msg(msg), msg.get("IFLA_LINK"), msg.get("IFLA_LINK_NETNSID"),
                       mode, vlan_id, tun_info(data) if info and info.get("IFLA_INFO_KIND") == "tun" else None)


def _link_from_msg(msg) -> Link:
    info = msg.get("IFLA_LINKINFO")
    kind = info.get("IFLA_INFO_KIND") if info else None
    return Link(
        index=msg["index"],
        name=msg.get("IFLA_IFNAME"),
        kind=kind or "",
        mac=msg.get("IFLA_ADDRESS") or "",
        mtu=msg.get("IFLA_MTU") or 0,
        master=msg.get("IFLA_MASTER"),
        up=bool(msg["flags"] & 1),
    )


class Links(Handle):
    """The link requests of a namespace handle (see netlink.Netlink)."""

    def link(self, name: str) -> Link | None:
        # RTM_GETLINK with IFLA_IFNAME: the kernel looks the name up. (get_links(ifname=) dumps
        # every link and filters in Python: O(links), ~0.5 s with 1,000 containers attached.)
        try:
            return Link(*self.raw.get_link(name))
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise

    def link_by_index(self, index: int) -> Link | None:
        try:
            return Link(*self.raw.get_link(index=index))
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise

    def links(self) -> list[Link]:
        return [_link_from_msg(m) for m in self.ipr.get_links()]

    def ensure_bridge(self, name: str, mtu: int | None, promisc: bool) -> Link:
        """Create the bridge if missing; concurrent creators all succeed (EEXIST is fine)."""
        existing = self.link(name)
        if existing is None:
            kwargs: dict = {"ifname": name, "kind": "bridge", "state": "up"}
            if mtu:
                kwargs["mtu"] = mtu
            try:
                self.ipr.link("add", **kwargs)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
            existing = self.link(name)
            if existing is None:  # deleted under our feet by someone else
                raise PluginError(11, f"bridge {name} vanished while being created, try again")
        if existing.kind != "bridge":
            raise PluginError(INVALID_CONFIG, f"{name} already exists and is not a bridge (it is a {existing.kind or 'device'})")
        if not existing.up:
            self.ipr.link("set", index=existing.index, state="up")
        if promisc:
            self.ipr.link("set", index=existing.index, flags=0x100, change=0x100)
        return existing

    def create_veth_into(self, host_name: str, peer_name: str, target: Handle, *, mtu: int | None,
                         master: int | None, peer_mac: str | None = None) -> Link:
        """Veth pair, host end enslaved and up, peer created directly in the target netns."""
        self.raw.add_veth(host_name, peer_name, peer_ns_fd=target.ns_fd, mtu=mtu, master=master,
                          peer_mac=peer_mac, up=False)
        return self._bring_up_bridge_port(host_name)

    def create_veth_pair(self, host_name: str, peer_name: str, *, mtu: int | None, master: int | None,
                         peer_mac: str | None = None) -> Link:
        """Both ends in this namespace (Docker moves the peer into the container itself)."""
        self.raw.add_veth(host_name, peer_name, peer_ns_fd=None, mtu=mtu, master=master,
                          peer_mac=peer_mac, up=False)
        return self._bring_up_bridge_port(host_name)

    def _bring_up_bridge_port(self, name: str) -> Link:
        """Finish a host-side veth end that was created down, already enslaved to its bridge.

        Why not created up: every time a bridge port is enabled or disabled the kernel
        re-evaluates the state of all ports of the bridge (br_port_state_selection, which also
        re-arms each port's multicast timers): O(ports attached). Created up, the port is enabled
        at once (its operstate is still "unknown"), disabled when the first RTM_GETLINK settles
        the operstate to down (no carrier: the container end is down), and enabled again when
        the container end comes up: three passes over all ports per ADD. Created down, settled
        by the RTM_GETLINK below, then set up, it is enabled once, when it gets carrier.

        The same request sets IPv6 address generation to "none" on this end (before carrier,
        so addrconf has not run): a bridge port never needs an address of its own, and with
        one, every port adds a link-local address and fe80::/64 routes, DAD and MLD traffic to
        the host, so route inserts and lookups grow with the containers attached. (Not the
        `disable_ipv6` sysctl: its handler spins on rtnl_trylock() and walks the whole IPv6
        routing table: 32 parallel veth creations took 2.5x as long.) The container end keeps
        its IPv6."""
        created = self.link(name)
        assert created is not None
        self.set_up(created.index, no_ipv6_addresses=True)
        return replace(created, up=True)

    def create_tap(self, name: str, *, owner: int | None, group: int | None, multi_queue: bool,
                   mac: str | None = None, mtu: int | None = None, master: int | None = None) -> Link:
        """A persistent tap in this namespace (kernel/tuntap.py), with its MAC, MTU and bridge set
        in one RTM_SETLINK; left down (the caller brings it up once it is complete)."""
        create_tap(name, owner=owner, group=group, multi_queue=multi_queue, ns_fd=self.ns_fd)
        created = self.link(name)
        if created is None:
            raise NetlinkError(errno.ENODEV, f"tap {name} vanished right after creation")
        changes = {k: v for k, v in (("address", mac), ("mtu", mtu), ("master", master)) if v}
        if changes:
            self.ipr.link("set", index=created.index, **changes)
            created = self.link(name) or created
        return created

    def add_link(self, **kwargs) -> None:
        """Generic link creation for the macvlan/ipvlan/vlan modes (kwargs as pyroute2 link())."""
        self.ipr.link("add", **kwargs)

    def set_link(self, index: int, **kwargs) -> None:
        self.ipr.link("set", index=index, **kwargs)

    def set_up(self, index: int, *, no_ipv6_addresses: bool = False) -> None:
        """`no_ipv6_addresses`: IPv6 address generation "none" in the same request (where the
        kernel has IPv6)."""
        if not no_ipv6_addresses:
            self.raw.set_up(index)
            return
        try:
            self.raw.set_up(index, no_ipv6_addresses=True)
        except NetlinkError as exc:
            if exc.code != errno.EAFNOSUPPORT:  # IPv6 disabled on this host: nothing to avoid
                raise
            self.raw.set_up(index)

    def set_hairpin(self, index: int, on: bool) -> None:
        self.raw.set_port_hairpin(index, on)

    def delete_link(self, name: str) -> bool:
        """Delete by name; False when it was not there (DEL must be idempotent)."""
        try:
            self.raw.delete_link(name)
            return True
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                return False
            raise

    # --- child links of a NIC (macvlan / ipvlan / vlan modes, vlan uplinks) ----------------
    def default_route_link(self) -> Link | None:
        """The link of the main table's IPv4 default route (else IPv6): macvlan's default master."""
        for family in (2, 10):
            for msg in self.ipr.get_routes(family=family, table=254):
                if msg["dst_len"] != 0:
                    continue
                oif = msg.get("RTA_OIF")
                if oif is None:  # multipath: take the first hop
                    hops = msg.get("RTA_MULTIPATH") or []
                    oif = hops[0]["oif"] if hops else None
                if oif is not None:
                    return self.link_by_index(oif)
        return None

    def move_link(self, index: int, target: Handle, new_name: str) -> None:
        """Move a link into `target`'s namespace and rename it there, in one RTM_SETLINK
        (the kernel renames after the move, so a host link of the same name never collides)."""
        self.ipr.link("set", index=index, net_ns_fd=target.ns_fd, ifname=new_name)

    def _get_link_msg(self, name: str):
        """The full RTM_GETLINK answer for `name` (with IFLA_LINKINFO), None if there is none."""
        try:  # RTM_GETLINK by name (the kernel looks it up; get_links(ifname=) would dump all)
            msgs = self.ipr.link("get", ifname=name)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return msgs[0] if msgs else None

    def link_details(self, name: str) -> LinkDetails | None:
        """Kind-specific facts CHECK compares: parent index, macvlan/ipvlan mode, vlan id."""
        msg = self._get_link_msg(name)
        return _details_from_msg(msg) if msg is not None else None

    # --- vxlan devices (bridge networks that span hosts, modes/vxlan.py) -----------------------
    def add_vxlan(self, name: str, *, vni: int, local: str, port: int, dev: int | None, group: str | None,
                  mtu: int, master: int) -> None:
        """A vxlan device enslaved to `master`, down (the caller brings it up once it is set).
        Without a group the FDB and neighbour entries are programmed: no learning (a frame from
        a peer must not move a MAC), ARP/ND answered from the neighbour table (proxy)."""
        six = ":" in local
        kwargs: dict = {"ifname": name, "kind": "vxlan", "vxlan_id": vni, "vxlan_port": port,
                        ("vxlan_local6" if six else "vxlan_local"): local, "mtu": mtu, "master": master,
                        "vxlan_learning": 1 if group else 0, "vxlan_proxy": 0 if group else 1}
        if group:
            kwargs["vxlan_group6" if six else "vxlan_group"] = group
        if dev is not None:
            kwargs["vxlan_link"] = dev
        self.ipr.link("add", **kwargs)

    def vxlan_details(self, name: str) -> VxlanDetails | None:
        """None when there is no such link; a link of another kind gives details with vni None."""
        msg = self._get_link_msg(name)
        if msg is None:
            return None
        return _vxlan_from_msg(msg) or VxlanDetails(_link_from_msg(msg), None, None, None, None, None, False, False)

    def all_vxlan_details(self) -> list[VxlanDetails]:
        """Every vxlan device of this namespace (one dump; `cni-bridge status`)."""
        return [d for d in (_vxlan_from_msg(m) for m in self.ipr.get_links()) if d is not None]

    # --- read-only discovery (cni-bridge status / gc; cni_bridge/inventory/gather.py) -------------
    def all_link_details(self) -> list[LinkDetails]:
        """Every link of this namespace with its parent / peer (one dump, not one per link)."""
        return [_details_from_msg(msg) for msg in self.ipr.get_links()]

    def netnsid_of(self, ns_fd: int) -> int | None:
        """The id this namespace knows the namespace open at `ns_fd` by (what a veth's
        IFLA_LINK_NETNSID names), None if it has none. Never assigns an id."""
        try:
            reply = self.ipr.get_netnsid(fd=ns_fd)
        except NetlinkError:
            return None
        nsid = reply.get("nsid") if isinstance(reply, dict) else None
        return None if nsid is None or nsid < 0 or nsid >= 0xFFFFFFFF else int(nsid)
