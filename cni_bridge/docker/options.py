"""Docker's CreateNetwork request -> the CNI-key-named dict that `config.parse_network` validates.

`docker network create -d pybridge -o KEY=VALUE` options arrive as strings in
Options["com.docker.network.generic"]; `--internal` and `--ipv6` as booleans beside it. The
option names are the CNI config keys (docs/configuration.md), plus Docker's own spellings for the bridge name,
the MTU and masquerade, Docker's macvlan/ipvlan `parent`, and the members of the `bandwidth`
object as options of their own (`-o egressRate=10000000 -o egressBurst=100000`). Anything else is rejected, so a
typo fails `docker network create` instead of being silently ignored.
"""

from __future__ import annotations

from typing import Any, Mapping

from cni_bridge.errors import config_error, shown

GENERIC = "com.docker.network.generic"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
INTERNAL = "com.docker.network.internal"

# -o name -> CNI config key
OPTION_KEYS: dict[str, str] = {
    "mode": "mode",
    "bridge": "bridge",
    "com.docker.network.bridge.name": "bridge",
    "mtu": "mtu",
    "com.docker.network.driver.mtu": "mtu",
    "ipMasq": "ipMasq",
    "com.docker.network.bridge.enable_ip_masquerade": "ipMasq",
    "hairpinMode": "hairpinMode",
    "promiscMode": "promiscMode",
    "forceAddress": "forceAddress",
    "uplink": "uplink",
    "master": "master",
    "parent": "master",
    "macvlanMode": "macvlanMode",
    "ipvlanMode": "ipvlanMode",
    "vlanId": "vlanId",
    "isolate": "isolate",
    # members of the `bandwidth` object (shaping.py): every endpoint of the network is shaped
    "ingressRate": "bandwidth", "ingressBurst": "bandwidth", "egressRate": "bandwidth", "egressBurst": "bandwidth",
    "dhcp": "dhcp",
    # vxlan networks: the keys of the CNI `vxlan` object (see VXLAN_PREFIX)
    "vxlanId": "vxlan.vni",
    "vxlanLocal": "vxlan.local",
    "vxlanPort": "vxlan.port",
    "vxlanDev": "vxlan.dev",
    "vxlanGroup": "vxlan.group",
    "vxlanMtu": "vxlan.mtu",
}
VXLAN_PREFIX = "vxlan."  # -o vxlanId=4242 -> config["vxlan"]["vni"] = "4242"
BRIDGE_PREFIX = "pbr-"


def supported_options() -> str:
    """The list an unknown option is answered with, short enough to read in one error line."""
    own = sorted(k for k in OPTION_KEYS if not k.startswith(("com.docker.", "vxlan", "ingress", "egress")))
    return ("supported: " + ", ".join(own) + ", ingress/egressRate/Burst, vxlanId/Local/Port/Dev/Group/Mtu, "
            "Docker's com.docker.network.* names (docs/docker.md)")


def default_bridge(network_id: str) -> str:
    """Like Docker's br-<id>: unique per network and recognisable as ours (15 bytes)."""
    return BRIDGE_PREFIX + network_id[:11]


def flag(options: Mapping[str, Any], key: str) -> bool:
    """Docker sends booleans, but accept "true"/"false" strings as the -o values are. Anything
    else is refused: `[1]` or "yes" must not silently mean true (or false) for --internal."""
    value = options.get(key, False)
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise config_error(f"{key} must be a boolean (true or false), got {shown(value)}")


def network_config(network_id: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The validated-later config dict of one Docker network (name = the NetworkID)."""
    generic = options.get(GENERIC) or {}
    if not isinstance(generic, Mapping):
        raise config_error(f"Options[{GENERIC}] must be an object of -o KEY=VALUE options")
    internal = flag(options, INTERNAL)
    config: dict[str, Any] = {"name": network_id}
    for key, value in generic.items():
        cni_key = OPTION_KEYS.get(key)
        if cni_key is None:
            raise config_error(f"unknown option -o {shown(key, quote=False)}", supported_options())
        if not isinstance(value, (str, int, bool)):
            raise config_error(f"option -o {key} must be a string, got {shown(value)}")
        if cni_key == "bandwidth":
            config.setdefault("bandwidth", {})[key] = value
            continue
        if cni_key.startswith(VXLAN_PREFIX):  # validated with the CNI key (config.parse_vxlan)
            config.setdefault("vxlan", {})[cni_key[len(VXLAN_PREFIX):]] = value
            continue
        if cni_key in config and config[cni_key] != value:
            raise config_error(f"option -o {key}={shown(value, quote=False)} contradicts another spelling of "
                               f"{cni_key}={shown(config[cni_key], quote=False)}")
        config[cni_key] = value
    config.setdefault("mode", "bridge")
    if config["mode"] == "bridge":
        config.setdefault("bridge", default_bridge(network_id))
        config["isGateway"] = True  # a Docker bridge network always has its gateway on the bridge
        config.setdefault("isolate", True)  # walled off from other networks, as Docker's own
        config.setdefault("ipMasq", not internal)
    if internal:
        if str(config.get("ipMasq", False)).lower() == "true":
            raise config_error("--internal networks cannot masquerade (ipMasq=true)")
        config["ipMasq"] = False
        if config["mode"] == "bridge":
            config["internal"] = True  # dropped at the host (cni_bridge/firewall/internal.py)
    config["isDefaultGateway"] = not internal  # Join hands Docker the gateway -> default route
    return config
