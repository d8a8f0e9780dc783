"""Bandwidth shaping policy: the `bandwidth` keys, what they become on the host, and when.

The keys are the Go `bandwidth` plugin's, in its units: `ingressRate` / `egressRate` in bits per
second, `ingressBurst` / `egressBurst` in bits; a rate needs its burst and a burst its rate; 0
(or absent) is no limit. Ingress is what the container receives, egress what it sends. They come
from the network configuration's `bandwidth` object (every attachment) or from
`runtimeConfig.bandwidth` (the runtime's, for one attachment, when the config declares
`"capabilities": {"bandwidth": true}`), which replaces the network's object as a whole, as in
the Go plugin.

On the host (bridge mode; the kernel requests are kernel/tc.py):
- ingress: a tbf at the root of the host veth (what the veth sends, the container receives);
- egress: an ifb device (`Attachment.ifb_ifname`) with a tbf at its root, and the host veth's
  received packets redirected to it (ingress qdisc + a match-all u32 filter with mirred).
Each tbf: rate = rate bits / 8 bytes/s, bucket = burst bits / 8 bytes, queue limit = 25 ms at the
rate plus the bucket (the Go plugin's numbers, so a chain that swaps one for the other shapes
the same).

Link modes (macvlan, ipvlan, vlan) are refused: they have no device on the host side of the
attachment, and a shaper inside the container's namespace is under the control of any
container with CAP_NET_ADMIN, which is no limit at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from cni_bridge.crashpoint import step
from cni_bridge.errors import INTERNAL, PluginError, config_error, shown

if TYPE_CHECKING:  # config.py imports this module: parsing loads neither the kernel layer nor more
    from cni_bridge.attachment import Attachment
    from cni_bridge.kernel.netlink import Netlink
    from cni_bridge.modes.common import Undo

CAPABILITY = "bandwidth"
KEYS = ("ingressRate", "ingressBurst", "egressRate", "egressBurst")
LATENCY_S = 0.025            # the queue a tbf keeps beyond its bucket, in time at the rate (Go: 25 ms)
ETHERNET_HEADER = 14         # a tbf counts the frame: the bucket must hold mtu + this
DEFAULT_MTU = 1500
MAX_RATE = 0xFFFFFFFF * 8    # bits/s: a tbf's rate is a u32 of bytes/s (34.3 Gbit/s)
MAX_BURST = 0xFFFFFFFF * 8   # bits: a bucket is at most 4 GiB (Go: "burst cannot be more than 4GB")


@dataclass(frozen=True)
class Bandwidth:
    """Limits of one attachment, in the configuration's units (bits/s, bits). An all-zero
    value means "no limits, but shaping may have been configured before": DEL then removes
    the attachment's ifb; ADD does nothing."""
    ingress_rate: int = 0
    ingress_burst: int = 0
    egress_rate: int = 0
    egress_burst: int = 0

    def __bool__(self) -> bool:
        return bool(self.ingress_rate or self.egress_rate)


@dataclass(frozen=True)
class Tbf:
    """One token bucket as the kernel takes it: bytes/s, bytes, bytes."""
    rate: int
    burst: int
    limit: int


def parse(value: Any, what: str, mtu: int | None) -> Bandwidth:
    """A `bandwidth` object (error 7 otherwise). `mtu`: the attachment's, to refuse a bucket
    smaller than one full-size frame (a tbf never sends a frame larger than its bucket: the
    link would pass small packets only; the Go plugin accepts such a burst silently)."""
    if not isinstance(value, Mapping):
        raise config_error(f"{what} must be a JSON object with {', '.join(KEYS)}, got {shown(value)}")
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise config_error(f"{what}: unsupported key {shown(unknown[0])}",
                           f"pybridge shapes with {', '.join(KEYS)} (no shaped / unshaped subnets)")
    numbers = {key: _bits(value, key, what) for key in KEYS}
    frame_bits = ((mtu or DEFAULT_MTU) + ETHERNET_HEADER) * 8
    for direction in ("ingress", "egress"):
        rate, burst = numbers[f"{direction}Rate"], numbers[f"{direction}Burst"]
        if rate and not burst:
            raise config_error(f"{what}: {direction}Rate needs {direction}Burst (bits) as well")
        if burst and not rate:
            raise config_error(f"{what}: {direction}Burst needs {direction}Rate (bits per second) as well")
        if rate and rate < 8:
            raise config_error(f"{what}: {direction}Rate {rate} is below 8 bits per second (one byte)")
        if rate > MAX_RATE:
            raise config_error(f"{what}: {direction}Rate {rate} is above {MAX_RATE} bits per second "
                               "(a tbf's rate is 32 bits of bytes per second)")
        if burst > MAX_BURST:
            raise config_error(f"{what}: {direction}Burst {burst} is above {MAX_BURST} bits (4 GiB)")
        if burst and burst < frame_bits:
            raise config_error(f"{what}: {direction}Burst {burst} bits is smaller than one full-size frame "
                               f"({frame_bits} bits at mtu {mtu or DEFAULT_MTU})",
                               "the token bucket would never pass such a frame")
    return Bandwidth(numbers["ingressRate"], numbers["ingressBurst"], numbers["egressRate"], numbers["egressBurst"])


def _bits(value: Mapping[str, Any], key: str, what: str) -> int:
    number = value.get(key, 0)
    if isinstance(number, str) and number.strip().isdigit():  # Docker -o values are strings
        number = int(number.strip())
    if isinstance(number, bool) or not isinstance(number, int):
        raise config_error(f"{what}.{key} must be a whole number of bits{' per second' if 'Rate' in key else ''}, "
                           f"got {shown(number)}")
    if number < 0:
        raise config_error(f"{what}.{key} must not be negative, got {number}")
    return number


def requested(config: Mapping[str, Any], mtu: int | None) -> Bandwidth | None:
    """runtimeConfig.bandwidth, parsed; None when the runtime passed none."""
    runtime = config.get("runtimeConfig")
    value = runtime.get(CAPABILITY) if isinstance(runtime, Mapping) else None
    return None if value is None else parse(value, "runtimeConfig.bandwidth", mtu)


def declared(config: Mapping[str, Any]) -> bool:
    """The config declares the capability: DEL and GC then remove an ifb the runtime's
    runtimeConfig may have asked for on ADD."""
    capabilities = config.get("capabilities")
    return isinstance(capabilities, Mapping) and capabilities.get(CAPABILITY) is True


def effective(network: Bandwidth | None, config: Mapping[str, Any], mtu: int | None) -> Bandwidth | None:
    """What applies to one attachment: the runtime's limits, else the network's; an empty
    Bandwidth when neither has limits but the capability is declared (see Bandwidth)."""
    runtime = requested(config, mtu)
    chosen = runtime if runtime is not None else network
    if chosen is None and declared(config):
        return Bandwidth()
    return chosen


def require_bridge(mode: str, bandwidth: Bandwidth | None) -> None:
    if bandwidth and mode != "bridge":
        raise config_error(f"bandwidth limits need mode bridge (this network is mode {mode})",
                           "a macvlan / ipvlan / vlan attachment has no host-side device to shape on, "
                           "and a shaper inside the container's namespace is the container's to remove")


def tbf(rate_bits: int, burst_bits: int) -> Tbf:
    """The Go plugin's numbers: bytes = bits // 8; limit = the bucket + 25 ms at the rate."""
    rate, burst = rate_bits // 8, burst_bits // 8
    return Tbf(rate, burst, int(rate * LATENCY_S) + burst)


# --- on the host ------------------------------------------------------------------------------------
def apply(host: Netlink, att: Attachment, bandwidth: Bandwidth, undo: Undo) -> None:
    """Shape the attachment whose host veth exists (ADD, CreateEndpoint). The qdiscs on the
    veth go with the veth (already on the undo stack); the ifb gets its own undo step. The
    ifb's tbf is in place before anything is redirected to it."""
    veth = host.link(att.host_ifname)
    if veth is None:
        raise PluginError(INTERNAL, f"cannot shape: host interface {att.host_ifname} is gone")
    if bandwidth.egress_rate:
        host.delete_link(att.ifb_ifname)  # stale ifb of an earlier, crashed ADD
        ifb = host.add_ifb(att.ifb_ifname)
        undo.push(lambda: host.delete_link(att.ifb_ifname))
        step("ifb")
        egress = tbf(bandwidth.egress_rate, bandwidth.egress_burst)
        host.set_tbf(ifb.index, egress.rate, egress.burst, egress.limit)
        step("ifb-tbf")
        host.redirect_ingress(veth.index, ifb.index)
        step("ingress-redirect")
    if bandwidth.ingress_rate:
        ingress = tbf(bandwidth.ingress_rate, bandwidth.ingress_burst)
        host.set_tbf(veth.index, ingress.rate, ingress.burst, ingress.limit)
        step("veth-tbf")


def remove(host: Netlink, att: Attachment) -> None:
    """DEL: the ifb (idempotent, no netns needed; the veth's qdiscs went with the veth)."""
    host.delete_link(att.ifb_ifname)
    step("ifb-deleted")


def check(host: Netlink, att: Attachment, bandwidth: Bandwidth) -> None:
    """CHECK: each configured direction has its tbf at the configured rate, and egress its
    ifb with the veth's packets redirected to it."""
    veth = host.link(att.host_ifname)
    if veth is None:
        raise PluginError(INTERNAL, f"host interface {att.host_ifname} missing")
    if bandwidth.ingress_rate:
        _require_tbf(host, veth.index, att.host_ifname, tbf(bandwidth.ingress_rate, bandwidth.ingress_burst), "ingress")
    if bandwidth.egress_rate:
        ifb = host.link(att.ifb_ifname)
        if ifb is None:
            raise PluginError(INTERNAL, f"egress shaping: ifb device {att.ifb_ifname} missing")
        if host.ingress_redirect_target(veth.index) != ifb.index:
            raise PluginError(INTERNAL, f"egress shaping: {att.host_ifname} does not redirect to {att.ifb_ifname}")
        _require_tbf(host, ifb.index, att.ifb_ifname, tbf(bandwidth.egress_rate, bandwidth.egress_burst), "egress")


def _require_tbf(host: Netlink, index: int, name: str, want: Tbf, direction: str) -> None:
    rates = [q.rate for q in host.qdiscs(index) if q.kind == "tbf"]
    if want.rate not in rates:
        found = f"tbf at {rates[0] * 8} bit/s" if rates else "no tbf"
        raise PluginError(INTERNAL, f"{direction} shaping: {name} has {found}, expected {want.rate * 8} bit/s")
