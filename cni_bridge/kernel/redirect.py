"""tc ingress redirects: every frame arriving on one link leaves through another, untouched.

This is how Kata Containers (its default "tcfilter" network model) and AWS's `tc-redirect-tap`
CNI plugin (Firecracker) join a tap to a veth in the pod's namespace: an ingress qdisc on each
side and a catch-all u32 filter whose mirred action redirects to the other side's egress. The
namespace's own IP stack never sees those frames, so the guest behind the tap owns the
addresses. (matchall would be the natural classifier, but kernels are built without it more
often than without u32; an all-zero u32 key matches every frame just the same.)
"""

from __future__ import annotations

import errno

from cni_bridge.kernel.handle import Handle
from cni_bridge.kernel.nlsock import NetlinkError

INGRESS_PARENT = 0xFFFF0000  # "ffff:"
ETH_P_ALL = 0x0003


class Redirects(Handle):
    """The tc requests of a namespace handle (see netlink.Netlink)."""

    def redirect_ingress(self, from_index: int, to_index: int) -> None:
        """Ingress qdisc on `from_index` (kept if present) and a filter redirecting everything to
        `to_index`'s egress."""
        try:
            self.ipr.tc("add", "ingress", from_index, "ffff:")
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
        self.ipr.tc("add-filter", "u32", from_index, parent=INGRESS_PARENT, protocol=ETH_P_ALL,
                    keys=["0x0/0x0+0"], target=0x10000,
                    action={"kind": "mirred", "direction": "egress", "action": "redirect",
                            "ifindex": to_index})

    def ingress_redirect_target(self, index: int) -> int | None:
        """The link index that `index`'s ingress frames are redirected to, if any."""
        try:
            filters = self.ipr.get_filters(index, parent=INGRESS_PARENT)
        except NetlinkError as exc:
            if exc.code in (errno.EINVAL, errno.ENOENT, errno.ENODEV):
                return None
            raise
        for msg in filters:
            options = msg.get("TCA_OPTIONS")
            act = options.get("TCA_U32_ACT") if options is not None else None
            if act is None:
                continue
            for key, value in act["attrs"]:
                if not key.startswith("TCA_ACT_PRIO"):
                    continue
                opts = value.get("TCA_ACT_OPTIONS")
                parms = opts.get("TCA_MIRRED_PARMS") if opts is not None else None
                if parms is not None:
                    return int(parms["ifindex"])
        return None
