"""Test topologies that need no real NIC.

* The uplink: a stand-in for a physical NIC with an "outside world" behind it. Why: no test may
  touch a real NIC. A veth pair plays the NIC: one end stays in the root namespace (use it as
  `master` / `uplink`), the other lives in a namespace that plays the outside host, so
  masquerade, flat and macvlan networks can be proven by traffic to that namespace only.
* The underlay: several simulated hosts (each a network namespace with its own pybridge run
  dir, the plugin exec'd inside it with `ip netns exec`) joined by a switch (a bridge in a
  namespace of its own), for networks that span hosts (vxlan). Nothing of it is in the root
  namespace: not a link, not a route.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.cnitool import CniTool
from tests.support.dockerd import socket_answers
from tests.support.host import run
from tests.support.netns import Netns, create_netns
from tests.support.session import session, unique_name
from tests.support.subnets import OUTSIDE_POOL4, unique_subnet

__all__ = ["SimHost", "Underlay", "Uplink", "create_underlay", "create_uplink"]


@dataclasses.dataclass
class Uplink:
    """A stand-in for a physical NIC: `host_if` in the root namespace (use it as `master` /
    `uplink`); its peer `outside_if` lives in `outside`, a namespace playing the outside world."""

    host_if: str
    outside: Netns
    outside_if: str
    subnet: ipaddress.IPv4Network
    outside_ip: ipaddress.IPv4Address
    host_ip: ipaddress.IPv4Address | None
    subnet6: ipaddress.IPv6Network | None = None
    outside_ip6: ipaddress.IPv6Address | None = None
    host_ip6: ipaddress.IPv6Address | None = None

    def delete(self) -> None:
        run(["ip", "link", "delete", self.host_if], check=False)  # takes the peer with it
        self.outside.delete()


def create_uplink(
    outside_cidr: str | None = None,
    *,
    host_addr: bool = True,
    ipv6: bool = True,
    outside_gateway: str | None = None,
) -> Uplink:
    """Make the veth pair and the outside namespace.

    `outside_cidr` (e.g. '198.18.7.2/24') is the outside end's address; default: .2 of a fresh
    /24 from 198.18.0.0/15. With `host_addr` the root end gets .1 (the host's "public" address,
    what a masqueraded container appears as); turn it off when the uplink will be enslaved to a
    bridge. `outside_gateway` adds a default route in the outside namespace (only there).
    """
    if outside_cidr:
        iface = ipaddress.ip_interface(outside_cidr)
        subnet = iface.network
        outside_ip = iface.ip
        s = session()
        s.subnets.append(subnet)
        if s.registered:
            s.register()
    else:
        subnet = unique_subnet(4, 24, pool=str(OUTSIDE_POOL4))
        outside_ip = subnet.network_address + 2
    host_ip = subnet.network_address + 1 if host_addr else None
    if host_ip == outside_ip:
        host_ip = subnet.network_address + 2
    outside = create_netns(unique_name("out"))
    host_if = unique_name("up")
    outside_if = "ext0"
    up = Uplink(host_if, outside, outside_if, subnet, outside_ip, host_ip)
    try:
        run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", outside_if, "netns", outside.name])
        outside.ip("addr", "add", f"{outside_ip}/{subnet.prefixlen}", "dev", outside_if)
        outside.ip("link", "set", outside_if, "up")
        if host_ip is not None:
            run(["ip", "addr", "add", f"{host_ip}/{subnet.prefixlen}", "dev", host_if])
        if ipv6:
            up.subnet6 = unique_subnet(6)
            up.outside_ip6 = up.subnet6.network_address + 2
            outside.ip("addr", "add", f"{up.outside_ip6}/64", "dev", outside_if, "nodad")
            if host_addr:
                up.host_ip6 = up.subnet6.network_address + 1
                run(["ip", "addr", "add", f"{up.host_ip6}/64", "dev", host_if, "nodad"])
        if outside_gateway:
            outside.ip("route", "add", "default", "via", outside_gateway)
        run(["ip", "link", "set", host_if, "up"])
    except Exception:
        up.delete()
        raise
    return up


@dataclasses.dataclass
class SimHost:
    """A simulated host: namespace `ns` with underlay NIC `nic` (addresses `addr4`, `addr6`),
    its own pybridge run dir, and a CniTool that execs the plugin inside `ns` with it."""

    ns: Netns
    nic: str
    addr4: ipaddress.IPv4Address
    addr6: ipaddress.IPv6Address
    run_dir: Path
    cni: CniTool
    drivers: list[subprocess.Popen] = dataclasses.field(default_factory=list, repr=False)

    def serve(self, data_dir: Path, *extra: str) -> Path:
        """`cni-bridge serve` (the Docker driver) on this host, state under its run dir, leases
        in `data_dir` (or the store `extra` options name, e.g. `--ipam-store etcd ...`); returns
        its socket once it answers. Stopped by Underlay.delete."""
        sock = self.run_dir / "plugins" / "pybridge.sock"
        log = self.run_dir / "serve.log"
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns.name, "env", f"PYBRIDGE_RUN_DIR={self.run_dir}",
             str(Path(sys.executable).with_name("cni-bridge")), "serve", "--socket", str(sock), "--state-dir",
             str(self.run_dir / "state"), "--ipam-data-dir", str(data_dir), "--workers", "1",
             "--log-file", str(log), "--cni-fastpath", "off", *extra],
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.drivers.append(proc)
        deadline = time.monotonic() + 30
        while not socket_answers(sock):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text() if log.exists() else ""
            time.sleep(0.1)
        return sock

    def stop_drivers(self) -> None:
        for proc in self.drivers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
        self.drivers.clear()

    def cli(self, *args: str, input: str | None = None, check: bool = True):
        """`cni-bridge ARGS` run on this host (its namespace, its run dir)."""
        return self.ns.run("env", f"PYBRIDGE_RUN_DIR={self.run_dir}", "PYBRIDGE_FASTPATH_SOCKET=off",
                           str(Path(sys.executable).with_name("cni-bridge")), *args, input=input, check=check)


@dataclasses.dataclass
class Underlay:
    """`hosts` on one layer-2 segment: the bridge `ul` in namespace `switch`, one port per host."""

    switch: Netns
    hosts: list[SimHost]
    subnet4: ipaddress.IPv4Network
    subnet6: ipaddress.IPv6Network
    ports: list[str] = dataclasses.field(default_factory=list)  # switch port of each host

    def delete(self) -> None:
        """Attachments still cached are DELeted first (keep-going), then the namespaces go."""
        for h in self.hosts:
            h.cni.cleanup()
            h.stop_drivers()
        for h in self.hosts:
            h.ns.delete()
        self.switch.delete()


def create_underlay(n: int, tmp: Path, *, data_dir: Path | None = None) -> Underlay:
    """`n` simulated hosts on one switch. Multicast snooping is off on the switch (an underlay
    that floods multicast, as a plain switch does); host i has .(i+1) of a fresh /24 and ::(i+1)
    of a fresh /64 on its NIC `ul0`. `data_dir`: the IPAM dataDir every host's CniTool carries."""
    switch = create_netns(unique_name("sw"))
    underlay = Underlay(switch, [], unique_subnet(4, 24), unique_subnet(6))
    try:
        switch.ip("link", "add", "ul", "type", "bridge", "mcast_snooping", "0")
        switch.ip("link", "set", "ul", "up")
        for i in range(n):
            ns = create_netns(unique_name("hst"))
            run_dir = tmp / f"host{i}-run"
            run_dir.mkdir(parents=True)
            port = f"p{i}"
            host = SimHost(ns, "ul0", underlay.subnet4.network_address + 1 + i,
                           underlay.subnet6.network_address + 1 + i, run_dir,
                           CniTool(tmp / f"host{i}-cni-cache", data_dir=data_dir,
                                   env={"PYBRIDGE_RUN_DIR": str(run_dir), "PYBRIDGE_FASTPATH_SOCKET": "off"},
                                   wrapper=["ip", "netns", "exec", ns.name]))
            underlay.hosts.append(host)
            run(["ip", "link", "add", "ul0", "netns", ns.name, "type", "veth", "peer", "name", port,
                 "netns", switch.name])
            underlay.ports.append(port)
            switch.ip("link", "set", port, "master", "ul", "up")
            ns.ip("addr", "add", f"{host.addr4}/{underlay.subnet4.prefixlen}", "dev", "ul0")
            ns.ip("addr", "add", f"{host.addr6}/{underlay.subnet6.prefixlen}", "dev", "ul0", "nodad")
            ns.ip("link", "set", "ul0", "up")
    except BaseException:
        underlay.delete()
        raise
    return underlay
