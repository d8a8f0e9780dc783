"""Proof that the shared test infrastructure does what the other tests rely on, on the real kernel:
namespaces, the uplink, the Go reference `bridge` + `host-local` + `loopback` through cnitool,
host snapshots, and the session-end leak check (via an inner pytest). The parts that need no root
(cnitool against a fake plugin, names, subnets, hostsnap's diff): tests/unit/test_support_selftest.py.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import session as support_session
from tests.support.cnitool import CniTool, bridge_conflist
from tests.support.forwarding import forward_allowance
from tests.support.host import run, wait_for
from tests.support.hostsnap import assert_unchanged, diff, mine, snapshot
from tests.support.leaks import lease_files
from tests.support.paths import REPO
from tests.support.session import IFNAMSIZ, unique_name
from tests.support.subnets import unique_subnet

GO_PLUGINS = Path("/usr/lib/cni")
needs_go_plugins = pytest.mark.skipif(
    not (GO_PLUGINS / "bridge").exists(), reason="containernetworking-plugins not installed"
)


def test_netns_factory(netns) -> None:
    ns = netns()
    assert ns.exists() and ns.path == f"/run/netns/{ns.name}" and ns.name.startswith(support_session.session().prefix)
    assert ns.link_names() == ["lo"] and "UP" in ns.ip_json("link", "show", "lo")[0]["flags"]
    assert ns.run("cat", "/proc/net/dev").returncode == 0
    assert ns.ping("127.0.0.1") and ns.ping("::1")
    assert not ns.ping("10.255.255.1", timeout=1)  # no route: fails fast, never leaves the ns
    tracked = ns.popen("sleep", "60")
    untracked = subprocess.Popen(["ip", "netns", "exec", ns.name, "sleep", "60"])
    assert wait_for(lambda: len(ns.pids()) == 2)
    ns.delete()
    assert not ns.exists() and tracked.poll() is not None and untracked.wait(5) == -9
    ns.delete()  # idempotent


def test_ping_tolerates_a_neighbour_entry_left_failed(netns) -> None:
    """After an unanswered ping the neighbour entry is FAILED and the next first packet is
    dropped while the kernel re-resolves; `ping()` must still report the address reachable."""
    a, b = netns(), netns()
    run(["ip", "link", "add", "p0", "netns", a.name, "type", "veth", "peer", "name", "p1", "netns", b.name])
    a.ip("addr", "add", "10.77.0.1/24", "dev", "p0")
    b.ip("addr", "add", "10.77.0.2/24", "dev", "p1")
    a.ip("link", "set", "p0", "up")
    assert not a.ping("10.77.0.2", timeout=1)  # peer down: ARP fails
    b.ip("link", "set", "p1", "up")
    assert a.ping("10.77.0.2") and a.ping("10.77.0.2", count=3, min_replies=3)


def test_uplink(uplink) -> None:
    assert uplink.host_if.startswith(support_session.session().prefix) and len(uplink.host_if) <= IFNAMSIZ
    host = run(["ip", "-j", "addr", "show", "dev", uplink.host_if]).stdout
    assert str(uplink.host_ip) in host and str(uplink.host_ip6) in host
    assert uplink.outside.addresses(uplink.outside_if, family=4) == [f"{uplink.outside_ip}/24"]
    assert uplink.outside.ping(uplink.host_ip) and uplink.outside.ping(uplink.host_ip6)
    assert uplink.subnet.subnet_of(ipaddress.ip_network("198.18.0.0/15"))


def test_uplink_without_host_address(uplink_factory) -> None:
    up = uplink_factory("198.19.254.10/24", host_addr=False, ipv6=False)
    assert up.host_ip is None and up.outside_ip == ipaddress.ip_address("198.19.254.10")
    assert "198.19.254" not in run(["ip", "addr", "show", "dev", up.host_if]).stdout


@needs_go_plugins
def test_go_bridge_host_local_loopback(cni: CniTool, netns) -> None:
    """The reference plugins, driven like a runtime would: the baseline for everything else."""
    name, br, subnet = unique_name("net"), unique_name("br"), unique_subnet()
    gw = str(subnet.network_address + 1)
    with forward_allowance(br):  # a Docker host drops forwarding by default; the Go bridge adds no accept
        conf = bridge_conflist(name, bridge=br, subnets=[str(subnet)], data_dir=cni.data_dir,
                               is_default_gateway=True, chain=[{"type": "loopback"}])
        before = snapshot([cni.data_dir])
        a, b = netns(), netns()
        ida, idb = unique_name("ctr"), unique_name("ctr")

        ra = cni.add(conf, a.path, container_id=ida, args="IgnoreUnknown=1;K8S_POD_NAME=pa")
        res = ra.result
        assert [c.plugin for c in ra.calls] == ["bridge", "loopback"]
        assert res["cniVersion"] == "1.0.0"
        ifaces = res["interfaces"]
        assert ifaces[0]["name"] == br and "sandbox" not in ifaces[0]
        eth0 = [i for i in ifaces if i.get("sandbox")]
        assert len(eth0) == 1 and eth0[0]["name"] == "eth0" and eth0[0]["sandbox"] == a.path
        assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", eth0[0]["mac"])
        ip_a = ipaddress.ip_interface(res["ips"][0]["address"])
        assert ip_a.network == subnet and res["ips"][0]["gateway"] == gw
        assert ifaces[res["ips"][0]["interface"]]["name"] == "eth0"
        assert a.addresses("eth0") == [str(ip_a)]
        assert a.ip_json("route", "show", "default")[0]["gateway"] == gw
        assert cni.cached(conf, ida).result == res

        ip_b = ipaddress.ip_interface(cni.add(conf, b.path, container_id=idb).result["ips"][0]["address"])
        assert a.ping(ip_b.ip) and b.ping(ip_a.ip) and a.ping(gw)
        assert len(lease_files(cni.data_dir)) == 2

        assert [c.plugin for c in cni.check(conf, a.path, container_id=ida).calls] == ["bridge", "loopback"]

        rd = cni.delete(conf, a.path, container_id=ida)
        assert [c.plugin for c in rd.calls] == ["loopback", "bridge"]
        assert "eth0" not in a.link_names() and len(lease_files(cni.data_dir)) == 1
        assert cni.cached(conf, ida) is None
        cni.delete(conf, a.path, container_id=ida)  # DEL twice: still success

        cni.delete(conf, "", container_id=idb)  # runtime lost the netns: IPAM must still release
        assert lease_files(cni.data_dir) == []
        b.delete()  # the container end goes with the namespace, and its host veth with it
        assert wait_for(lambda: json.loads(run(["ip", "-j", "link", "show", "master", br]).stdout or "[]") == [])
        run(["ip", "link", "delete", br])
        # host-local keeps its bookkeeping (lock, last_reserved_ip.N); anything else is a leak.
        # Only what is ours: other test runs may change the host at the same time.
        assert_unchanged(before, snapshot([cni.data_dir]), only=mine(cni.data_dir),
                         ignore=[rf"/{name}/$", rf"/{name}/lock = ", rf"/{name}/last_reserved_ip\.\d+ = "])


def test_snapshot_sees_changes(tmp_path: Path) -> None:
    files = tmp_path / "state"
    files.mkdir()
    s0 = snapshot([files])
    scope = mine(files)  # the host is shared with other test sessions: judge only our lines
    br, table, net = unique_name("br"), unique_name("t"), unique_subnet()
    try:
        run(["ip", "link", "add", br, "type", "bridge"])
        run(["ip", "addr", "add", f"{net.network_address + 1}/24", "dev", br])
        run(["ip", "link", "set", br, "up"])
        # no hook: the chain is inert, it only has to show up in the ruleset
        run(["nft", "-f", "-"], input=f"table inet {table} {{\n set s {{ type ipv4_addr; elements = {{ {net.network_address + 5} }}; }}\n"
                                       f" chain c {{\n ip saddr @s counter accept\n }}\n}}\n")
        (files / "lease").write_text("abc\r\neth0")
        d = diff(s0, snapshot([files]), only=scope)
        text = "\n".join(d)
        assert f"links: + {br} kind=bridge master=- up" in text
        assert f"addresses: + {br} inet {net.network_address + 1}/24" in text
        assert f"routes: + inet unicast {net} dev {br}" in text
        assert f"nft: + table inet {table} > set s: element {net.network_address + 5}" in text
        assert f"nft: + table inet {table} > chain c: ip saddr @s counter accept" in text
        assert f"files: + {files}/lease = 'abc\\r\\neth0'" in text
        with pytest.raises(AssertionError, match="host state changed"):
            assert_unchanged(s0, snapshot([files]), only=scope)
    finally:
        run(["nft", "delete", "table", "inet", table], check=False)
        run(["ip", "link", "delete", br], check=False)
        (files / "lease").unlink(missing_ok=True)
    assert_unchanged(s0, snapshot([files]), only=scope)


def test_snapshot_of_a_namespace_is_stable_under_traffic(netns) -> None:
    """Counters, handles and neighbour churn must not show up as differences."""
    a, b = netns(), netns()
    run(["ip", "link", "add", "p0", "netns", a.name, "type", "veth", "peer", "name", "p1", "netns", b.name])
    a.ip("addr", "add", "10.78.0.1/24", "dev", "p0")
    b.ip("addr", "add", "10.78.0.2/24", "dev", "p1")
    a.ip("link", "set", "p0", "up")
    b.ip("link", "set", "p1", "up")
    a.run("nft", "-f", "-", input="table inet t {\n set s { type ipv4_addr; flags dynamic; timeout 1h; }\n"
                                   " chain out {\n type filter hook output priority 0; policy accept;\n"
                                   "  update @s { ip daddr } counter\n }\n}\n")
    sysctls = ["net.ipv4.ip_forward"]
    assert a.ping("10.78.0.2")
    n0 = snapshot(netns=a.name, sysctls=sysctls)
    assert "table inet t > set s: element 10.78.0.2" in n0["nft"]
    assert a.ping("10.78.0.2", count=3)  # counters and set timers move
    assert diff(n0, snapshot(netns=a.name, sysctls=sysctls)) == []
    # iptables and sysctls inside a namespace: the root's rules are never touched
    a.run("iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", "10.1.2.3/32", "-j", "MASQUERADE")
    was = n0["sysctls"][0].split()[-1]  # a new netns copies ip_forward from the root's
    now = "0" if was == "1" else "1"
    a.run("sysctl", "-qw", f"net.ipv4.ip_forward={now}")
    d = diff(n0, snapshot(netns=a.name, sysctls=sysctls))
    assert "iptables: + ipv4 nat | -A POSTROUTING -s 10.1.2.3/32 -j MASQUERADE" in d
    assert f"sysctls: + net.ipv4.ip_forward = {now}" in d and f"sysctls: - net.ipv4.ip_forward = {was}" in d


INNER_TESTS = """
import subprocess
import pytest
from tests.support.netns import create_netns
from tests.support.session import register_data_dir

@pytest.fixture(scope="session")
def shared_ns():
    ns = create_netns()
    yield ns
    ns.delete()  # torn down before the leak check runs: not a leak

def test_uses_a_session_fixture(shared_ns):
    assert shared_ns.exists()

def test_fails_after_making_a_namespace(netns):
    ns = netns()
    open(MARK, "w").write(ns.name)
    assert False, "deliberate failure"

def test_leaks(test_prefix, tmp_path):
    sh = lambda *a: subprocess.run(a, check=True)
    sh("ip", "netns", "add", test_prefix + "leak1")
    sh("ip", "link", "add", test_prefix + "lbr", "type", "bridge")
    sh("ip", "link", "add", VETH, "type", "veth", "peer", "name", VETH + "p")
    sh("ip", "link", "set", VETH, "master", test_prefix + "lbr")
    sh("nft", "add", "table", "inet", test_prefix + "t1")
    d = register_data_dir(tmp_path / "data")
    (d / "net").mkdir(parents=True)
    (d / "net" / "10.1.2.3").write_text("ctr\\r\\neth0")
    (d / "net" / "lock").write_text("")
    (d / "net" / "owner.ctr+eth0").write_text("{}")  # pybridge-ipam's index: a leak too
    open(LEASE, "w").write(str(d / "net" / "10.1.2.3"))
"""


def test_failed_tests_clean_up_and_leaks_fail_the_session(tmp_path: Path) -> None:
    """Run an inner pytest session (own prefix) with a failing test and a leaking test."""
    inner_prefix = "pbt" + secrets.token_hex(2)
    veth = "vt" + secrets.token_hex(4)  # a plugin-style name without the prefix
    mark, lease = tmp_path / "ns-name", tmp_path / "lease-path"
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(REPO)!r})\nfrom tests.conftest import *  # noqa\n")
    (inner / "test_inner.py").write_text(
        f"MARK = {str(mark)!r}\nLEASE = {str(lease)!r}\nVETH = {veth!r}\n" + textwrap.dedent(INNER_TESTS))
    env = dict(os.environ, PYBRIDGE_TEST_PREFIX=inner_prefix)
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA",
                        "--rootdir", str(inner), str(inner)],
                       capture_output=True, text=True, env=env, cwd=inner, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "1 failed, 2 passed" in out, out
    assert len(re.findall(r"^  netns ", out, re.M)) == 1, out  # only the deliberate leak
    assert "TEST RESOURCES LEAKED" in out, out
    for item in (f"netns {inner_prefix}leak1", f"link {inner_prefix}lbr", f"link {veth} (enslaved to",
                 f"nft-table inet {inner_prefix}t1", "lease "):
        assert item in out, f"{item!r} not reported:\n{out}"
    assert "test_leaks" in out and "LeakWarning" in out, out  # attributed to the test
    # the failing test's namespace is gone, and the leak check removed the leaks
    assert not Path("/run/netns", mark.read_text()).exists()
    assert not Path(f"/run/netns/{inner_prefix}leak1").exists()
    links = run(["ip", "-j", "link", "show"]).stdout
    assert inner_prefix not in links and veth not in links
    assert inner_prefix not in run(["nft", "list", "tables"]).stdout
    lease_path = Path(lease.read_text())
    assert not lease_path.exists() and not lease_path.with_name("owner.ctr+eth0").exists()
    assert lease_path.with_name("lock").exists()  # bookkeeping is not a leak
    assert "owner.ctr+eth0" in out
    assert not (support_session.REGISTRY_DIR / f"{inner_prefix}.json").exists()
