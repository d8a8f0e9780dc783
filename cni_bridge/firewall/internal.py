"""Internal networks (Docker `--internal`): the host forwards nothing into or out of their
bridges; members reach each other (bridged, or routed between the bridge's own subnets) and
nothing else.

Without this an internal network is only "internal" because its containers get no default
route: a container that adds a route itself (NET_ADMIN), or sends frames to the gateway's MAC,
leaves the network. Docker's built-in driver drops such traffic at the host; so does pybridge.

One shared table `inet pybridge_internal` holds the set of internal bridges and two constant
rules in a forward-hook chain: drop what comes in on an internal bridge and goes out on another
interface, and the reverse. A `drop` there is final whatever other tables accept. Adding or
removing a network is one element; the table goes with the last element.
"""

from __future__ import annotations

import re

from cni_bridge.errors import INTERNAL, PluginError
from cni_bridge.firewall.names import SHARED_TABLES
from cni_bridge.kernel.nft import NftError, nft

TABLE = SHARED_TABLES[2]
_T = f"inet {TABLE}"


def _script(bridge: str) -> list[str]:
    return [
        f"add table {_T}",
        f"add set {_T} internal {{ type ifname; }}",
        f"add set {_T} internal_self {{ type ifname . ifname; }}",
        f"add chain {_T} forward {{ type filter hook forward priority filter - 1; policy accept; }}",
        f"flush chain {_T} forward",
        f"add rule {_T} forward iifname @internal iifname . oifname != @internal_self drop",
        f"add rule {_T} forward oifname @internal iifname . oifname != @internal_self drop",
        f'add element {_T} internal {{ "{bridge}" }}',
        f'add element {_T} internal_self {{ "{bridge}" . "{bridge}" }}',
    ]


def add(bridge: str) -> None:
    """Wall `bridge` off (idempotent; cheap enough for every CreateEndpoint)."""
    try:
        nft.run("\n".join(_script(bridge)) + "\n")
    except NftError as exc:
        raise PluginError(INTERNAL, f"cannot isolate internal bridge {bridge}", str(exc)) from None


def remove(bridge: str) -> None:
    """Take `bridge` out of the set (idempotent); the table goes with the last bridge."""
    current = bridges()
    if bridge not in current:
        return
    if current == [bridge]:
        script = [f"delete table {_T}"]
    else:
        script = [f'delete element {_T} internal {{ "{bridge}" }}',
                  f'delete element {_T} internal_self {{ "{bridge}" . "{bridge}" }}']
    try:
        nft.run("\n".join(script) + "\n")
    except NftError as exc:
        raise PluginError(INTERNAL, f"cannot remove the isolation of bridge {bridge}", str(exc)) from None


def bridges() -> list[str]:
    """The bridges walled off now (status, tests); empty without the table."""
    try:
        text = nft.run(f"list set {_T} internal")
    except NftError:
        return []
    block = text.split("elements = {", 1)[1] if "elements = {" in text else ""
    return re.findall(r'"([^"]+)"', block.split("}", 1)[0])
