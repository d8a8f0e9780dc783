"""Typed, validated network specs shared by the CNI and Docker front ends.

A front end turns its wire format into a plain dict using the CNI key names (Docker `-o` options
use the same names), and `parse_network` turns that into a `NetworkSpec`. Modes receive only
`NetworkSpec`s, never raw JSON.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Mapping

from cni_bridge import shaping, validate
from cni_bridge.errors import config_error, shown

MODES = ("bridge", "macvlan", "ipvlan", "vlan", "tap", "macvtap")
BRIDGED_MODES = ("bridge", "tap")  # modes whose attachments are ports of the network's bridge
MAX_ID = 0xFFFFFFFE  # uid / gid: the kernel's -1 (0xFFFFFFFF) means "none"
MACVLAN_MODES = ("bridge", "vepa", "private", "passthru")
IPVLAN_MODES = ("l2", "l3", "l3s")
DEFAULT_BRIDGE = "cni0"
VXLAN_KEYS = ("vni", "local", "port", "dev", "group", "mtu")
VXLAN_PORT = 4789  # IANA's vxlan port (the Linux kernel's own default, 8472, predates it)
VNI_MAX = (1 << 24) - 1


@dataclass(frozen=True)
class VxlanSpec:
    """The `vxlan` key of a bridge network: the bridge is joined to the same bridge on other
    hosts through a vxlan device (VNI `vni`, underlay address `local`, UDP `port`). With `group`
    the kernel floods to a multicast group and learns remote MACs; without it the FDB and
    neighbour entries are programmed (cni_bridge/overlay/). `mtu`: the device's and the
    containers' MTU, else the underlay's minus the encapsulation overhead."""
    vni: int
    local: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int = VXLAN_PORT
    dev: str | None = None
    group: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    mtu: int | None = None

    @property
    def overhead(self) -> int:
        """Outer Ethernet 14 + IP (20 or 40) + UDP 8 + vxlan 8: what a frame grows by."""
        return 50 if self.local.version == 4 else 70


@dataclass(frozen=True)
class NetworkSpec:
    """Everything a mode needs to know about a network (not about one container)."""
    name: str
    mode: str = "bridge"
    # bridge mode
    bridge: str = DEFAULT_BRIDGE
    is_gateway: bool = False
    is_default_gateway: bool = False
    force_address: bool = False
    ip_masq: bool = False
    hairpin_mode: bool = False
    promisc_mode: bool = False
    uplink: str | None = None
    internal: bool = False        # Docker --internal: the host forwards nothing in or out
    isolate: bool = False  # walled off from other isolated networks (firewall/isolation.py)
    dhcp: bool = False     # a DHCP server for the network's leases (cni_bridge/dhcp)
    # macvlan / ipvlan / vlan / macvtap
    master: str | None = None
    macvlan_mode: str = "bridge"
    ipvlan_mode: str = "l2"
    vlan_id: int | None = None
    # tap / macvtap: who may open the device (None: root only), and tap multi-queue
    owner: int | None = None
    group: int | None = None
    multi_queue: bool = False
    vxlan: VxlanSpec | None = None  # bridge joined to other hosts' bridges (modes/vxlan.py)
    # all modes
    mtu: int | None = None
    allow_ipv6_on_ipv4_interface: bool = False
    ipam: Mapping[str, Any] = field(default_factory=dict)
    dns: Mapping[str, Any] = field(default_factory=dict)
    # bridge mode: limits of every attachment (shaping.py); the CNI front end puts the
    # runtime's runtimeConfig.bandwidth here instead when it passes one
    bandwidth: shaping.Bandwidth | None = None


def _bool(cfg: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = cfg.get(key, default)
    if isinstance(value, str) and value.lower() in ("true", "false"):  # Docker -o values are strings
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise config_error(f"{key} must be a boolean, got {shown(value)}")
    return value


def _int(cfg: Mapping[str, Any], key: str, lo: int, hi: int, what: str | None = None) -> int | None:
    value = cfg.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise config_error(f"{what or key} must be an integer from {lo} to {hi}, got {shown(value)}")
    return value


def _choice(cfg: Mapping[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    value = cfg.get(key, default)
    if value not in choices:
        raise config_error(f"{key} must be one of {', '.join(choices)}, got {shown(value)}")
    return value


def _optional_ifname(cfg: Mapping[str, Any], key: str, what: str | None = None) -> str | None:
    value = cfg.get(key)
    if value is None or value == "":
        return None
    return validate.ifname(value, what or key)


def _unicast(value: object, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = validate.ip_address(value, what)
    if address.is_multicast or address.is_unspecified:
        raise config_error(f"{what} must be a unicast address of this host, got {shown(value)}")
    return address


def parse_vxlan(value: object) -> VxlanSpec | None:
    """The `vxlan` object (None when absent). Unknown keys are refused so that a typo (`vnid`)
    fails the ADD instead of silently making a local network."""
    if value is None or value == {}:
        return None
    if not isinstance(value, Mapping):
        raise config_error(f"vxlan must be a JSON object, got {shown(value)}")
    unknown = sorted(set(value) - set(VXLAN_KEYS))
    if unknown:
        raise config_error(f"unknown vxlan key {shown(unknown[0])}", "supported: " + ", ".join(VXLAN_KEYS))
    if value.get("vni") in (None, ""):
        raise config_error(f"vxlan needs vni (1-{VNI_MAX})")
    if value.get("local") in (None, ""):
        raise config_error("vxlan needs local: this host's underlay address (the VTEP)")
    local = _unicast(value["local"], "vxlan.local")
    group = None
    if value.get("group") not in (None, ""):
        group = validate.ip_address(value["group"], "vxlan.group")
        if not group.is_multicast:
            raise config_error(f"vxlan.group must be a multicast address, got {shown(value['group'])}")
        if group.version != local.version:
            raise config_error("vxlan.group and vxlan.local must be of the same address family")
    return VxlanSpec(
        vni=_int(value, "vni", 1, VNI_MAX, "vxlan.vni"),
        local=local,
        port=_int(value, "port", 1, 65535, "vxlan.port") or VXLAN_PORT,
        dev=_optional_ifname(value, "dev", "vxlan.dev"),
        group=group,
        mtu=_int(value, "mtu", 68, 65535, "vxlan.mtu"),
    )


def parse_network(cfg: Mapping[str, Any]) -> NetworkSpec:
    """Validate a network configuration (CNI key names). Raises PluginError code 7."""
    if not isinstance(cfg, Mapping):
        raise config_error("network configuration must be a JSON object")
    name = validate.network_name(cfg.get("name"))
    mode = _choice(cfg, "mode", MODES, "bridge")
    ipam = cfg.get("ipam") or {}
    if not isinstance(ipam, Mapping):
        raise config_error("ipam must be a JSON object")
    dns = validate.dns(cfg.get("dns") or None)
    is_default_gateway = _bool(cfg, "isDefaultGateway")
    vlan_id = _int(cfg, "vlanId", 1, 4094) if cfg.get("vlanId") not in (None, "") else None
    if cfg.get("vlanId") not in (None, "") and vlan_id is None:
        raise config_error("vlanId must be an integer from 1 to 4094")
    vxlan = parse_vxlan(cfg.get("vxlan"))
    mtu = _int(cfg, "mtu", 68, 65535)
    if vxlan is not None and vxlan.mtu is not None:
        if mtu is not None and mtu != vxlan.mtu:
            raise config_error(f"mtu {mtu} contradicts vxlan.mtu {vxlan.mtu}", "set one of them")
        mtu = vxlan.mtu
    bandwidth = shaping.parse(cfg["bandwidth"], "bandwidth", mtu) if cfg.get("bandwidth") is not None else None
    spec = NetworkSpec(
        name=name,
        mode=mode,
        bridge=validate.ifname(cfg.get("bridge", DEFAULT_BRIDGE), "bridge"),
        is_gateway=_bool(cfg, "isGateway") or is_default_gateway,
        is_default_gateway=is_default_gateway,
        force_address=_bool(cfg, "forceAddress"),
        ip_masq=_bool(cfg, "ipMasq"),
        hairpin_mode=_bool(cfg, "hairpinMode"),
        promisc_mode=_bool(cfg, "promiscMode"),
        uplink=_optional_ifname(cfg, "uplink"),
        internal=_bool(cfg, "internal"),
        isolate=_bool(cfg, "isolate"),
        dhcp=_bool(cfg, "dhcp"),
        master=_optional_ifname(cfg, "master"),
        macvlan_mode=_choice(cfg, "macvlanMode", MACVLAN_MODES, "bridge"),
        ipvlan_mode=_choice(cfg, "ipvlanMode", IPVLAN_MODES, "l2"),
        vlan_id=vlan_id,
        owner=_int(cfg, "owner", 0, MAX_ID),
        group=_int(cfg, "group", 0, MAX_ID),
        multi_queue=_bool(cfg, "multiQueue"),
        vxlan=vxlan,
        mtu=mtu,
        allow_ipv6_on_ipv4_interface=_bool(cfg, "allowIPv6OnIPv4Interface"),
        ipam=ipam,
        dns=dns,
        bandwidth=bandwidth,
    )
    shaping.require_bridge(spec.mode, spec.bandwidth)
    if spec.internal and spec.mode not in BRIDGED_MODES:
        raise config_error("internal is for bridge networks (a macvlan/ipvlan/vlan link is on the NIC's segment)")
    if spec.internal and spec.ip_masq:
        raise config_error("an internal network cannot masquerade (ipMasq)")
    if spec.dhcp and spec.mode != "bridge":
        raise config_error("dhcp is for bridge networks (the server joins the network's bridge)")
    if spec.mode == "vlan" and spec.vlan_id is None:
        raise config_error("mode vlan needs vlanId (1-4094)")
    if spec.mode in BRIDGED_MODES and spec.vlan_id is not None and spec.uplink is None:
        raise config_error("vlanId on a bridge network needs an uplink NIC (uplink)")
    if spec.multi_queue and spec.mode != "tap":
        raise config_error("multiQueue is for mode tap")
    if (spec.owner is not None or spec.group is not None) and spec.mode not in ("tap", "macvtap"):
        raise config_error("owner and group are for modes tap and macvtap (who may open the device)")
    if vxlan is not None and spec.mode != "bridge":
        raise config_error("vxlan is for bridge networks (mode bridge)")
    if vxlan is not None and spec.uplink is not None:
        raise config_error("a network joins other hosts through an uplink or through vxlan, not both")
    return spec
