"""Neutron-linuxbridge-style bridge networks on this machine's kernel: `local` and `flat`.

flat: the `uplink` fixture's root-side veth end plays the physical NIC and is enslaved to the
network's bridge; its peer in the `outside` namespace plays a host on the physical segment.
Containers get addresses of that segment and reach the outside host over layer 2, without NAT.
local: a bridge without uplink and without masquerade: members reach each other, nothing else.
The vlan-uplink variant needs 802.1q: see tests/guest/kernel/test_modes_guest.py.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cni_bridge.config import parse_network
from cni_bridge.kernel import netlink
from cni_bridge.modes import uplink as uplinks
from tests.support.cnitool import CniCallError, CniTool
from tests.support.examples import EXAMPLES
from tests.support.host import run
from tests.support.leaks import lease_files
from tests.support.netns import Netns
from tests.support.session import unique_name
from tests.support.topology import Uplink


def example(name: str, cni: CniTool, bridge: str, subnet: ipaddress.IPv4Network, **options: Any) -> dict[str, Any]:
    """An example conflist from plugin-spec/examples with this test's names, subnet and dataDir."""
    conf = json.loads((EXAMPLES / name).read_text())
    conf["name"] = unique_name("net")
    plugin = conf["plugins"][0]
    plugin["bridge"] = bridge
    plugin.update(options)
    plugin["ipam"] = {"type": "pybridge-ipam", "dataDir": str(cni.data_dir),
                      "ranges": [[{"subnet": str(subnet), "rangeStart": str(subnet.network_address + 10)}]]}
    return conf


def container_ip(result: dict[str, Any]) -> str:
    return result["ips"][0]["address"].split("/")[0]


def master_of(ifname: str) -> str | None:
    return json.loads(run(["ip", "-j", "link", "show", "dev", ifname]).stdout)[0].get("master")


@pytest.fixture
def bridges() -> Iterator[Callable[[], str]]:
    """Names for network bridges; the bridges (never deleted by pybridge's DEL) go at test end."""
    made: list[str] = []

    def make() -> str:
        made.append(unique_name("br"))
        return made[-1]

    yield make
    for name in made:
        run(["ip", "link", "del", name], check=False)


@pytest.fixture
def nic(uplink_factory: Callable[..., Uplink]) -> Uplink:
    """An uplink without host addresses: what a NIC dedicated to a flat network looks like."""
    return uplink_factory(host_addr=False)


# ----- flat -------------------------------------------------------------------------------------
def test_flat_network_is_on_the_uplink_segment(cni: CniTool, nic: Uplink, bridges: Callable[[], str],
                                               netns: Callable[..., Netns]) -> None:
    a, b = netns(), netns()
    bridge = bridges()
    conf = example("flat.conflist", cni, bridge, nic.subnet, uplink=nic.host_if)
    ra = cni.add(conf, a.path).result
    rb = cni.add(conf, b.path).result
    assert master_of(nic.host_if) == bridge
    assert a.ping(nic.outside_ip) and b.ping(container_ip(ra))
    # No NAT: the outside host reaches the container's own address and learned its own MAC.
    assert nic.outside.ping(container_ip(rb))
    neigh = nic.outside.ip_json("neigh", "show", container_ip(rb))
    assert neigh and neigh[0]["lladdr"] == rb["interfaces"][2]["mac"]
    cni.check(conf, a.path)
    cni.delete(conf, a.path)
    cni.delete(conf, b.path)
    assert master_of(nic.host_if) == bridge  # the uplink belongs to the network, not to a container


def test_flat_refuses_a_nic_with_addresses(cni: CniTool, uplink: Uplink, bridges: Callable[[], str],
                                           netns: Callable[..., Netns]) -> None:
    ns = netns()
    conf = example("flat.conflist", cni, bridges(), uplink.subnet, uplink=uplink.host_if)
    with pytest.raises(CniCallError) as err:
        cni.add(conf, ns.path)
    assert err.value.code == 7 and "has addresses" in err.value.msg and str(uplink.host_ip) in err.value.msg
    assert master_of(uplink.host_if) is None
    assert ns.link_names() == ["lo"] and lease_files(cni.data_dir) == []


def test_flat_refuses_a_nic_of_another_bridge(cni: CniTool, nic: Uplink, bridges: Callable[[], str],
                                              netns: Callable[..., Netns]) -> None:
    first, second = bridges(), bridges()
    a, b = netns(), netns()
    conf = example("flat.conflist", cni, first, nic.subnet, uplink=nic.host_if)
    cni.add(conf, a.path)
    other = example("flat.conflist", cni, second, nic.subnet, uplink=nic.host_if)
    with pytest.raises(CniCallError) as err:
        cni.add(other, b.path)
    assert err.value.code == 7 and f"already enslaved to {first}" in err.value.msg
    assert master_of(nic.host_if) == first and b.link_names() == ["lo"]
    cni.delete(conf, a.path)


def test_detach_releases_the_flat_nic(cni: CniTool, nic: Uplink, bridges: Callable[[], str],
                                      netns: Callable[..., Netns]) -> None:
    ns = netns()
    bridge = bridges()
    conf = example("flat.conflist", cni, bridge, nic.subnet, uplink=nic.host_if)
    cni.add(conf, ns.path)
    cni.delete(conf, ns.path)
    spec = parse_network(conf["plugins"][0] | {"name": conf["name"]})
    with netlink.root() as host:
        uplinks.detach(host, spec)
        uplinks.detach(host, spec)
    link = json.loads(run(["ip", "-j", "link", "show", "dev", nic.host_if]).stdout)[0]
    assert link.get("master") is None and "UP" in link["flags"]  # released, never deleted


def test_missing_uplink_is_a_config_error(cni: CniTool, bridges: Callable[[], str],
                                          netns: Callable[..., Netns]) -> None:
    ns = netns()
    conf = example("flat.conflist", cni, bridges(), ipaddress.ip_network("198.18.250.0/24"),
                   uplink=unique_name("nic"))
    with pytest.raises(CniCallError) as err:
        cni.add(conf, ns.path)
    assert err.value.code == 7 and "not found" in err.value.msg


# ----- local ------------------------------------------------------------------------------------
def test_local_network_reaches_only_its_members(cni: CniTool, uplink: Uplink, bridges: Callable[[], str],
                                                netns: Callable[..., Netns]) -> None:
    """Members talk to each other; neither the host's uplink address nor the outside host (which
    the host itself can reach) is reachable: no gateway, no route, no masquerade."""
    a, b = netns(), netns()
    subnet = ipaddress.ip_network("198.19.251.0/24")
    conf = example("local.conflist", cni, bridges(), subnet)
    ra = cni.add(conf, a.path).result
    rb = cni.add(conf, b.path).result
    assert a.ping(container_ip(rb)) and b.ping(container_ip(ra))
    assert run(["ping", "-c1", "-W1", str(uplink.outside_ip)], check=False).returncode == 0
    assert not a.ping(uplink.outside_ip, timeout=1)
    assert not a.ping(uplink.host_ip, timeout=1)
    assert [r["dst"] for r in a.ip_json("route", "show")] == [str(subnet)]
    cni.delete(conf, a.path)
    cni.delete(conf, b.path)


# ----- vlan uplink: naming and kernels without 802.1q -------------------------------------------
def test_vlan_port_names_fit_ifnamsiz() -> None:
    assert uplinks.vlan_port_name("eth1", 100) == "eth1.100"
    assert uplinks.vlan_port_name("enp0s20f0u", 4094) == "enp0s20f0u.4094"  # exactly 15 bytes
    long_a = uplinks.vlan_port_name("enp0s20f0u1u2", 4094)
    long_b = uplinks.vlan_port_name("enp0s20f0u1u3", 4094)
    assert len(long_a) <= 15 and long_a.endswith(".4094") and long_a.startswith("enp0s2")
    assert long_a != long_b and long_a == uplinks.vlan_port_name("enp0s20f0u1u2", 4094)


def test_vlan_uplink_on_a_kernel_without_8021q(cni: CniTool, nic: Uplink, bridges: Callable[[], str],
                                               netns: Callable[..., Netns]) -> None:
    probe = unique_name("vl")
    if run(["ip", "link", "add", probe, "link", nic.host_if, "type", "vlan", "id", "9"], check=False).returncode == 0:
        run(["ip", "link", "del", probe])
        pytest.skip("this kernel has 802.1q (vlan uplinks are tested in tests/guest/kernel)")
    ns = netns()
    conf = example("vlan-uplink.conflist", cni, bridges(), nic.subnet, uplink=nic.host_if)
    with pytest.raises(CniCallError) as err:
        cni.add(conf, ns.path)
    assert err.value.code == 7 and "CONFIG_VLAN_8021Q" in err.value.msg
    assert ns.link_names() == ["lo"] and lease_files(cni.data_dir) == []
