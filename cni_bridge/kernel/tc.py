"""Traffic control of one namespace: ifb devices, token bucket (tbf) qdiscs, and the ingress
redirect that hands a device's received packets to an ifb (where they can be shaped on egress).

Why these pieces: Linux shapes only what a device sends. A host veth *sends* what the
container receives, so a tbf at its root limits the container's ingress. What the container
sends arrives on the host veth's *ingress*, where only policing is possible; an ingress qdisc
with a match-all filter redirects those packets to an ifb device, and a tbf at the ifb's root
shapes them (the seed's IFB, the Go bandwidth plugin's layout). The match-all filter is u32
with an empty key plus the mirred action: kernels without the `matchall` classifier or the
`clsact` qdisc (this project's CI host) have u32, mirred and the ingress qdisc.

The same redirect, one in each direction, joins a tap to a veth in a pod's namespace (CNI mode
`tap`): Kata Containers' default "tcfilter" network model and AWS's `tc-redirect-tap` plugin for
Firecracker do it so; the namespace's own stack never sees those frames, so the guest behind the
tap owns the addresses.

All requests go through pyroute2 on the namespace's handle (rare requests: only attachments
that are shaped pay for them; the tc modules load on first use).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from cni_bridge.kernel.handle import Handle
from cni_bridge.kernel.links import Link
from cni_bridge.kernel.nlsock import NetlinkError

ROOT_HANDLE = 0x10000         # 1:   the tbf at the device's root
INGRESS_HANDLE = 0xFFFF0000   # ffff: the ingress qdisc
ETH_P_ALL = 0x0003            # the filter's protocol: every packet
MATCH_ALL = ["0x0/0x0+0"]     # u32 key that every packet matches
FLOW_ID = 0x10001             # 1:1, the class the u32 filter names (unused by the redirect)
U32_MAX = 0xFFFFFFFF


@dataclass(frozen=True)
class Qdisc:
    """What CHECK and the tests compare: the kind, where it hangs, a tbf's rate (bytes/s)."""
    kind: str
    handle: int
    parent: int
    rate: int | None = None


class Tc(Handle):
    """The tc requests of a namespace handle (see netlink.Netlink)."""

    def add_ifb(self, name: str) -> Link:
        """Create the ifb device `name` and bring it up (an ifb that is down drops what is
        redirected to it), without IPv6 addresses: it needs no link-local address and
        fe80::/64 route on the host (the mode is set while it is down: see set_no_ipv6_addresses)."""
        self.ipr.link("add", ifname=name, kind="ifb")
        index = Link(*self.raw.get_link(name)).index
        try:
            self.raw.set_no_ipv6_addresses(index)
        except NetlinkError as exc:
            if exc.code != errno.EAFNOSUPPORT:  # IPv6 disabled on this host: nothing to avoid
                raise
        self.raw.set_up(index)
        return Link(*self.raw.get_link(name))

    def set_tbf(self, index: int, rate: int, burst: int, limit: int) -> None:
        """A tbf at the root of the device: `rate` bytes/s, a bucket of `burst` bytes, a queue
        of `limit` bytes. The bucket is sent to the kernel in scheduler ticks, a u32: a burst
        longer than that many ticks at `rate` is cut to the longest that fits (about 274 s of
        the rate on a 64 ticks/us clock), rather than wrapping round to a tiny bucket."""
        self.ipr.tc("replace", "tbf", index, ROOT_HANDLE, rate=rate, burst=_fit_burst(rate, burst),
                    limit=min(limit, U32_MAX))

    def redirect_ingress(self, index: int, target: int) -> None:
        """Every packet the device receives goes out of `target` instead (an ifb: it then
        comes back to the stack as if received by the device, after the ifb's qdisc; a veth
        or a tap: the frame leaves through it untouched). An ingress qdisc already there is kept."""
        try:
            self.ipr.tc("add", "ingress", index, INGRESS_HANDLE)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
        self.ipr.tc("add-filter", "u32", index, parent=INGRESS_HANDLE, protocol=ETH_P_ALL, prio=1,
                    keys=MATCH_ALL, target=FLOW_ID,
                    action={"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": target})

    def qdiscs(self, index: int) -> list[Qdisc]:
        """The device's qdiscs, [] when it is gone."""
        try:
            msgs = self.ipr.get_qdiscs(index)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                return []
            raise
        return [_qdisc(m) for m in msgs if m["index"] == index]

    def ingress_redirect_target(self, index: int) -> int | None:
        """The ifindex the device's ingress filters redirect to (mirred), None if none does."""
        try:
            msgs = self.ipr.get_filters(index, parent=INGRESS_HANDLE)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                return None
            raise
        for msg in msgs:
            options = msg.get_attr("TCA_OPTIONS")
            actions = options.get_attr("TCA_U32_ACT") if options is not None else None
            for _, action in actions["attrs"] if actions is not None else ():
                parms = _mirred_parms(action)
                if parms is not None:
                    return parms["ifindex"]
        return None


def _mirred_parms(action) -> dict | None:
    if action is None or action.get_attr("TCA_ACT_KIND") != "mirred":
        return None
    options = action.get_attr("TCA_ACT_OPTIONS")
    return options.get_attr("TCA_MIRRED_PARMS") if options is not None else None


def _qdisc(msg) -> Qdisc:
    kind = msg.get_attr("TCA_KIND") or ""
    rate = None
    if kind == "tbf":
        options = msg.get_attr("TCA_OPTIONS")
        parms = options.get_attr("TCA_TBF_PARMS") if options is not None else None
        rate = parms["rate"] if parms is not None else None
    return Qdisc(kind, msg["handle"], msg["parent"], rate)


def _fit_burst(rate: int, burst: int) -> int:
    """The largest bucket (bytes) not above `burst` whose transmission time at `rate` fits the
    tbf's u32 tick field (pyroute2 converts with the kernel's psched clock)."""
    from pyroute2.netlink.rtnl.tcmsg.common import calc_xmittime  # lazy: only shaped attachments
    if calc_xmittime(rate, burst) <= U32_MAX:
        return burst
    ticks_per_byte = calc_xmittime(rate, rate) / rate  # ticks of one second, per byte of it
    return int((U32_MAX - 1) / ticks_per_byte)
