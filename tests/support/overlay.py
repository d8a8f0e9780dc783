"""Containers on the simulated hosts of tests/support/topology.py and what a user checks on a
vxlan network that spans them: attach/detach through each host's CniTool, the vxlan device's
remote FDB entries as `bridge fdb` shows them; the same network made through the Docker driver
served on a host."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.support.dockerd import plugin_call
from tests.support.netns import Netns
from tests.support.session import unique_name
from tests.support.topology import SimHost


@dataclass
class Container:
    host: SimHost
    ns: Netns
    cid: str
    ip4: str
    ip6: str  # "" on an IPv4-only network
    mac: str


def attach(conf: Callable[[SimHost], dict], h: SimHost, netns: Callable[..., Netns]) -> Container:
    """CNI ADD of `conf(h)` (the conflist as host `h` has it) into a fresh namespace."""
    ns, cid = netns(), unique_name("ctr")
    result = h.cni.add(conf(h), ns.path, container_id=cid).result
    ips = [ipaddress.ip_interface(ip["address"]).ip for ip in result["ips"]]
    mac = next(i["mac"] for i in result["interfaces"] if i.get("sandbox"))
    return Container(h, ns, cid, str(next(i for i in ips if i.version == 4)),
                     str(next((i for i in ips if i.version == 6), "")), mac)


def detach(conf: Callable[[SimHost], dict], c: Container) -> None:
    c.host.cni.delete(conf(c.host), c.ns.path, container_id=c.cid)


def fdb(h: SimHost, vni: int) -> list[tuple[str, str]]:
    """(MAC, dst) of the device's remote entries; [] when the device does not exist."""
    out = h.ns.run("bridge", "-j", "fdb", "show", "dev", f"vx-{vni}", check=False).stdout
    return sorted((e["mac"], e["dst"]) for e in json.loads(out or "[]") if e.get("dst"))


# ----- the Docker driver on a simulated host (called as libnetwork calls it) ------------------
def docker_vxlan_network(sock: Path, nid: str, h: SimHost, vni: int, port: int,
                         subnet: ipaddress.IPv4Network) -> None:
    """CreateNetwork of `docker network create -d pybridge -o vxlanId=VNI -o vxlanLocal=<h>`."""
    generic = {"vxlanId": str(vni), "vxlanLocal": str(h.addr4), "vxlanDev": h.nic, "vxlanPort": str(port)}
    body = {"NetworkID": nid, "Options": {"com.docker.network.generic": generic},
            "IPv4Data": [{"AddressSpace": "pybridge-local", "Pool": str(subnet),
                          "Gateway": f"{subnet.network_address + 1}/{subnet.prefixlen}", "AuxAddresses": {}}],
            "IPv6Data": []}
    assert plugin_call(sock, "NetworkDriver.CreateNetwork", body) == (200, {})


def docker_endpoint(sock: Path, nid: str, eid: str, h: SimHost, address: str, ctr: Netns) -> str:
    """CreateEndpoint with `address` (CIDR), then what dockerd does with the sandbox end: moved
    into `ctr` as eth0, addressed, up. Returns the endpoint's MAC."""
    status, reply = plugin_call(sock, "NetworkDriver.CreateEndpoint",
                                {"NetworkID": nid, "EndpointID": eid, "Interface": {"Address": address},
                                 "Options": {}})
    assert status == 200, reply
    src = plugin_call(sock, "NetworkDriver.EndpointOperInfo", {"NetworkID": nid, "EndpointID": eid})[1]["Value"]["srcName"]
    h.ns.ip("link", "set", src, "netns", ctr.path, "name", "eth0")
    ctr.ip("addr", "add", address, "dev", "eth0")
    ctr.ip("link", "set", "eth0", "up")
    return reply["Interface"]["MacAddress"]
