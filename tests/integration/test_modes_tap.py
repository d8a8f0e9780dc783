"""tap and macvtap modes on this machine's kernel: the devices a VMM in the pod's namespace opens.

tap: a persistent tap named CNI_IFNAME in the namespace, joined by tc redirects to a veth whose
host end is a port of the network's bridge. Proven by what a user checks (the tap's flags, owner
and group as the kernel reports them, the host veth on the bridge, the redirects) and by traffic:
a frame written into the tap's descriptor (what the VMM does) comes out on the bridge, and the
bridge's gateway answers an ARP request for it back through the tap.
macvtap: a macvtap child of a veth `master` whose peer sits in a test namespace, moved into the
container, its /dev/tap<ifindex> reported as the interface's socketPath.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.attachment import Attachment
from cni_bridge.kernel.tuntap import opened_tap
from cni_bridge.modes import tap
from cni_bridge.modes.sublink import temp_name
from tests.support.cnitool import CniCallError, CniTool
from tests.support.host import run
from tests.support.leaks import lease_files
from tests.support.netns import Netns
from tests.support.session import unique_name
from tests.support.subnets import unique_subnet
from tests.support.topology import Uplink
from tests.support.vmframes import gateway_answers


def tap_conflist(cni: CniTool, **options: Any) -> dict[str, Any]:
    subnet = unique_subnet(4, 24)
    plugin = {"type": "pybridge", "mode": "tap", "bridge": unique_name("br"), "isGateway": True,
              "ipMasq": True, **options,
              "ipam": {"type": "pybridge-ipam", "dataDir": str(cni.data_dir),
                       "ranges": [[{"subnet": str(subnet)}]]}}
    return {"cniVersion": "1.1.0", "name": unique_name("net"), "plugins": [plugin]}


def macvtap_conflist(cni: CniTool, uplink: Uplink, **options: Any) -> dict[str, Any]:
    net = uplink.subnet
    plugin = {"type": "pybridge", "mode": "macvtap", "master": uplink.host_if, **options,
              "ipam": {"type": "pybridge-ipam", "dataDir": str(cni.data_dir),
                       "ranges": [[{"subnet": str(net), "rangeStart": str(net.network_address + 10)}]]}}
    return {"cniVersion": "1.1.0", "name": unique_name("net"), "plugins": [plugin]}


def link_json(ns: Netns | None, name: str) -> dict[str, Any]:
    argv = ["ip", "-d", "-j", "link", "show", "dev", name]
    out = ns.run(*argv).stdout if ns is not None else run(argv).stdout
    return json.loads(out)[0]


def host_links() -> list[str]:
    return [link["ifname"] for link in json.loads(run(["ip", "-j", "link"]).stdout)]


# ----- tap -----------------------------------------------------------------------------------
def test_tap_add_check_del(cni: CniTool, netns: Callable[..., Netns], own_bridges: list[str]) -> None:
    conf = tap_conflist(cni, owner=4242, group=4343, multiQueue=True)
    bridge = conf["plugins"][0]["bridge"]
    own_bridges.append(bridge)
    ns = netns()
    mac = "02:11:22:33:44:55"
    result = cni.add(conf, ns.path, ifname="tap0", args={"MAC": mac}).result
    entry = result["interfaces"][result["ips"][0]["interface"]]
    assert entry["name"] == "tap0" and entry["sandbox"] == ns.path and entry["mac"] == mac
    info = link_json(ns, "tap0")
    tun = info["linkinfo"]["info_data"]
    assert tun["type"] == "tap" and tun["multi_queue"] and tun["persist"]
    assert (str(tun["user"]), str(tun["group"])) == ("4242", "4343"), tun
    assert info["address"] == mac
    # the netns carries no address of the guest's: the redirects keep its stack out of the path
    assert ns.addresses("tap0") == []
    host_veth = Attachment(CniTool.default_container_id(ns.path), "tap0", None).host_ifname
    assert link_json(None, host_veth)["master"] == bridge
    filters = ns.run("tc", "filter", "show", "dev", "tap0", "ingress").stdout
    assert "mirred" in filters and tap.peer_name(Attachment(CniTool.default_container_id(ns.path), "tap0", None)) in filters
    cni.check(conf, ns.path, ifname="tap0")

    # the guest's side: a frame written into the tap reaches the bridge, whose gateway answers
    gateway = result["ips"][0]["gateway"]
    guest_ip = result["ips"][0]["address"].split("/")[0]
    with opened_tap("tap0", multi_queue=True, ns_fd=_ns_fd(ns)) as fd:
        assert gateway_answers(fd, mac, guest_ip, gateway), "no ARP reply from the gateway through the tap"

    # CHECK notices a broken redirect
    ns.run("tc", "qdisc", "del", "dev", "tap0", "ingress")
    with pytest.raises(CniCallError, match="redirect"):
        cni.check(conf, ns.path, ifname="tap0")

    cni.delete(conf, ns.path, ifname="tap0")
    assert ns.link_names() == ["lo"]
    assert host_veth not in host_links()
    assert lease_files(cni.data_dir) == []
    cni.delete(conf, ns.path, ifname="tap0")  # idempotent


def test_tap_del_without_netns(cni: CniTool, netns: Callable[..., Netns], own_bridges: list[str]) -> None:
    """The runtime deleted the sandbox first: the tap went with it, DEL removes the host side."""
    conf = tap_conflist(cni)
    own_bridges.append(conf["plugins"][0]["bridge"])
    ns = netns()
    cni.add(conf, ns.path, ifname="tap0")
    host_veth = Attachment(CniTool.default_container_id(ns.path), "tap0", None).host_ifname
    path = ns.path
    ns.delete()
    cni.delete(conf, None, container_id=CniTool.default_container_id(path), ifname="tap0")
    assert host_veth not in host_links()
    assert lease_files(cni.data_dir) == []


def test_tap_gc_releases_a_forgotten_attachment(cni: CniTool, netns: Callable[..., Netns],
                                                own_bridges: list[str]) -> None:
    conf = tap_conflist(cni)
    own_bridges.append(conf["plugins"][0]["bridge"])
    ns = netns()
    cni.add(conf, ns.path, ifname="tap0")
    cni.gc(conf, [("bystander", "eth0")])
    assert lease_files(cni.data_dir) == []
    assert Attachment(CniTool.default_container_id(ns.path), "tap0", None).host_ifname not in host_links()


def _ns_fd(ns: Netns) -> int:
    fd = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
    _OPEN.append(fd)
    return fd


_OPEN: list[int] = []


@pytest.fixture(autouse=True)
def _close_ns_fds() -> Any:
    yield
    while _OPEN:
        os.close(_OPEN.pop())


# ----- macvtap -------------------------------------------------------------------------------
def test_macvtap_add_check_del(cni: CniTool, netns: Callable[..., Netns], uplink: Uplink) -> None:
    conf = macvtap_conflist(cni, uplink, macvlanMode="vepa", owner=4242)
    ns = netns()
    result = cni.add(conf, ns.path).result
    entry = result["interfaces"][0]
    info = link_json(ns, "eth0")
    assert info["linkinfo"]["info_kind"] == "macvtap" and info["linkinfo"]["info_data"]["mode"] == "vepa"
    device = Path(entry["socketPath"])
    assert device == Path(f"/dev/tap{info['ifindex']}") and device.is_char_device()
    assert device.stat().st_uid == 4242
    assert entry["mac"] == info["address"]
    assert ipaddress.ip_interface(result["ips"][0]["address"]).ip in uplink.subnet
    cni.check(conf, ns.path)
    cni.delete(conf, ns.path)
    assert ns.link_names() == ["lo"]
    assert not device.exists()
    assert lease_files(cni.data_dir) == []
    assert tap_temp(ns) not in host_links()


def tap_temp(ns: Netns) -> str:
    return temp_name(Attachment(CniTool.default_container_id(ns.path), "eth0", None))


def test_macvtap_del_without_netns(cni: CniTool, netns: Callable[..., Netns], uplink: Uplink) -> None:
    conf = macvtap_conflist(cni, uplink)
    ns = netns()
    cni.add(conf, ns.path)
    path = ns.path
    ns.delete()
    cni.delete(conf, None, container_id=CniTool.default_container_id(path))
    assert lease_files(cni.data_dir) == []
    assert json.loads(run(["ip", "-d", "-j", "link", "show", "dev", uplink.host_if]).stdout)
    assert not [link for link in json.loads(run(["ip", "-d", "-j", "link"]).stdout)
                if link.get("link") == uplink.host_if]


def test_tap_keys_are_refused_on_other_modes(cni: CniTool, netns: Callable[..., Netns]) -> None:
    conf = tap_conflist(cni, multiQueue=True)
    conf["plugins"][0]["mode"] = "bridge"
    with pytest.raises(CniCallError, match="multiQueue"):
        cni.add(conf, netns().path)
