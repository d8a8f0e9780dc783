"""macvlan mode on this machine's kernel (and the link-mode logic shared with ipvlan/vlan).

Topology: the `uplink` fixture's root-side veth end is the macvlan `master` (a stand-in NIC);
its peer lives in the `outside` namespace (198.18.x.2). Containers get addresses of that same
subnet, so "reaches the outside" means layer 2 over the master, without a bridge or NAT.
Sub-modes where the kernel makes the difference observable: bridge (siblings talk), private
(they cannot), vepa (only through a hairpinning switch), passthru (one child per master).
ipvlan and 802.1q vlan need the full-kernel guest (tests/guest/kernel/test_modes_guest.py); here only
their error on a kernel without them and their pure logic are tested.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from typing import Any

import pytest

from cni_bridge.attachment import Attachment
from cni_bridge.cni.versions import merge_prev
from cni_bridge.config import parse_network
from cni_bridge.errors import PluginError
from cni_bridge.modes import ipvlan, sublink
from tests.support.cnitool import CniCallError, CniTool
from tests.support.examples import EXAMPLES
from tests.support.host import run
from tests.support.leaks import lease_files
from tests.support.netns import Netns
from tests.support.session import unique_name
from tests.support.topology import Uplink


# ----- helpers -----------------------------------------------------------------------------
def link_conflist(cni: CniTool, uplink: Uplink | None, *, mode: str = "macvlan", start: int = 10,
                  subnet: str | None = None, **options: Any) -> dict[str, Any]:
    """A one-plugin pybridge conflist in link mode `mode` on the uplink's subnet."""
    plugin: dict[str, Any] = {"type": "pybridge", "mode": mode}
    if uplink is not None:
        plugin["master"] = uplink.host_if
    plugin.update(options)
    net = ipaddress.ip_network(subnet) if subnet else uplink.subnet
    plugin["ipam"] = {"type": "pybridge-ipam", "dataDir": str(cni.data_dir),
                      "ranges": [[{"subnet": str(net), "rangeStart": str(net.network_address + start)}]]}
    return {"cniVersion": "1.0.0", "name": unique_name("net"), "plugins": [plugin]}


def container_ip(result: dict[str, Any]) -> str:
    return result["ips"][0]["address"].split("/")[0]


def link_of(ns: Netns, ifname: str = "eth0") -> dict[str, Any]:
    return ns.ip_json("-d", "link", "show", "dev", ifname)[0]


def children_of(master: str) -> list[str]:
    """Links in the root namespace whose lower device is `master` (macvlan/ipvlan/vlan children)."""
    links = json.loads(run(["ip", "-d", "-j", "link", "show"]).stdout)
    return [link["ifname"] for link in links if link.get("link") == master]


def temp_link(ns: Netns, ifname: str = "eth0") -> str:
    """The deterministic host-side name an ADD uses before moving the link into `ns`."""
    return sublink.temp_name(Attachment(CniTool.default_container_id(ns.path), ifname, None))


def assert_nothing_left(cni: CniTool, ns: Netns, uplink: Uplink) -> None:
    assert ns.link_names() == ["lo"]
    assert children_of(uplink.host_if) == []
    assert temp_link(ns) not in [link["ifname"] for link in json.loads(run(["ip", "-j", "link"]).stdout)]
    assert lease_files(cni.data_dir) == []


@pytest.fixture
def two(netns: Callable[..., Netns]) -> tuple[Netns, Netns]:
    return netns(), netns()


# ----- sub-modes ---------------------------------------------------------------------------
def test_bridge_mode_siblings_and_outside(cni: CniTool, uplink: Uplink, two: tuple[Netns, Netns]) -> None:
    a, b = two
    conf = link_conflist(cni, uplink, macvlanMode="bridge")
    ra = cni.add(conf, a.path).result
    rb = cni.add(conf, b.path).result
    assert ra["interfaces"] == [{"name": "eth0", "mac": link_of(a)["address"], "sandbox": a.path}]
    assert ra["ips"][0]["interface"] == 0
    info = link_of(a)["linkinfo"]
    assert info["info_kind"] == "macvlan" and info["info_data"]["mode"] == "bridge"
    assert a.ping(container_ip(rb)) and b.ping(container_ip(ra))
    assert a.ping(uplink.outside_ip)
    # layer 2, no NAT: the outside host reaches the container's own address directly
    assert uplink.outside.ping(container_ip(ra))
    cni.check(conf, a.path)
    cni.delete(conf, a.path)
    cni.delete(conf, b.path)
    assert children_of(uplink.host_if) == []


def test_private_mode_isolates_siblings(cni: CniTool, uplink: Uplink, two: tuple[Netns, Netns]) -> None:
    a, b = two
    conf = link_conflist(cni, uplink, macvlanMode="private")
    ra = cni.add(conf, a.path).result
    rb = cni.add(conf, b.path).result
    assert link_of(a)["linkinfo"]["info_data"]["mode"] == "private"
    assert a.ping(uplink.outside_ip) and b.ping(uplink.outside_ip)  # both work ...
    assert not a.ping(container_ip(rb), timeout=1)                 # ... but not with each other
    assert not b.ping(container_ip(ra), timeout=1)
    cni.delete(conf, a.path)
    cni.delete(conf, b.path)


def test_vepa_mode_needs_a_hairpin_switch(cni: CniTool, uplink: Uplink, two: tuple[Netns, Netns]) -> None:
    """VEPA sends sibling traffic out of the NIC: it only comes back if the switch hairpins it."""
    a, b = two
    conf = link_conflist(cni, uplink, macvlanMode="vepa")
    ra = cni.add(conf, a.path).result
    rb = cni.add(conf, b.path).result
    assert a.ping(uplink.outside_ip)
    assert not a.ping(container_ip(rb), timeout=1)  # the outside end is a host, not a switch
    # Turn the outside into a switch that reflects frames back out of the port they came in on.
    out = uplink.outside
    out.ip("link", "add", "sw0", "type", "bridge")
    out.ip("link", "set", uplink.outside_if, "master", "sw0")
    out.run("bridge", "link", "set", "dev", uplink.outside_if, "hairpin", "on")
    out.ip("addr", "add", f"{uplink.outside_ip}/{uplink.subnet.prefixlen}", "dev", "sw0")
    out.ip("link", "set", "sw0", "up")
    assert a.ping(container_ip(rb), count=3) and b.ping(container_ip(ra), count=3)
    cni.delete(conf, a.path)
    cni.delete(conf, b.path)


def test_passthru_mode_one_container_per_master(cni: CniTool, uplink: Uplink, two: tuple[Netns, Netns]) -> None:
    a, b = two
    conf = link_conflist(cni, uplink, macvlanMode="passthru")
    cni.add(conf, a.path)
    assert link_of(a)["linkinfo"]["info_data"]["mode"] == "passthru"
    assert a.ping(uplink.outside_ip)
    with pytest.raises(CniCallError) as err:
        cni.add(conf, b.path)
    assert err.value.code == 7
    assert "passthru" in err.value.msg and uplink.host_if in err.value.msg
    assert b.link_names() == ["lo"]
    assert temp_link(b) not in children_of(uplink.host_if)
    cni.delete(conf, a.path)
    assert_nothing_left(cni, a, uplink)


# ----- MAC, MTU, master ----------------------------------------------------------------------
def test_mac_from_runtime_config_and_cni_args(cni: CniTool, uplink: Uplink, two: tuple[Netns, Netns]) -> None:
    a, b = two
    conf = link_conflist(cni, uplink, capabilities={"mac": True})
    cni.add(conf, a.path, capability_args={"mac": "02:00:00:00:4a:01"})
    cni.add(conf, b.path, args="IgnoreUnknown=1;MAC=02:00:00:00:4a:02")
    assert link_of(a)["address"] == "02:00:00:00:4a:01"
    assert link_of(b)["address"] == "02:00:00:00:4a:02"
    cni.check(conf, a.path)
    cni.delete(conf, a.path)
    cni.delete(conf, b.path)


def test_mtu_is_applied_and_bounded_by_the_master(cni: CniTool, uplink: Uplink, two: tuple[Netns, Netns]) -> None:
    a, b = two
    conf = link_conflist(cni, uplink, mtu=1400)
    cni.add(conf, a.path)
    assert link_of(a)["mtu"] == 1400
    cni.check(conf, a.path)
    cni.delete(conf, a.path)
    too_big = link_conflist(cni, uplink, mtu=9000)
    with pytest.raises(CniCallError) as err:
        cni.add(too_big, b.path)
    assert err.value.code == 7 and "mtu 9000" in err.value.msg and uplink.host_if in err.value.msg
    assert_nothing_left(cni, b, uplink)


def test_unknown_master_fails_cleanly(cni: CniTool, uplink: Uplink, netns: Callable[..., Netns]) -> None:
    ns = netns()
    conf = link_conflist(cni, uplink, master=unique_name("nope"))
    with pytest.raises(CniCallError) as err:
        cni.add(conf, ns.path)
    assert err.value.code == 7 and "not found" in err.value.msg
    assert_nothing_left(cni, ns, uplink)


def test_default_master_is_the_default_route_interface(netns: Callable[..., Netns], uplink: Uplink) -> None:
    """Without `master`, the interface of the default route (checked in a namespace that plays
    the host, so the real default route is never involved)."""
    from cni_bridge.kernel import netlink
    out = uplink.outside
    out.ip("route", "add", "default", "via", str(uplink.outside_ip + 1), "dev", uplink.outside_if)
    spec = parse_network({"name": "n", "mode": "macvlan"})
    with netlink.netns(out.path) as host:
        assert sublink.resolve_master(host, spec, None).name == uplink.outside_if
    empty = netns()
    with netlink.netns(empty.path) as host, pytest.raises(PluginError) as err:
        sublink.resolve_master(host, spec, None)
    assert err.value.code == 7 and "default route" in err.value.msg


# ----- DEL, CHECK, crash leftovers ---------------------------------------------------------
def test_del_is_idempotent_and_works_without_netns(cni: CniTool, uplink: Uplink,
                                                   netns: Callable[..., Netns]) -> None:
    a = netns()
    conf = link_conflist(cni, uplink)
    cni.add(conf, a.path)
    cni.delete(conf, a.path)
    cni.delete(conf, a.path)
    assert_nothing_left(cni, a, uplink)
    b = netns()
    cid = "mv-del-no-netns"
    cni.add(conf, b.path, container_id=cid)
    b.delete()  # the runtime tore the sandbox down first: the link died with it
    cni.delete(conf, "", container_id=cid)
    cni.delete(conf, "", container_id=cid)
    assert children_of(uplink.host_if) == [] and lease_files(cni.data_dir) == []


def test_check_detects_missing_address_and_link(cni: CniTool, uplink: Uplink, netns: Callable[..., Netns]) -> None:
    ns = netns()
    conf = link_conflist(cni, uplink)
    result = cni.add(conf, ns.path).result
    cni.check(conf, ns.path)
    ns.ip("addr", "del", result["ips"][0]["address"], "dev", "eth0")
    with pytest.raises(CniCallError) as err:
        cni.check(conf, ns.path)
    assert "missing" in err.value.msg
    ns.ip("link", "del", "eth0")
    with pytest.raises(CniCallError) as err:
        cni.check(conf, ns.path)
    assert "eth0 not found" in err.value.msg
    cni.delete(conf, ns.path)


def test_check_detects_wrong_sub_mode(cni: CniTool, uplink: Uplink, netns: Callable[..., Netns]) -> None:
    ns = netns()
    conf = link_conflist(cni, uplink, macvlanMode="bridge")
    cni.add(conf, ns.path)
    conf["plugins"][0]["macvlanMode"] = "private"  # the network definition changed since ADD
    with pytest.raises(CniCallError) as err:
        cni.check(conf, ns.path)
    assert "mode bridge" in err.value.msg
    cni.delete(conf, ns.path)


def test_leftover_of_a_crashed_add_is_removed(cni: CniTool, uplink: Uplink, netns: Callable[..., Netns]) -> None:
    """A crash between "create on the host" and "move into the netns" leaves the temporary
    link on the host under a name derived from the attachment: DEL and the next ADD remove it."""
    ns = netns()
    conf = link_conflist(cni, uplink)
    leftover = temp_link(ns)
    run(["ip", "link", "add", leftover, "link", uplink.host_if, "type", "macvlan"])
    cni.delete(conf, "", container_id=CniTool.default_container_id(ns.path))
    assert children_of(uplink.host_if) == []
    run(["ip", "link", "add", leftover, "link", uplink.host_if, "type", "macvlan"])
    cni.add(conf, ns.path)
    assert children_of(uplink.host_if) == []  # only the container's link, which is in the netns
    cni.delete(conf, ns.path)


# ----- kernels without ipvlan / 802.1q ------------------------------------------------------
def _kernel_has(kind: str) -> bool:
    name = unique_name("probe")
    args = {"ipvlan": ["type", "ipvlan"], "vlan": ["type", "vlan", "id", "7"]}[kind]
    lower = unique_name("lo")
    run(["ip", "link", "add", lower, "type", "veth", "peer", "name", unique_name("lp")])
    try:
        return run(["ip", "link", "add", name, "link", lower, *args], check=False).returncode == 0
    finally:
        run(["ip", "link", "del", lower], check=False)


@pytest.mark.parametrize("mode,feature", [("ipvlan", "CONFIG_IPVLAN"), ("vlan", "CONFIG_VLAN_8021Q")])
def test_missing_kernel_support_is_a_clear_config_error(cni: CniTool, uplink: Uplink, netns: Callable[..., Netns],
                                                        mode: str, feature: str) -> None:
    if _kernel_has(mode):
        pytest.skip(f"this kernel supports {mode} (tested in tests/guest/kernel)")
    ns = netns()
    conf = link_conflist(cni, uplink, mode=mode, vlanId=100)
    with pytest.raises(CniCallError) as err:
        cni.add(conf, ns.path)
    assert err.value.code == 7
    assert f"no {mode} support" in err.value.msg and feature in err.value.msg
    assert_nothing_left(cni, ns, uplink)


# ----- pure logic ------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg,error", [
    ({"mode": "vlan", "master": "x"}, "vlanId"),
    ({"mode": "vlan", "master": "x", "vlanId": 4095}, "vlanId"),
    ({"mode": "vlan", "master": "x", "vlanId": 0}, "vlanId"),
    ({"mode": "macvlan", "macvlanMode": "hairpin"}, "macvlanMode"),
    ({"mode": "ipvlan", "ipvlanMode": "l4"}, "ipvlanMode"),
])
def test_config_errors(cfg: dict[str, Any], error: str) -> None:
    with pytest.raises(PluginError) as err:
        parse_network({"name": "n", **cfg})
    assert err.value.code == 7 and error in str(err.value)


def test_temp_name_is_deterministic_short_and_distinct_from_veths() -> None:
    att = Attachment("c0ffee", "eth0", None)
    name = sublink.temp_name(att)
    assert name == sublink.temp_name(Attachment("c0ffee", "eth0", "/run/netns/x"))
    assert len(name) <= 15 and name != att.host_ifname
    assert name != sublink.temp_name(Attachment("c0ffee", "net1", None))


def test_ipvlan_chained_master_and_address_merge() -> None:
    spec = parse_network({"name": "n", "mode": "ipvlan"})
    prev = {"interfaces": [{"name": "eni7", "mac": "02:00:00:00:00:07"}],
            "ips": [{"interface": 0, "address": "10.9.0.5/24", "gateway": "10.9.0.1"}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.9.0.1"}]}
    assert ipvlan.chained_master(spec, prev) == "eni7"
    assert ipvlan.chained_master(parse_network({"name": "n", "mode": "ipvlan", "master": "m0"}), prev) == "m0"
    assert ipvlan.chained_master(spec, None) is None  # default-route interface
    with pytest.raises(PluginError) as err:
        ipvlan.chained_master(spec, {"interfaces": [{"name": "a"}, {"name": "b"}]})
    assert err.value.code == 7 and "exactly one" in err.value.msg
    # prevResult's addresses, now configured on the ipvlan link, point at it (not listed twice)
    ours = {"interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:07", "sandbox": "/run/netns/c"}],
            "ips": [{"interface": 0, "address": "10.9.0.5/24", "gateway": "10.9.0.1"}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.9.0.1"}], "dns": {}}
    merged = merge_prev(prev, ours)
    assert [i["name"] for i in merged["interfaces"]] == ["eni7", "eth0"]
    assert merged["ips"] == [{"interface": 1, "address": "10.9.0.5/24", "gateway": "10.9.0.1"}]
    assert merged["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.9.0.1"}]


def test_ipvlan_refuses_a_requested_mac(cni: CniTool, uplink: Uplink, netns: Callable[..., Netns]) -> None:
    ns = netns()
    conf = link_conflist(cni, uplink, mode="ipvlan")
    with pytest.raises(CniCallError) as err:
        cni.add(conf, ns.path, args="MAC=02:00:00:00:4a:03")
    assert err.value.code == 7 and "MAC" in err.value.msg
    assert_nothing_left(cni, ns, uplink)


@pytest.mark.parametrize("example", ["macvlan.conflist", "ipvlan.conflist", "vlan.conflist"])
def test_examples_parse(example: str) -> None:
    conf = json.loads((EXAMPLES / example).read_text())
    spec = parse_network({"name": conf["name"], **conf["plugins"][0]})
    assert spec.mode == example.split(".")[0]
