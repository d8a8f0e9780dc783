"""ipvlan and vlan modes and vlan-uplink bridge networks: they need ipvlan / 802.1q, which only
the full-kernel guest has (run by tests/guest/test_boot_guest.py; skipped elsewhere).

Why the plugin runs in-process here: each exec of `pybridge` imports pyroute2, 3-5 s in the
emulated guest. `InProcessCni` is the shared CniTool (libcni semantics: prevResult, cache, DEL
with the cached result) whose "exec" calls `cni.handler.handle`, the function the exec'd plugin
and the daemon both run. "Host B" of the two-host VLAN test is a namespace: its plugin calls run
in a thread that entered that namespace, which is all the plugin's notion of "the host" is.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cni_bridge.cni.handler import handle
from cni_bridge.config import parse_network
from cni_bridge.kernel import netlink
from cni_bridge.modes import uplink as uplinks
from tests.support.cnitool import CniCallError, CniTool, PluginCall, parse_cni_args
from tests.support.host import run
from tests.support.netns import Netns
from tests.support.session import register_data_dir, unique_name
from tests.support.topology import Uplink

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


class InProcessCni(CniTool):
    """CniTool whose plugin "exec" is a call of handler.handle in this process."""

    def exec_plugin(self, plugin_type: str, command: str, config: Mapping[str, Any], *,
                    container_id: str = "", netns: str | None = "", ifname: str = "",
                    args: Any = None, cni_path: str | None = None,
                    raise_on_error: bool = True) -> PluginCall:
        cni_env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns or "",
                   "CNI_ARGS": ";".join(f"{k}={v}" for k, v in parse_cni_args(args)), "CNI_IFNAME": ifname,
                   "CNI_PATH": cni_path if cni_path is not None else ":".join(self.path)}
        call = PluginCall(plugin=plugin_type, command=command, path="in-process", env=cni_env,
                          stdin=dict(config))
        self.history.append(call)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")} | cni_env
        response = handle(plugin_type, env, json.dumps(config).encode())
        call.exit_code, call.stderr = response.exit_code, response.log
        call.stdout = response.stdout.decode()
        call.output = json.loads(call.stdout) if call.stdout.strip() else None
        if call.exit_code != 0 and raise_on_error:
            raise self._error_for(call)
        return call


@pytest.fixture
def cni(tmp_path: Path) -> Iterator[InProcessCni]:
    data_dir = tmp_path / "cni-data"
    data_dir.mkdir()
    register_data_dir(data_dir)
    tool = InProcessCni(tmp_path / "cni-cache", data_dir=data_dir)
    yield tool
    tool.cleanup()


@pytest.fixture
def cleanup() -> Iterator[Callable[[Callable[[], object]], None]]:
    """Register finalizers (bridges, which pybridge never deletes on DEL)."""
    steps: list[Callable[[], object]] = []
    yield steps.append
    for step in reversed(steps):
        step()


def on_host(ns: Netns, fn: Callable[[], T]) -> T:
    """Run `fn` in a thread whose network namespace is `ns`: pybridge acting on "another host"."""
    box: dict[str, Any] = {}

    def target() -> None:
        fd = os.open(ns.path, os.O_RDONLY)
        try:
            if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc
        finally:
            os.close(fd)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def conflist(cni: CniTool, subnet: Any, start: int, **plugin: Any) -> dict[str, Any]:
    plugin = {"type": "pybridge", **plugin,
              "ipam": {"type": "pybridge-ipam", "dataDir": str(cni.data_dir),
                       "ranges": [[{"subnet": str(subnet), "rangeStart": str(subnet.network_address + start)}]]}}
    return {"cniVersion": "1.0.0", "name": unique_name("net"), "plugins": [plugin]}


def ip_of(result: dict[str, Any]) -> str:
    return result["ips"][-1]["address"].split("/")[0]


def details(ns: Netns, ifname: str = "eth0") -> dict[str, Any]:
    return ns.ip_json("-d", "link", "show", "dev", ifname)[0]


def children_of(master: str) -> list[str]:
    return [link["ifname"] for link in json.loads(run(["ip", "-d", "-j", "link"]).stdout)
            if link.get("link") == master]


# ----- ipvlan ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["l2", "l3", "l3s"])
def test_ipvlan_modes(cni: InProcessCni, uplink: Uplink, netns: Callable[..., Netns], mode: str) -> None:
    a, b = netns(), netns()
    conf = conflist(cni, uplink.subnet, 10, mode="ipvlan", master=uplink.host_if, ipvlanMode=mode)
    ra = cni.add(conf, a.path).result
    rb = cni.add(conf, b.path).result
    link = details(a)
    assert link["linkinfo"]["info_kind"] == "ipvlan" and link["linkinfo"]["info_data"]["mode"] == mode
    master_mac = json.loads(run(["ip", "-j", "link", "show", "dev", uplink.host_if]).stdout)[0]["address"]
    assert link["address"] == master_mac == ra["interfaces"][0]["mac"]  # one MAC for all
    assert a.ping(ip_of(rb)) and b.ping(ip_of(ra))
    if mode == "l2":
        assert a.ping(uplink.outside_ip)
    cni.check(conf, a.path)
    cni.delete(conf, a.path)
    cni.delete(conf, a.path)
    cni.delete(conf, b.path)
    assert a.link_names() == b.link_names() == ["lo"] and children_of(uplink.host_if) == []


def test_ipvlan_chained_after_a_plugin_that_names_the_master(cni: InProcessCni, uplink: Uplink,
                                                             netns: Callable[..., Netns]) -> None:
    """No master, no ipam: the single interface of prevResult is the master and its addresses
    go on the ipvlan link (the reference plugin's chaining contract)."""
    ns = netns()
    address = f"{uplink.subnet.network_address + 77}/{uplink.subnet.prefixlen}"
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": uplink.host_if}],
            "ips": [{"interface": 0, "address": address}], "routes": []}
    config = {"cniVersion": "1.0.0", "name": unique_name("net"), "type": "pybridge", "mode": "ipvlan",
              "prevResult": prev}
    call = cni.exec_plugin("pybridge", "ADD", config, container_id="chained", netns=ns.path, ifname="eth0")
    assert [i["name"] for i in call.output["interfaces"]] == [uplink.host_if, "eth0"]
    assert call.output["ips"] == [{"interface": 1, "address": address}]
    assert ns.addresses("eth0") == [address] and details(ns)["linkinfo"]["info_kind"] == "ipvlan"
    assert ns.ping(uplink.outside_ip)
    cni.exec_plugin("pybridge", "DEL", config, container_id="chained", netns=ns.path, ifname="eth0")
    assert ns.link_names() == ["lo"]


# ----- vlan mode --------------------------------------------------------------------------------
def test_vlan_mode(cni: InProcessCni, uplink_factory: Callable[..., Uplink], netns: Callable[..., Netns]) -> None:
    trunk = uplink_factory(host_addr=False, ipv6=False)
    out, subnet = trunk.outside, trunk.subnet
    out.ip("addr", "flush", "dev", trunk.outside_if)  # the outside host is on VLAN 100 only
    out.ip("link", "add", "link", trunk.outside_if, "name", "v100", "type", "vlan", "id", "100")
    out.ip("addr", "add", f"{trunk.outside_ip}/{subnet.prefixlen}", "dev", "v100")
    out.ip("link", "set", "v100", "up")
    a, b, c = netns(), netns(), netns()
    on100 = conflist(cni, subnet, 10, mode="vlan", master=trunk.host_if, vlanId=100, mtu=1400)
    on200 = conflist(cni, subnet, 50, mode="vlan", master=trunk.host_if, vlanId=200)
    cni.add(on100, a.path)
    cni.add(on200, b.path)
    link = details(a)
    assert link["linkinfo"]["info_data"]["id"] == 100 and link["mtu"] == 1400
    assert details(b)["linkinfo"]["info_data"]["id"] == 200
    assert a.ping(trunk.outside_ip)
    assert not b.ping(trunk.outside_ip, timeout=1)  # same subnet, other VLAN: not reachable
    cni.check(on100, a.path)
    cni.check(on200, b.path)
    with pytest.raises(CniCallError) as err:  # the kernel allows one link per VLAN id and master
        cni.add(on100, c.path)
    assert err.value.code == 7 and "VLAN id 100 already exists" in err.value.msg
    assert c.link_names() == ["lo"]
    cni.delete(on100, a.path)
    cni.delete(on200, b.path)
    assert children_of(trunk.host_if) == []


# ----- vlan-uplink bridge networks ------------------------------------------------------------
def test_vlan_uplink_bridges_isolate_vlans_and_join_hosts(
        cni: InProcessCni, uplink_factory: Callable[..., Uplink], netns: Callable[..., Netns],
        cleanup: Callable[[Callable[[], object]], None]) -> None:
    """Host A (this namespace) and host B (a namespace) share a trunk. VLAN 100 exists on both,
    VLAN 200 on A only; all containers use one subnet, so only layer 2 decides who reaches whom."""
    trunk = uplink_factory(host_addr=False, ipv6=False)
    host_b, subnet = trunk.outside, trunk.subnet
    host_b.ip("addr", "flush", "dev", trunk.outside_if)
    br100, br200, br_b = unique_name("br"), unique_name("br"), "brb100"
    for name in (br100, br200):
        cleanup(lambda name=name: run(["ip", "link", "del", name], check=False))
    a100_net = conflist(cni, subnet, 10, bridge=br100, uplink=trunk.host_if, vlanId=100)
    a200_net = conflist(cni, subnet, 50, bridge=br200, uplink=trunk.host_if, vlanId=200)
    b100_net = conflist(cni, subnet, 100, bridge=br_b, uplink=trunk.outside_if, vlanId=100)
    a100, a200, b100 = netns(), netns(), netns()
    ip_a100 = ip_of(cni.add(a100_net, a100.path).result)
    ip_a200 = ip_of(cni.add(a200_net, a200.path).result)
    ip_b100 = ip_of(on_host(host_b, lambda: cni.add(b100_net, b100.path).result))
    port100 = json.loads(run(["ip", "-d", "-j", "link", "show", "dev", f"{trunk.host_if}.100"]).stdout)[0]
    assert port100["master"] == br100 and port100["linkinfo"]["info_data"]["id"] == 100
    # Host B itself is on VLAN 200 (an address of the same subnet on its own sub-interface).
    v200 = subnet.network_address + 200
    host_b.ip("link", "add", "link", trunk.outside_if, "name", "v200", "type", "vlan", "id", "200")
    host_b.ip("addr", "add", f"{v200}/{subnet.prefixlen}", "dev", "v200")
    host_b.ip("link", "set", "v200", "up")

    assert b100.ping(ip_a100, count=2)          # same VLAN id on two hosts: one segment
    assert a200.ping(v200)                      # (VLAN 200 works across the trunk too)
    assert not b100.ping(ip_a200, timeout=1)    # other VLAN id: isolated ...
    assert not a100.ping(v200, timeout=1)
    assert not a100.ping(ip_a200, timeout=1)    # ... also between bridges of one host
    assert ip_b100 not in (ip_a100, ip_a200)

    cni.delete(a100_net, a100.path)
    cni.delete(a200_net, a200.path)
    on_host(host_b, lambda: cni.delete(b100_net, b100.path))
    with netlink.root() as host:
        for conf in (a100_net, a200_net):
            uplinks.detach(host, parse_network(conf["plugins"][0] | {"name": conf["name"]}))
    assert children_of(trunk.host_if) == []  # the VLAN sub-interfaces went with their networks
