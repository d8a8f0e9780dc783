"""Kubernetes-style input, as CRI runtimes (containerd's CRI, CRI-O) send it through libcni.

CNI_ARGS carries `IgnoreUnknown=1;K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_INFRA_CONTAINER_ID=..`;
`runtimeConfig` carries the capabilities the conflist declares: `portMappings`, `ips` (static
addresses: must be honoured), `mac` (must be honoured), `bandwidth` (accepted; shaping is the
bandwidth plugin's job). Both pybridge and the Go bridge + host-local are held to the same checks.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cnitool import CniTool
from tests.support.netns import Netns
from tests.support.runtime_checks import GO, PYBRIDGE, TestNetwork, bridge_ports, iptables_lines, network_factory
from tests.support.session import unique_name

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not Path("/usr/lib/cni/portmap").exists(),
                                 reason="apt-get install containernetworking-plugins")]

IMPLS = {"pybridge": PYBRIDGE, "go": GO}
CAPS = {"ips": True, "mac": True, "portMappings": True, "bandwidth": True}
MAC = "0a:58:0a:f4:00:32"


@pytest.fixture(params=list(IMPLS))
def impl(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def networks(tmp_path: Path) -> Iterator[Callable[..., TestNetwork]]:
    yield from network_factory(tmp_path)


def k8s_args(cid: str, pod: str = "web-0") -> str:
    return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE=pbt-ns;K8S_POD_NAME={pod};"
            f"K8S_POD_INFRA_CONTAINER_ID={cid};K8S_POD_UID=0b5e9d2c-1111-4c3b-9f3a-2f1e6d7c8b9a")


def k8s_net(networks: Callable[..., TestNetwork], impl: str) -> TestNetwork:
    return networks(impl=IMPLS[impl], is_default_gateway=True, extra={"capabilities": dict(CAPS)},
                    chain=[{"type": "portmap", "capabilities": {"portMappings": True}}])


def runtime_config(net: TestNetwork, host_port: int, offset: int = 50) -> dict[str, Any]:
    static = ipaddress.ip_network(net.subnet).network_address + offset
    return {
        "portMappings": [{"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}],
        "ips": [f"{static}/{net.subnet.prefixlen}"],
        "mac": MAC,
        "bandwidth": {"ingressRate": 1000000, "ingressBurst": 100000,
                      "egressRate": 1000000, "egressBurst": 100000},
    }


def test_k8s_cni_args_and_runtime_config(impl: str, cni: CniTool, netns: Callable[..., Netns],
                                         networks: Callable[..., TestNetwork]) -> None:
    net = k8s_net(networks, impl)
    ns = netns()
    cid = unique_name("pod")
    host_port = random.randrange(20000, 40000)
    rc = runtime_config(net, host_port)
    static = rc["ips"][0]
    run = cni.add(net.conflist, ns.path, container_id=cid, args=k8s_args(cid), capability_args=rc)
    first = run.calls[0]
    assert set(first.stdin["runtimeConfig"]) == set(CAPS)  # every capability reached the plugin
    res = run.result
    assert res["ips"][0]["address"] == static, "the static IP (runtimeConfig.ips) was not honoured"
    eth0 = res["interfaces"][res["ips"][0]["interface"]]
    assert eth0["name"] == "eth0" and eth0["mac"] == MAC
    assert ns.ip_json("link", "show", "eth0")[0]["address"] == MAC, "runtimeConfig.mac not honoured"
    assert ns.addresses("eth0") == [static]
    assert [p.name for p in net.leases()] == [static.split("/")[0]]
    ip = static.split("/")[0]
    assert any(f"{ip}:80" in ln for ln in iptables_lines("nat")), "portmap got no portMappings"

    cni.check(net.conflist, ns.path, container_id=cid, args=k8s_args(cid), capability_args=rc,
              raise_on_error=False)  # portmap 1.1.1's CHECK is broken for IPv4-only pods
    cni.delete(net.conflist, ns.path, container_id=cid, args=k8s_args(cid), capability_args=rc)
    assert net.leases() == [] and bridge_ports(net.bridge) == []
    assert not any(ip in ln or cid in ln for ln in iptables_lines())


def test_static_ip_taken_is_refused(impl: str, cni: CniTool, netns: Callable[..., Netns],
                                    networks: Callable[..., TestNetwork]) -> None:
    net = k8s_net(networks, impl)
    a, b = netns(), netns()
    ida, idb = unique_name("pod"), unique_name("pod")
    rc = runtime_config(net, random.randrange(20000, 40000))
    rc.pop("mac")
    rc.pop("portMappings")
    cni.add(net.conflist, a.path, container_id=ida, args=k8s_args(ida, "a"), capability_args=rc)
    run = cni.add(net.conflist, b.path, container_id=idb, args=k8s_args(idb, "b"), capability_args=rc,
                  raise_on_error=False)
    assert not run.ok and run.error.error is not None, "a taken static address must be refused"
    assert len(net.leases()) == 1
    if impl == "pybridge":
        assert "eth0" not in b.link_names()
    cni.delete(net.conflist, b.path, container_id=idb, raise_on_error=False)
    cni.delete(net.conflist, a.path, container_id=ida, args=k8s_args(ida, "a"), capability_args=rc)
    assert net.leases() == []


def test_legacy_cni_args_ip_and_mac(impl: str, cni: CniTool, netns: Callable[..., Netns],
                                    networks: Callable[..., TestNetwork]) -> None:
    """`CNI_ARGS=IP=..;MAC=..` (host-local's and the bridge's older static-address interface)."""
    net = networks(impl=IMPLS[impl], is_default_gateway=True)
    ns = netns()
    cid = unique_name("pod")
    ip = str(ipaddress.ip_network(net.subnet).network_address + 77)
    res = cni.add(net.conflist, ns.path, container_id=cid,
                  args=f"IgnoreUnknown=1;IP={ip};MAC={MAC};K8S_POD_NAME=legacy").result
    assert res["ips"][0]["address"].split("/")[0] == ip
    assert ns.ip_json("link", "show", "eth0")[0]["address"] == MAC
    cni.delete(net.conflist, ns.path, container_id=cid)
    assert net.leases() == []


def test_unknown_args_need_ignore_unknown(impl: str, cni: CniTool, netns: Callable[..., Netns],
                                          networks: Callable[..., TestNetwork]) -> None:
    """Without IgnoreUnknown an unknown key is refused (both); with it, accepted."""
    net = networks(impl=IMPLS[impl])
    ns = netns()
    cid = unique_name("pod")
    run = cni.add(net.conflist, ns.path, container_id=cid, args="K8S_POD_NAME=x;FOO_BAR=1",
                  raise_on_error=False)
    if impl == "pybridge":
        assert not run.ok and run.error.code == 4  # pybridge: invalid environment (spec code 4)
    else:
        # Go bridge 1.1.1 does not know K8S_* without IgnoreUnknown either: 999
        assert not run.ok and run.error.code == 999
    assert net.leases() == []
    cni.delete(net.conflist, ns.path, container_id=cid, raise_on_error=False)
    cni.add(net.conflist, ns.path, container_id=cid, args="IgnoreUnknown=1;K8S_POD_NAME=x;FOO_BAR=1")
    cni.delete(net.conflist, ns.path, container_id=cid)
    assert net.leases() == []
