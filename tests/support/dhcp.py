"""DHCP clients for the tests of `dhcp: true` networks: busybox udhcpc in a namespace of the
test, on a veth whose MAC the test chooses, plugged into the network's bridge."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

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
