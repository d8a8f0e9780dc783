"""Bridge networks on a host where Docker runs: filter FORWARD policy DROP, br_netfilter on
(issue 14 item 1).

With br_netfilter, frames bridged between two ports of one bridge go through iptables FORWARD
too, so on such a host a `local` network's members could not even reach each other. pybridge
adds ACCEPT rules for the network's bridge with its first container and removes them with its
last (rules tagged `pybridge:<network>`).

The "host" here is a network namespace of the test's own, in which the plugin runs (`ip netns
exec`): its FORWARD policy and its br_netfilter switches (per namespace) are set there, so the
real host's firewall is never touched. Its "outside" is another namespace behind a veth.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.support.cnitool import CniTool, bridge_conflist
from tests.support.host import run
from tests.support.netns import Netns
from tests.support.session import register_data_dir, unique_name
from tests.support.subnets import unique_subnet

BR_NETFILTER = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


@dataclass
class DropHost:
    """A namespace set up like a Docker host, with a veth to an `outside` namespace."""
    host: Netns
    outside: Netns
    uplink: str           # the host's end of the veth ("the NIC")
    outside_net: ipaddress.IPv4Network

    def forward_rules(self) -> str:
        return "\n".join(self.host.run(cmd, "-S", "FORWARD").stdout for cmd in ("iptables", "ip6tables"))


@dataclass
class Member:
    ns: Netns
    address: str
    cid: str


@pytest.fixture
def drop_host(netns: Callable[..., Netns]) -> DropHost:
    if not BR_NETFILTER.exists():
        run(["modprobe", "br_netfilter"], check=False)
    if not BR_NETFILTER.exists():
        pytest.skip("br_netfilter is not available on this kernel (modprobe br_netfilter failed)")
    host, outside = netns(), netns()
    for cmd in ("iptables", "ip6tables"):
        host.run(cmd, "-w", "-P", "FORWARD", "DROP")
    host.run("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1", "net.bridge.bridge-nf-call-ip6tables=1")
    net = unique_subnet(4, 24)
    run(["ip", "link", "add", "nic0", "netns", host.name, "type", "veth", "peer", "name", "ext0",
         "netns", outside.name])
    outside.ip("addr", "add", f"{net.network_address + 2}/24", "dev", "ext0")
    outside.ip("link", "set", "ext0", "up")
    host.ip("link", "set", "nic0", "up")
    return DropHost(host, outside, "nic0", net)


@pytest.fixture
def cni_on(drop_host: DropHost, tmp_path: Path):
    """A CniTool whose plugin runs in the drop host; every attachment is DELeted at the end."""
    data_dir = tmp_path / "cni-data"
    data_dir.mkdir()
    register_data_dir(data_dir)
    tool = CniTool(tmp_path / "cni-cache", data_dir=data_dir, wrapper=["ip", "netns", "exec", drop_host.host.name])
    yield tool
    tool.cleanup()


def conflist(cni: CniTool, subnet: ipaddress.IPv4Network, **plugin: Any) -> dict[str, Any]:
    name = unique_name("net")
    conf = bridge_conflist(name, bridge=unique_name("br"), subnets=[str(subnet)], data_dir=cni.data_dir,
                           plugin_type="pybridge", ipam_type="pybridge-ipam")
    conf["plugins"][0].update(plugin)
    return conf


def containers(cni: CniTool, conf: dict[str, Any], netns: Callable[..., Netns], n: int = 2) -> list[Member]:
    """`n` containers on the network."""
    out = []
    for _ in range(n):
        ns, cid = netns(), unique_name("ctr")
        result = cni.add(conf, ns.path, container_id=cid).result
        out.append(Member(ns, str(ipaddress.ip_interface(result["ips"][0]["address"]).ip), cid))
    return out


def remove(cni: CniTool, conf: dict[str, Any], members: list[Member]) -> None:
    for m in members:
        cni.delete(conf, m.ns.path, container_id=m.cid)


def test_local_network_members_reach_each_other(drop_host: DropHost, cni_on: CniTool, netns) -> None:
    conf = conflist(cni_on, unique_subnet(4, 24), isGateway=False, ipMasq=False)
    bridge, name = conf["plugins"][0]["bridge"], conf["name"]
    members = containers(cni_on, conf, netns)
    a, b = members
    assert a.ns.ping(b.address) and b.ns.ping(a.address)
    assert f'-A FORWARD -i {bridge} -m comment --comment "pybridge:{name}" -j ACCEPT' in drop_host.forward_rules()
    remove(cni_on, conf, members[:1])
    assert bridge in drop_host.forward_rules()  # one member left: the rules stay
    remove(cni_on, conf, members[1:])
    assert bridge not in drop_host.forward_rules()  # the last member took them away
    assert "-P FORWARD DROP" in drop_host.forward_rules()  # and nothing else changed


def test_gateway_network_routes_out_with_masquerade(drop_host: DropHost, cni_on: CniTool, netns) -> None:
    drop_host.host.ip("addr", "add", f"{drop_host.outside_net.network_address + 1}/24", "dev", drop_host.uplink)
    drop_host.host.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    conf = conflist(cni_on, unique_subnet(4, 24), isGateway=True, isDefaultGateway=True, ipMasq=True)
    members = containers(cni_on, conf, netns)
    a, b = members
    outside_addr = str(drop_host.outside_net.network_address + 2)
    assert a.ns.ping(b.address) and a.ns.ping(outside_addr) and b.ns.ping(outside_addr)
    remove(cni_on, conf, members)
    assert conf["plugins"][0]["bridge"] not in drop_host.forward_rules()


def test_gateway_network_without_masquerade_forwards(drop_host: DropHost, cni_on: CniTool, netns) -> None:
    """Routed, not NATed: the outside host has a route back to the containers via the host."""
    drop_host.host.ip("addr", "add", f"{drop_host.outside_net.network_address + 1}/24", "dev", drop_host.uplink)
    drop_host.host.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    subnet = unique_subnet(4, 24)
    drop_host.outside.ip("route", "add", str(subnet), "via", str(drop_host.outside_net.network_address + 1))
    conf = conflist(cni_on, subnet, isGateway=True, isDefaultGateway=True, ipMasq=False)
    members = containers(cni_on, conf, netns, n=1)
    a, = members
    assert a.ns.ping(str(drop_host.outside_net.network_address + 2))
    assert drop_host.outside.ping(a.address)
    remove(cni_on, conf, members)
    assert conf["plugins"][0]["bridge"] not in drop_host.forward_rules()


def test_flat_network_reaches_the_segment(drop_host: DropHost, cni_on: CniTool, netns) -> None:
    """The NIC is a bridge port; containers take addresses of the outside segment."""
    seg = drop_host.outside_net
    conf = conflist(cni_on, seg, isGateway=False, ipMasq=False, uplink=drop_host.uplink)
    conf["plugins"][0]["ipam"]["ranges"] = [[{"subnet": str(seg), "rangeStart": str(seg.network_address + 10)}]]
    members = containers(cni_on, conf, netns)
    a, b = members
    outside_addr = str(seg.network_address + 2)
    assert a.ns.ping(b.address) and a.ns.ping(outside_addr) and drop_host.outside.ping(b.address)
    remove(cni_on, conf, members)
    assert conf["plugins"][0]["bridge"] not in drop_host.forward_rules()
