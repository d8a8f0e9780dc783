"""gc's judgement: what in an `Inventory` is stale. Pure (no file, no kernel).

- a lease (CNI attachment) judged stale: released, with its masquerade entries;
- a masquerade set element whose owner (a host veth name) is on no host link and belongs to no
  live endpoint;
- a masquerade table of a known network without elements;
- a VM port (`cni-bridge vm`) whose tap or record is gone: the rest of it (tap, lease,
  masquerade entries, record);
- a pybridge host veth (`veth` + 11 hex) or default-named VM tap (`pbtap` + 10 hex) on the bridge of a pybridge bridge network whose lease
  store is known, that no owner claims (`Claims`: every lease store, every Docker endpoint
  record, whatever networks were asked for). Bridges where an owner's claims are out of sight
  (`Claims.unprovable`) are left alone and said so (`held_back`).
- a pybridge ifb device (`pbifb` + 10 hex, shaping.py) whose host veth (`veth` + the same 10 hex
  + 1) is on no host link: the attachment it shaped is gone (a DEL that did not know of the
  shaping, or a crash). Not tied to a network: reported with network "".
- a vxlan port (`vx-<vni>`) alone on such a bridge, with no attached endpoint.
Never: Docker IPAM leases and Docker endpoints (dockerd owns them), endpoints that are attached
or cannot be judged, tables of networks not found here.

A finding is a proposal only: reclaim.py re-verifies each right before removing it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from cni_bridge.attachment import IFB_PREFIX
from cni_bridge.inventory.judge import BRIDGE_MODES, owned_addresses
from cni_bridge.inventory.model import STALE, Inventory, Network
from cni_bridge.vm import names as vm_names

HOST_VETH = re.compile(r"^veth[0-9a-f]{11}$")
IFB_DEVICE = re.compile(rf"^{IFB_PREFIX}([0-9a-f]{{10}})$")
LEASE, ELEMENT, TABLE, PORT, VM_PORT, IFB, VXLAN = ("lease", "masquerade element", "table", "port", "VM port", "ifb",
                                                "vxlan device")


@dataclass(frozen=True)
class Finding:
    network: str
    kind: str                  # LEASE, ELEMENT, TABLE, PORT, VM_PORT, IFB or VXLAN
    what: str
    why: str
    subject: str = ""          # LEASE: "<container id> <ifname>"; ELEMENT: its owner; PORT, VM_PORT, IFB, VXLAN: the link name
    index: int | None = None   # PORT, IFB, VXLAN: the link's index when judged (a new link of that name is not it)


def findings(inv: Inventory) -> list[Finding]:
    """Everything stale in the inventory, network by network."""
    out: list[Finding] = []
    judged_ports: set[str] = set()
    for net in inv.networks:
        vm_ports = stale_vm_ports(net)  # their taps go with them, not as unclaimed ports
        judged_ports |= {f.subject for f in vm_ports}
        out += stale_leases(net) + vm_ports + orphan_elements(net, inv) + empty_table(net)
        ports = unclaimed_ports(net, inv, judged_ports)
        judged_ports |= {f.subject for f in ports}
        out += ports + unused_vxlan(net, inv)
    return out + orphan_ifbs(inv.links)


def orphan_ifbs(links: Mapping[str, Any]) -> list[Finding]:
    """pybridge ifb devices without their host veth (see the module docstring)."""
    out = []
    for name, link in sorted(links.items()):
        match = IFB_DEVICE.match(name)
        if match and link.kind == "ifb" and not veth_of_ifb(match.group(1), links):
            out.append(Finding("", IFB, f"ifb device {name}", f"no host veth veth{match.group(1)}? is left",
                               name, link.index))
    return out


def veth_of_ifb(digits: str, names: Iterable[str]) -> bool:
    """Is there a host veth whose name the ifb's digits begin (Attachment.ifb_ifname)?"""
    prefix = "veth" + digits
    return any(n.startswith(prefix) and HOST_VETH.match(n) for n in names)


def unused_vxlan(net: Network, inv: Inventory) -> list[Finding]:
    """A vxlan port alone on its bridge (its containers went without DEL): the host would still
    be a VTEP of the VNI. Only when no endpoint of the network is attached."""
    if not net.vxlan or not port_candidates(net, inv) or any(ep.state != STALE for ep in net.endpoints):
        return []
    bridge = inv.links[net.bridge or ""]
    device = inv.links.get(net.vxlan["device"])
    if device is None or any(link.master == bridge.index and link.name != device.name for link in inv.links.values()):
        return []
    return [Finding(net.name, VXLAN, f"vxlan device {device.name} (VNI {net.vxlan['vni']}) on {bridge.name}",
                    "no other port on the bridge", device.name, device.index)]


def stale_leases(net: Network) -> list[Finding]:
    return [Finding(net.name, LEASE, f"lease {','.join(ep.leased)} of {ep.container_id} {ep.ifname}"
                    + (f" (+ masquerade {', '.join(ep.masquerade)})" if ep.masquerade else ""),
                    ep.why, f"{ep.container_id} {ep.ifname}")
            for ep in net.endpoints if ep.state == STALE and ep.source == "cni"]


def stale_vm_ports(net: Network) -> list[Finding]:
    """A VM port whose tap or record is gone: what is left of it (tap, lease, masquerade, record)."""
    return [Finding(net.name, VM_PORT, f"VM port {ep.ifname}" + (f" lease {','.join(ep.leased)}" if ep.leased else "")
                    + (f" (+ masquerade {', '.join(ep.masquerade)})" if ep.masquerade else ""), ep.why, ep.ifname)
            for ep in net.endpoints if ep.state == STALE and ep.source == "vm"]


def orphan_elements(net: Network, inv: Inventory) -> list[Finding]:
    """Elements whose owner is on no host link and is no endpoint's (live ones keep theirs, a
    stale lease's go with the lease)."""
    known = {ep.host_ifname for ep in net.endpoints}
    owners = sorted({o for o in net.masquerade.values() if o and o not in known and o not in inv.links})
    return [Finding(net.name, ELEMENT, f"masquerade {', '.join(owned_addresses(net, owner))} (owner {owner})",
                    f"host link {owner} is gone", owner) for owner in owners]


def empty_table(net: Network) -> list[Finding]:
    if net.table_present and not net.masquerade:
        return [Finding(net.name, TABLE, f"empty table inet {net.table}", "no masquerade entries")]
    return []


def port_candidates(net: Network, inv: Inventory) -> bool:
    """Only a pybridge bridge network with a known lease store can tell its ports from others'."""
    return bool(net.bridge and net.plugin == "pybridge" and net.mode in BRIDGE_MODES and net.data_dir
                and net.bridge in inv.links and inv.claims.why_unprovable(net.bridge) is None)


def unclaimed_ports(net: Network, inv: Inventory, judged: set[str]) -> list[Finding]:
    if not port_candidates(net, inv):
        return []
    bridge = inv.links[net.bridge or ""]
    return [Finding(net.name, PORT, f"host link {link.name} on {bridge.name}", "no lease or endpoint claims it",
                    link.name, link.index)
            for link in sorted(inv.links.values(), key=lambda link: link.name)
            if link.master == bridge.index and (HOST_VETH.match(link.name) or (
                link.kind == "tun" and vm_names.DEFAULT_TAP.match(link.name)))
            and link.name not in inv.claims.ports and link.name not in judged]


def held_back(inv: Inventory) -> list[str]:
    """Bridges whose ports gc would judge but cannot: why, one line each."""
    out = {}
    for net in inv.networks:
        why = inv.claims.why_unprovable(net.bridge) if net.bridge else None
        if why and net.plugin == "pybridge" and net.mode in BRIDGE_MODES and net.data_dir:
            out[net.bridge] = f"ports of bridge {net.bridge} ({why})"
    return list(out.values())
