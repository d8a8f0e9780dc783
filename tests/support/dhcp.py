"""DHCP clients for the tests of `dhcp: true` networks: busybox udhcpc in a namespace of the
test, on a veth whose MAC the test chooses, plugged into the network's bridge."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

from tests.support.cnitool import CniTool
from tests.support.session import unique_name
from tests.support.subnets import unique_subnet

MTU = 1400
NAMESERVER = "192.0.2.53"
BUSYBOX = shutil.which("busybox") or "/bin/busybox"

# udhcpc runs this on every event; on "bound" it prints the lease (and sets the address, so a
# ping can follow). Variables: busybox networking/udhcp/dhcpc.c.
SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew)
    for var in ip mask router mtu dns staticroutes; do eval "echo LEASE $var=\\$$var"; done
    busybox ip addr add "$ip/$mask" dev "$interface" 2>/dev/null
    [ -n "$mtu" ] && busybox ip link set "$interface" mtu "$mtu"
    ;;
esac
exit 0
"""


def write_script(directory: Path) -> Path:
    path = directory / "udhcpc.script"
    path.write_text(SCRIPT)
    os.chmod(path, 0o755)
    return path


def plug(ns: Any, bridge: str, host_name: str, mac: str, ifname: str = "eth0") -> None:
    """A veth from `ns` (its end `ifname` with `mac`) to `bridge` (host end `host_name`, up)."""
    subprocess.run(["ip", "link", "add", host_name, "type", "veth", "peer", "name", ifname,
                    "address", mac, "netns", ns.name], check=True)
    subprocess.run(["ip", "link", "set", host_name, "master", bridge, "up"], check=True)
    ns.ip("link", "set", ifname, "up")


def lease(ns: Any, script: Path, ifname: str = "eth0", tries: int = 3) -> dict[str, str] | None:
    """One bounded udhcpc run (-n: give up after `tries` discovers, 1 s apart; -q: quit once
    bound; -B: ask for broadcast answers, the test's MAC may exist twice on the bridge). The
    lease's variables, or None when no server answered."""
    proc = ns.run(BUSYBOX, "udhcpc", "-i", ifname, "-s", str(script), "-t", str(tries), "-T", "1",
                  "-n", "-q", "-B", "-f", "-O", "mtu", "-O", "staticroutes", check=False)
    found = dict(line[len("LEASE "):].split("=", 1) for line in proc.stdout.splitlines()
                 if line.startswith("LEASE ") and "=" in line)
    return {k: v.strip() for k, v in found.items()} if found.get("ip") else None


def dhcp_conf(cni: CniTool, subnet: Any) -> dict[str, Any]:
    """A `dhcp: true` bridge network (unique names) with an MTU, a route and a name server, so
    that every option the server hands out can be checked."""
    plugin = {"type": "pybridge", "bridge": unique_name("br"), "isGateway": True, "isDefaultGateway": True,
              "ipMasq": False, "mtu": MTU, "dhcp": True, "dns": {"nameservers": [NAMESERVER]},
              "ipam": {"type": "pybridge-ipam", "ranges": [[{"subnet": str(subnet)}]],
                       "routes": [{"dst": "198.51.100.0/24"}], "dataDir": str(cni.data_dir)}}
    return {"cniVersion": "1.1.0", "name": unique_name("net"), "plugins": [plugin]}


@contextlib.contextmanager
def dhcp_network(cni: CniTool) -> Iterator[dict[str, Any]]:
    """A dhcp network's config; whatever is left at the end (attachments, server, bridge) goes."""
    from cni_bridge.dhcp import stop  # lazy: tests/support is imported by unprivileged tests too
    conf = dhcp_conf(cni, unique_subnet(4, 24))
    try:
        yield conf
    finally:
        for entry in cni.cached_attachments(conf["name"]):
            cni.delete(conf, "", container_id=entry.container_id, ifname=entry.ifname, raise_on_error=False)
        stop(conf["name"])
        subprocess.run(["ip", "link", "del", conf["plugins"][0]["bridge"]], capture_output=True)
