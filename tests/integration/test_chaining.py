"""pybridge in plugin chains with the Go reference plugins, in both directions.

Forward: `pybridge` -> `portmap` (a host port reaches a server in the container, from an
outside namespace) -> `tuning` (a sysctl in the container) -> `firewall`. These consume
pybridge's result as prevResult, so this proves the result is what real chained plugins need.
DEL runs in reverse and must leave no iptables rule of portmap/firewall for the container.
Reverse: the Go `bridge` with `"ipam": {"type": "pybridge-ipam"}` (exec'd from CNI_PATH).
And the Go `bandwidth` after pybridge: it shapes pybridge's host veth, found in prevResult.
"""

from __future__ import annotations

import ipaddress
import random
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cni_bridge.attachment import Attachment
from tests.support.cnitool import CniTool, load_netconf
from tests.support.host import wait_for
from tests.support.netns import Netns
from tests.support.runtime_checks import (
    GO,
    PYBRIDGE,
    TestNetwork,
    bridge_ports,
    iptables_lines,
    network_factory,
    nft_table_text,
)
from tests.support.session import foreign_patterns, unique_name
from tests.support.shaping import ifb_devices, ingress_redirect, qdiscs, tbf_rate
from tests.support.topology import Uplink

pytestmark = pytest.mark.timeout(180)

GO_DIR = Path("/usr/lib/cni")
needs_go = pytest.mark.skipif(not all((GO_DIR / p).exists() for p in ("bridge", "portmap", "tuning", "firewall")),
                              reason="apt-get install containernetworking-plugins")

# A one-shot TCP server: prints READY once listening, answers each connection with a token.
SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(4); s.settimeout(60)
print("READY", flush=True)
for _ in range(4):
    c, peer = s.accept(); c.sendall(("pbt-hello from " + peer[0] + "\n").encode()); c.close()
"""
CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(c.recv(200).decode().strip())
"""
SYSCTL = "net.ipv4.conf.eth0.arp_announce"  # default 0 in a fresh namespace


@pytest.fixture
def networks(tmp_path: Path) -> Iterator[Callable[..., TestNetwork]]:
    yield from network_factory(tmp_path)


def start_server(ns: Netns, port: int) -> None:
    proc = ns.popen(sys.executable, "-c", SERVER, str(port))
    line = proc.stdout.readline()
    assert line.strip() == "READY", (line, proc.stderr.read() if proc.poll() is not None else "")


def connect(ns: Netns, host: str, port: int) -> str:
    return ns.run(sys.executable, "-c", CLIENT, host, str(port), timeout=20).stdout.strip()


def lines_about(lines: list[str], *needles: str) -> list[str]:
    return [ln for ln in lines if any(n in ln for n in needles)]


@needs_go
@pytest.mark.parametrize("impl", [PYBRIDGE, GO], ids=["pybridge", "go-bridge"])
def test_portmap_tuning_firewall_chain(impl, cni: CniTool, netns: Callable[..., Netns], uplink: Uplink,
                                          networks: Callable[..., TestNetwork]) -> None:
    chain = [{"type": "portmap", "capabilities": {"portMappings": True}},
             {"type": "tuning", "sysctl": {SYSCTL: "2"}},
             {"type": "firewall", "backend": "iptables"}]
    net = networks(impl=impl, ip_masq=True, is_default_gateway=True, chain=chain)
    ns = netns()
    cid = unique_name("ctr")
    host_port = random.randrange(20000, 40000)
    before = iptables_lines()

    run = cni.add(net.conflist, ns.path, container_id=cid,
                  capability_args={"portMappings": [{"hostPort": host_port, "containerPort": 8080,
                                                     "protocol": "tcp"}]})
    assert [c.plugin for c in run.calls] == [impl[0], "portmap", "tuning", "firewall"]
    ip = str(ipaddress.ip_interface(run.result["ips"][0]["address"]).ip)
    assert run.result["interfaces"][run.result["ips"][0]["interface"]]["name"] == "eth0"

    # each chained plugin did its part
    during = iptables_lines()
    assert lines_about(during, f"{ip}:8080"), "portmap wrote no DNAT for the container"
    assert lines_about([ln for ln in during if ":filter:" in ln], ip), "firewall wrote no rule"
    assert ns.run("sysctl", "-n", SYSCTL).stdout.strip() == "2"
    if impl == PYBRIDGE:
        assert ip in nft_table_text(net.name)  # Go: a CNI-<hash> chain in iptables nat instead

    # a host port reaches the server in the container, from an outside namespace
    start_server(ns, 8080)
    answer = connect(uplink.outside, str(uplink.host_ip), host_port)
    assert answer == f"pbt-hello from {uplink.outside_ip}", answer
    assert ns.ping(uplink.outside_ip), "container -> outside (masqueraded) failed"

    # CHECK: portmap 1.1.1 fails CHECK for IPv4-only containers whenever ip6tables exists
    # ("could not check ipv6 dnat", with the Go bridge too), so the plugins after it are
    # CHECKed one by one with the cached result, as libcni would.
    caps = {"portMappings": [{"hostPort": host_port, "containerPort": 8080, "protocol": "tcp"}]}
    check = cni.check(net.conflist, ns.path, container_id=cid, capability_args=caps, raise_on_error=False)
    assert check.calls[0].plugin == impl[0] and check.calls[0].ok, check.calls[0].stdout
    if not check.ok:
        assert check.calls[-1].plugin == "portmap" and "ipv6 dnat" in check.error.msg, check.error
        nl = load_netconf(net.conflist)
        cached = cni.cached_result(net.conflist, cid)
        for plugin in nl.plugins[2:]:
            conf = CniTool._build_config(nl, plugin, cached, caps)
            cni.exec_plugin(plugin["type"], "CHECK", conf, container_id=cid, netns=ns.path, ifname="eth0")

    dele = cni.delete(net.conflist, ns.path, container_id=cid,
                      capability_args={"portMappings": [{"hostPort": host_port, "containerPort": 8080,
                                                         "protocol": "tcp"}]})
    assert [c.plugin for c in dele.calls] == ["firewall", "tuning", "portmap", impl[0]]
    after = iptables_lines()
    assert lines_about(after, ip, cid, f"dport {host_port}", f"--dport {host_port}") == []
    foreign = [re.compile(p) for p in foreign_patterns()]  # other test sessions running meanwhile
    new = [ln for ln in after if ln not in before and not any(p.search(ln) for p in foreign)]
    # portmap/firewall may leave their shared, empty top-level chains (as with the Go bridge)
    shared = ("CNI-HOSTPORT-", "CNI-FORWARD", "CNI-ADMIN", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ")
    assert [ln for ln in new if not any(s in ln for s in shared)] == [], new
    assert "eth0" not in ns.link_names()
    assert bridge_ports(net.bridge) == [] and net.state_files() == [] and nft_table_text(net.name) == ""


@needs_go
def test_go_bridge_with_pybridge_ipam(cni: CniTool, netns: Callable[..., Netns],
                                      networks: Callable[..., TestNetwork]) -> None:
    """The Go bridge execs `pybridge-ipam` from CNI_PATH for ADD, CHECK and DEL."""
    net = networks(impl=("bridge", "pybridge-ipam"), is_default_gateway=True)
    a, b = netns(), netns()
    ida, idb = unique_name("ctr"), unique_name("ctr")
    ra = cni.add(net.conflist, a.path, container_id=ida, args="IgnoreUnknown=1;K8S_POD_NAME=pa")
    rb = cni.add(net.conflist, b.path, container_id=idb)
    ip_a = ipaddress.ip_interface(ra.result["ips"][0]["address"])
    ip_b = ipaddress.ip_interface(rb.result["ips"][0]["address"])
    assert ip_a.network == net.subnet and ip_b.network == net.subnet and ip_a != ip_b
    assert ra.result["ips"][0]["gateway"] == net.gateway
    assert sorted(p.name for p in net.leases()) == sorted([str(ip_a.ip), str(ip_b.ip)])
    assert a.addresses("eth0") == [str(ip_a)]
    assert a.ping(ip_b.ip) and b.ping(net.gateway)
    cni.check(net.conflist, a.path, container_id=ida)

    cni.delete(net.conflist, b.path, container_id=idb)
    assert [p.name for p in net.leases()] == [str(ip_a.ip)]
    cni.delete(net.conflist, a.path, container_id=ida)
    cni.delete(net.conflist, a.path, container_id=ida)  # twice: still fine
    assert net.state_files() == []
    assert wait_for(lambda: bridge_ports(net.bridge) == [])


@needs_go
def test_go_bridge_pybridge_ipam_check_sees_lost_lease(cni: CniTool, netns: Callable[..., Netns],
                                                       networks: Callable[..., TestNetwork]) -> None:
    net = networks(impl=("bridge", "pybridge-ipam"), cni_version="1.0.0")
    ns = netns()
    cid = unique_name("ctr")
    cni.add(net.conflist, ns.path, container_id=cid)
    ipam_only = dict(net.main, name=net.name, cniVersion="1.0.0")
    cni.exec_plugin("pybridge-ipam", "DEL", ipam_only, container_id=cid, netns=ns.path, ifname="eth0")
    run = cni.check(net.conflist, ns.path, container_id=cid, raise_on_error=False)
    assert not run.ok and run.error is not None and run.error.code is not None
    cni.delete(net.conflist, ns.path, container_id=cid)
    assert net.state_files() == []





@pytest.mark.skipif(not (GO_DIR / "bandwidth").exists(), reason="apt-get install containernetworking-plugins")
def test_go_bandwidth_after_pybridge(cni: CniTool, netns: Callable[..., Netns],
                                     networks: Callable[..., TestNetwork]) -> None:
    """The Go `bandwidth` finds pybridge's host veth in prevResult and shapes it (tbf on the veth,
    its own `bwp` ifb); CHECK passes; DEL in reverse order leaves neither ifb nor veth."""
    chain = [{"type": "bandwidth", "ingressRate": 8_000_000, "ingressBurst": 256_000,
              "egressRate": 16_000_000, "egressBurst": 256_000}]
    net = networks(chain=chain)
    ns, cid = netns(), unique_name("ctr")
    before = set(ifb_devices())
    run = cni.add(net.conflist, ns.path, container_id=cid)
    assert [c.plugin for c in run.calls] == ["pybridge", "bandwidth"]
    host_veth = Attachment(cid, "eth0", None).host_ifname
    assert tbf_rate(host_veth) == 8_000_000
    go_ifbs = [name for name in set(ifb_devices()) - before if name.startswith("bwp")]
    assert len(go_ifbs) == 1 and tbf_rate(go_ifbs[0]) == 16_000_000, go_ifbs
    assert f"Redirect to device {go_ifbs[0]}" in ingress_redirect(host_veth)
    cni.check(net.conflist, ns.path, container_id=cid)
    dele = cni.delete(net.conflist, ns.path, container_id=cid)
    assert [c.plugin for c in dele.calls] == ["bandwidth", "pybridge"]
    assert go_ifbs[0] not in ifb_devices() and qdiscs(host_veth) == []
    assert bridge_ports(net.bridge) == [] and net.state_files() == []
