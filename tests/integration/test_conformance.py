"""Conformance: pybridge + pybridge-ipam side by side with the Go bridge + host-local (1.1.1).

Every scenario runs against both implementations and every cniVersion a runtime sends today
(0.3.1, 0.4.0, 1.0.0), and asserts the same observable behaviour: result fields present and typed
alike, the spec's error codes, and the same kernel state after each step. Where the two differ
on purpose, the expectation tables below say so, and docs/runtimes.md lists the difference.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cnitool import CniTool
from tests.support.host import run, wait_for
from tests.support.netns import Netns
from tests.support.runtime_checks import (
    GO,
    PYBRIDGE,
    TestNetwork,
    bridge_ports,
    container_view,
    iptables_lines,
    network_factory,
    nft_table_text,
)
from tests.support.session import unique_name
from tests.support.subnets import unique_subnet

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not Path("/usr/lib/cni/bridge").exists(),
                                 reason="apt-get install containernetworking-plugins")]

IMPLS = {"pybridge": PYBRIDGE, "go": GO}
VERSIONS = ("0.3.1", "0.4.0", "1.0.0")
SPEC_VERSIONS = {"0.3.1", "0.4.0", "1.0.0"}

# What the container sees after ADD (addresses as offsets in the subnet: .2/24, gateway .1).
EXPECTED_VIEW = {"links": ["eth0"], "addresses": [("inet", 2, 24)],
                 "routes": [("-4", "SUBNET", None), ("-4", "default", 1)]}
GONE_VIEW = {"links": [], "addresses": [], "routes": []}


@pytest.fixture(params=list(IMPLS), ids=list(IMPLS))
def impl(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def networks(tmp_path: Path) -> Iterator[Callable[..., TestNetwork]]:
    yield from network_factory(tmp_path)


def make_net(networks: Callable[..., TestNetwork], impl: str, version: str = "1.0.0", **kw: Any) -> TestNetwork:
    kw.setdefault("is_default_gateway", True)
    return networks(impl=IMPLS[impl], cni_version=version, **kw)


def shape(obj: Any) -> Any:
    """The JSON structure with every leaf replaced by its type name."""
    if isinstance(obj, dict):
        return {k: shape(v) for k, v in sorted(obj.items())}
    if isinstance(obj, list):
        return [shape(v) for v in obj]
    return type(obj).__name__


def result_shape(result: dict[str, Any]) -> Any:
    """Shape with an empty `dns` dropped: Go always prints `"dns": {}`, pybridge omits it (both
    valid: the spec makes dns optional)."""
    r = copy.deepcopy(result)
    if r.get("dns") == {}:
        del r["dns"]
    return shape(r)


def masq_mentions(impl: str, net: TestNetwork, ip: str) -> bool:
    """Is `ip` masqueraded? pybridge: an element of the network's nft set; Go: iptables nat."""
    if impl == "pybridge":
        return ip in nft_table_text(net.name)
    return any(ip in ln for ln in iptables_lines("nat"))


def host_view(net: TestNetwork) -> dict[str, Any]:
    """The host side: ports on the bridge, the bridge's gateway address, MAC pinned or not."""
    ports = bridge_ports(net.bridge)
    addrs = []
    proc = run(["ip", "-j", "-4", "addr", "show", "dev", net.bridge], check=False)
    for link in json.loads(proc.stdout or "[]"):
        addrs += [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])]
    try:
        pinned = Path(f"/sys/class/net/{net.bridge}/addr_assign_type").read_text().strip() == "3"
    except OSError:
        pinned = None
    return {"ports": len(ports), "veth_named": all(p.startswith("veth") for p in ports),
            "gateway": addrs, "mac_pinned": pinned}


# ----- ADD result shape and kernel state, side by side ---------------------------------------
def test_add_result_and_state_side_by_side(version: str, cni: CniTool, netns: Callable[..., Netns],
                                           networks: Callable[..., TestNetwork]) -> None:
    seen: dict[str, dict[str, Any]] = {}
    for name in IMPLS:
        net = make_net(networks, name, version, ip_masq=True)
        ns = netns()
        cid = unique_name("ctr")
        res = cni.add(net.conflist, ns.path, container_id=cid).result
        ip = str(ipaddress.ip_interface(res["ips"][0]["address"]).ip)
        seen[name] = {
            "shape": result_shape(res),
            "view": container_view(ns, net.subnet),
            "host": host_view(net),
            "masq": masq_mentions(name, net, ip),
        }
        # spec facts about the result, per version
        assert res["cniVersion"] == version
        ifaces = res["interfaces"]
        assert [i["name"] for i in ifaces] == [net.bridge, ifaces[1]["name"], "eth0"]
        assert "sandbox" not in ifaces[0] and "sandbox" not in ifaces[1]
        assert ifaces[2]["sandbox"] == ns.path
        assert ifaces[2]["mac"] == ns.ip_json("link", "show", "eth0")[0]["address"]
        ipc = res["ips"][0]
        assert ifaces[ipc["interface"]]["name"] == "eth0"
        assert ipc["gateway"] == net.gateway
        assert ("version" in ipc) == (version != "1.0.0")
        if version != "1.0.0":
            assert ipc["version"] == "4"
        assert {"dst": "0.0.0.0/0", "gw": net.gateway} in res["routes"]
        assert seen[name]["view"] == EXPECTED_VIEW
        cni.delete(net.conflist, ns.path, container_id=cid)
        seen[name]["after_del"] = (container_view(ns, net.subnet), host_view(net)["ports"],
                                   net.leases(), masq_mentions(name, net, ip))
    assert seen["pybridge"]["shape"] == seen["go"]["shape"]
    assert seen["pybridge"]["view"] == seen["go"]["view"]
    py_host, go_host = seen["pybridge"]["host"], seen["go"]["host"]
    assert py_host["ports"] == go_host["ports"] == 1 and py_host["veth_named"] and go_host["veth_named"]
    assert [g.endswith(".1/24") for g in py_host["gateway"]] == [g.endswith(".1/24") for g in go_host["gateway"]] == [True]
    assert py_host["mac_pinned"] == go_host["mac_pinned"] is True
    assert seen["pybridge"]["masq"] and seen["go"]["masq"]
    assert seen["pybridge"]["after_del"] == seen["go"]["after_del"] == (GONE_VIEW, 0, [], False)


def test_dual_stack_side_by_side(cni: CniTool, netns: Callable[..., Netns],
                                 networks: Callable[..., TestNetwork]) -> None:
    """IPv4 + IPv6 range sets: same result shape, same addresses and routes in the container.
    (pybridge adds the IPv6 addresses with `nodad`; Go waits for DAD to finish instead.)"""
    seen = {}
    for name in IMPLS:
        v6 = unique_subnet(6)
        net = make_net(networks, name)
        conf = copy.deepcopy(net.conflist)
        conf["plugins"][0]["ipam"]["ranges"].append([{"subnet": str(v6)}])
        ns = netns()
        cid = unique_name("ctr")
        res = cni.add(conf, ns.path, container_id=cid).result
        assert [ipaddress.ip_interface(i["address"]).version for i in res["ips"]] == [4, 6]
        assert {"dst": "::/0", "gw": str(v6.network_address + 1)} in res["routes"]
        assert ns.ping(v6.network_address + 1)
        seen[name] = (result_shape(res), container_view(ns, [net.subnet, v6]))
        cni.delete(conf, ns.path, container_id=cid)
        assert container_view(ns, [net.subnet, v6]) == GONE_VIEW and net.leases() == []
    assert seen["pybridge"] == seen["go"]
    assert seen["go"][1]["addresses"] == [("inet", 2, 24), ("inet6", 2, 64)]


def test_mtu_and_hairpin_side_by_side(cni: CniTool, netns: Callable[..., Netns],
                                      networks: Callable[..., TestNetwork]) -> None:
    """`mtu` reaches the bridge and both veth ends, `hairpinMode` the bridge port: alike."""
    seen = {}
    for name in IMPLS:
        net = make_net(networks, name, extra={"mtu": 1400, "hairpinMode": True})
        ns = netns()
        cid = unique_name("ctr")
        res = cni.add(net.conflist, ns.path, container_id=cid).result
        host_veth = res["interfaces"][1]["name"]
        mtus = [json.loads(run(["ip", "-j", "link", "show", dev]).stdout)[0]["mtu"]
                for dev in (net.bridge, host_veth)]
        mtus.append(ns.ip_json("link", "show", "eth0")[0]["mtu"])
        hairpin = Path(f"/sys/class/net/{host_veth}/brport/hairpin_mode").read_text().strip()
        seen[name] = (mtus, hairpin)
        cni.delete(net.conflist, ns.path, container_id=cid)
    assert seen["pybridge"] == seen["go"] == ([1400, 1400, 1400], "1")


# ----- CHECK --------------------------------------------------------------------------------
def test_check_passes_then_fails_after_tampering(impl: str, version: str, cni: CniTool,
                                                 netns: Callable[..., Netns],
                                                 networks: Callable[..., TestNetwork]) -> None:
    net = make_net(networks, impl, version)
    ns = netns()
    cid = unique_name("ctr")
    res = cni.add(net.conflist, ns.path, container_id=cid).result
    main = dict(net.main, name=net.name, cniVersion=version, prevResult=res)
    if version == "0.3.1":
        # libcni refuses; the plugins themselves answer 1 (incompatible version), both of them
        call = cni.exec_plugin(IMPLS[impl][0], "CHECK", main, container_id=cid, netns=ns.path,
                               ifname="eth0", raise_on_error=False)
        assert call.exit_code != 0 and call.output["code"] == 1
    else:
        cni.check(net.conflist, ns.path, container_id=cid)
        ns.ip("addr", "flush", "dev", "eth0")
        run_ = cni.check(net.conflist, ns.path, container_id=cid, raise_on_error=False)
        assert not run_.ok
        assert run_.error.code == 999  # both: a generic failure (the spec fixes no code here)
        assert "eth0" in run_.error.msg and res["ips"][0]["address"].split("/")[0] in run_.error.msg
    cni.delete(net.conflist, ns.path, container_id=cid)
    assert container_view(ns, net.subnet) == GONE_VIEW and net.leases() == []


# ----- DEL ------------------------------------------------------------------------------------
def test_del_twice_and_without_netns(impl: str, version: str, cni: CniTool, netns: Callable[..., Netns],
                                     networks: Callable[..., TestNetwork]) -> None:
    net = make_net(networks, impl, version, ip_masq=True)
    ns = netns()
    cid = unique_name("ctr")
    res = cni.add(net.conflist, ns.path, container_id=cid).result
    ip = str(ipaddress.ip_interface(res["ips"][0]["address"]).ip)

    cni.delete(net.conflist, "", container_id=cid)  # the runtime lost the netns (containerd)
    assert net.leases() == [], "the lease must be released without a netns"
    if impl == "pybridge":
        # host veth found by its id-derived name and deleted (the container end goes with it),
        # masquerade released: nothing is left
        assert bridge_ports(net.bridge) == [] and container_view(ns, net.subnet) == GONE_VIEW
        assert not masq_mentions(impl, net, ip)
    else:
        # Go bridge: only IPAM is released; the veth pair stays until the netns goes, and the
        # per-container iptables masquerade chain stays (a leak) unless DEL comes again with it
        assert len(bridge_ports(net.bridge)) == 1 and container_view(ns, net.subnet) == EXPECTED_VIEW
        assert masq_mentions(impl, net, ip)
    cni.delete(net.conflist, ns.path, container_id=cid)  # again, now with the netns
    cni.delete(net.conflist, ns.path, container_id=cid)  # and again: DEL is idempotent
    cni.delete(net.conflist, "", container_id=unique_name("never"))  # never added: success too
    assert container_view(ns, net.subnet) == GONE_VIEW
    assert bridge_ports(net.bridge) == [] and net.leases() == []
    assert not masq_mentions(impl, net, ip)


def test_del_after_netns_deleted(impl: str, cni: CniTool, netns: Callable[..., Netns],
                                 networks: Callable[..., TestNetwork]) -> None:
    """The netns path no longer exists (pod sandbox gone): DEL must still succeed and release."""
    net = make_net(networks, impl, ip_masq=True)
    ns = netns()
    cid = unique_name("ctr")
    res = cni.add(net.conflist, ns.path, container_id=cid).result
    ip = str(ipaddress.ip_interface(res["ips"][0]["address"]).ip)
    path = ns.path
    ns.delete()
    cni.delete(net.conflist, path, container_id=cid)
    assert net.leases() == [] and wait_for(lambda: bridge_ports(net.bridge) == [])
    if impl == "pybridge":
        assert not masq_mentions(impl, net, ip)
    else:  # Go: the netns is gone, so it cannot learn the address: the masquerade chain leaks
        assert masq_mentions(impl, net, ip)
        _remove_go_masq_chain(ip)


def _remove_go_masq_chain(ip: str) -> None:
    """Remove the Go bridge's leaked `-A POSTROUTING -s IP/32 ... -j CNI-xxx` rule and its chain."""
    for ln in run(["iptables-save", "-t", "nat"]).stdout.splitlines():
        if ln.startswith("-A POSTROUTING") and f"-s {ip}/32" in ln:
            argv = shlex.split(ln)
            chain = argv[argv.index("-j") + 1]
            run(["iptables", "-w", "-t", "nat", "-D", *argv[1:]], check=False)
            run(["iptables", "-w", "-t", "nat", "-F", chain], check=False)
            run(["iptables", "-w", "-t", "nat", "-X", chain], check=False)


# ----- errors ---------------------------------------------------------------------------------
def _set(path: tuple, value: Any) -> Callable[[dict], None]:
    def apply(conf: dict) -> None:
        target = conf
        for key in path[:-1]:
            target = target[key]
        if value is _DROP:
            target.pop(path[-1], None)
        else:
            target[path[-1]] = value
    return apply


_DROP = object()
MAIN = ("plugins", 0)
# case -> (how to break the config, pybridge code, Go code, Go leaves eth0 in the netns)
# None = the ADD succeeds. The spec fixes 1 (version) and 4 (environment); for a bad config it
# suggests 7, which pybridge uses, while the Go plugins report most config errors as 999.
BAD_CONFIGS: dict[str, tuple[Callable[[dict], None], int | None, int | None, bool]] = {
    "subnet-not-cidr": (_set(MAIN + ("ipam", "ranges", 0, 0, "subnet"), "nonsense"), 7, 999, True),
    "gateway-outside-subnet": (_set(MAIN + ("ipam", "ranges", 0, 0, "gateway"), "192.0.2.1"), 7, 999, True),
    "ipam-type-missing": (_set(MAIN + ("ipam", "type"), _DROP), 7, None, False),
    "ipam-plugin-not-found": (_set(MAIN + ("ipam", "type"), "pbt-no-such-ipam"), 7, 999, True),
    "mtu-not-a-number": (_set(MAIN + ("mtu",), "abc"), 7, 999, False),
    "isGateway-not-bool": (_set(MAIN + ("isGateway",), "maybe"), 7, 999, False),
    "bridge-name-too-long": (_set(MAIN + ("bridge",), "x" * 20), 7, 999, False),
    "cniVersion-unknown": (_set(("cniVersion",), "9.9.9"), 1, 1, False),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config(impl: str, case: str, cni: CniTool, netns: Callable[..., Netns],
                    networks: Callable[..., TestNetwork]) -> None:
    breaker, py_code, go_code, go_leaves = BAD_CONFIGS[case]
    net = make_net(networks, impl)
    conf = copy.deepcopy(net.conflist)
    breaker(conf)
    ns = netns()
    cid = unique_name("ctr")
    run_ = cni.add(conf, ns.path, container_id=cid, raise_on_error=False)
    expected = py_code if impl == "pybridge" else go_code
    if expected is None:
        assert run_.ok, run_.error
        cni.delete(conf, ns.path, container_id=cid)
        return
    assert not run_.ok and run_.error.code == expected, run_.error
    assert run_.error.error is not None and isinstance(run_.error.msg, str) and run_.error.msg
    # pybridge validates before touching the kernel; Go sometimes fails after creating the veth
    leaves = go_leaves if impl == "go" else False
    assert ("eth0" in ns.link_names()) == leaves
    assert net.leases() == []
    cni.delete(conf, ns.path, container_id=cid, raise_on_error=False)


# (env overrides, pybridge code, Go code); the spec fixes 4 for a missing/invalid variable.
BAD_ENV: dict[str, tuple[dict[str, Any], int, int]] = {
    "no-netns-on-add": ({"netns": ""}, 4, 4),
    "no-container-id": ({"container_id": ""}, 4, 4),
    "unknown-cni-args": ({"args": "FOO=bar"}, 4, 999),
    "netns-does-not-exist": ({"netns": "/run/netns/pbt-does-not-exist"}, 4, 999),
}


@pytest.mark.parametrize("case", list(BAD_ENV))
def test_bad_environment(impl: str, case: str, cni: CniTool, netns: Callable[..., Netns],
                         networks: Callable[..., TestNetwork]) -> None:
    overrides, py_code, go_code = BAD_ENV[case]
    net = make_net(networks, impl)
    ns = netns()
    kw: dict[str, Any] = {"container_id": unique_name("ctr"), "netns": ns.path, "ifname": "eth0"}
    kw.update(overrides)
    conf = dict(net.main, name=net.name, cniVersion="1.0.0")
    call = cni.exec_plugin(IMPLS[impl][0], "ADD", conf, raise_on_error=False, **kw)
    assert call.exit_code != 0 and isinstance(call.output, dict)
    assert call.output["code"] == (py_code if impl == "pybridge" else go_code), call.output
    assert "eth0" not in ns.link_names() and net.leases() == []


def test_unknown_command(impl: str, cni: CniTool, netns: Callable[..., Netns]) -> None:
    conf = {"cniVersion": "1.0.0", "name": unique_name("net"), "type": IMPLS[impl][0]}
    call = cni.exec_plugin(IMPLS[impl][0], "FROB", conf, container_id=unique_name("ctr"),
                           netns=netns().path, ifname="eth0", raise_on_error=False)
    assert call.exit_code != 0 and call.output["code"] == 4  # both


def test_exhausted_range(impl: str, version: str, cni: CniTool, netns: Callable[..., Netns],
                         networks: Callable[..., TestNetwork]) -> None:
    """A /30 has one address after the gateway: the second ADD fails and leaves the first alone."""
    net = make_net(networks, impl, version, subnet=unique_subnet(4, 30))
    a, b = netns(), netns()
    ida, idb = unique_name("ctr"), unique_name("ctr")
    cni.add(net.conflist, a.path, container_id=ida)
    run_ = cni.add(net.conflist, b.path, container_id=idb, raise_on_error=False)
    assert not run_.ok and run_.error.error is not None
    # pybridge: 11 (try again later: a DEL may free an address); Go host-local: 999
    assert run_.error.code == (11 if impl == "pybridge" else 999)
    assert len(net.leases()) == 1
    assert a.ping(net.gateway), "the first container must keep working"
    if impl == "pybridge":  # nothing of the failed ADD is left
        assert "eth0" not in b.link_names() and len(bridge_ports(net.bridge)) == 1
    else:  # Go: the veth pair made before IPAM failed stays (until the netns is deleted)
        assert "eth0" in b.link_names() and len(bridge_ports(net.bridge)) == 2
    cni.delete(net.conflist, b.path, container_id=idb)
    cni.delete(net.conflist, a.path, container_id=ida)
    assert net.leases() == [] and bridge_ports(net.bridge) == []


def test_missing_cni_version(impl: str, cni: CniTool, netns: Callable[..., Netns],
                             networks: Callable[..., TestNetwork]) -> None:
    """No `cniVersion`: Go assumes 0.1.0 (and answers with a 0.1.0 `ip4` result); pybridge,
    which does not speak 0.1.0, refuses with 1 (incompatible version) and touches nothing."""
    net = make_net(networks, impl)
    conf = dict(net.main, name=net.name)
    ns = netns()
    cid = unique_name("ctr")
    call = cni.exec_plugin(IMPLS[impl][0], "ADD", conf, container_id=cid, netns=ns.path,
                           ifname="eth0", raise_on_error=False)
    if impl == "pybridge":
        assert call.exit_code != 0 and call.output["code"] == 1
        assert "eth0" not in ns.link_names() and net.leases() == []
    else:
        assert call.exit_code == 0 and call.output["cniVersion"] == "0.1.0" and "ip4" in call.output
    # DEL with the same config: Go cleans up; pybridge refuses it alike (there is nothing to do)
    call = cni.exec_plugin(IMPLS[impl][0], "DEL", conf, container_id=cid, netns=ns.path,
                           ifname="eth0", raise_on_error=False)
    assert call.ok == (impl == "go")
    assert net.leases() == [] and "eth0" not in ns.link_names()


# ----- VERSION --------------------------------------------------------------------------------
@pytest.mark.parametrize("asked", ["0.3.1", "0.4.0", "1.0.0"])
def test_version(impl: str, asked: str, cni: CniTool) -> None:
    for plugin in IMPLS[impl]:
        out = cni.version(plugin, cni_version=asked).result[0]
        assert SPEC_VERSIONS <= set(out["supportedVersions"]), out
        assert out["cniVersion"] in out["supportedVersions"]
    # pybridge also speaks 1.1.0 (GC, STATUS); it no longer speaks 0.1.0 / 0.2.0
    versions = set(cni.version(IMPLS[impl][0]).result[0]["supportedVersions"])
    if impl == "pybridge":
        assert "1.1.0" in versions and "0.2.0" not in versions
    else:
        assert "1.1.0" not in versions and "0.2.0" in versions
