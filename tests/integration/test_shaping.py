"""Bandwidth shaping (issue 19): the `bandwidth` capability and the network's `bandwidth` key.

What a user checks: a TCP transfer between the shaped container and a peer container on the same
network runs at the configured rate in each direction (±20 %), `tc` shows the qdiscs on the host
veth and the ifb, CHECK notices a removed qdisc, and after DEL (also without the netns) neither
the ifb nor anything else is left; `cni-bridge gc` removes an ifb whose attachment is gone; bad
values are error 7 and leave nothing behind; link modes refuse limits; the Docker driver shapes
every endpoint of a network created with `-o ingressRate=...`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.attachment import Attachment
from cni_bridge.docker.network import ENDPOINT_IFNAME
from tests.support.cli import cli, cli_sources
from tests.support.cnitool import CniTool
from tests.support.host import run
from tests.support.netns import Netns
from tests.support.runtime_checks import TestNetwork, bridge_ports, network_factory
from tests.support.session import unique_name
from tests.support.shaping import ifb_devices, ingress_redirect, qdiscs, tbf_rate, tcp_rate
from tests.support.subnets import unique_subnet
from tests.support.topology import Uplink

pytestmark = pytest.mark.timeout(240)

MBIT = 1_000_000
BURST = 256_000  # bits: 32 KB, a few full-size frames; short against a 4 s transfer
TOLERANCE = 0.20


@pytest.fixture
def networks(tmp_path: Path) -> Iterator[Callable[..., TestNetwork]]:
    yield from network_factory(tmp_path)


def limits(ingress: int = 0, egress: int = 0) -> dict[str, int]:
    out = {}
    if ingress:
        out.update(ingressRate=ingress, ingressBurst=BURST)
    if egress:
        out.update(egressRate=egress, egressBurst=BURST)
    return out


def address(result: dict[str, Any]) -> str:
    return str(ipaddress.ip_interface(result["ips"][0]["address"]).ip)


def assert_within(measured: float, configured: int, what: str) -> None:
    low, high = configured * (1 - TOLERANCE), configured * (1 + TOLERANCE)
    assert low <= measured <= high, f"{what}: {measured / MBIT:.2f} Mbit/s, configured {configured / MBIT:.2f}"


def assert_unshaped_gone(att: Attachment) -> None:
    assert att.ifb_ifname not in ifb_devices()
    assert qdiscs(att.host_ifname) == []  # the host veth is gone, with its qdiscs


def test_runtime_bandwidth_shapes_both_directions(cni: CniTool, netns: Callable[..., Netns],
                                                  networks: Callable[..., TestNetwork]) -> None:
    """runtimeConfig.bandwidth (the capability), measured with iperf3 against a peer container
    on the same bridge: ingress 8 Mbit/s, egress 16 Mbit/s (different, so a swap would show)."""
    net = networks(extra={"capabilities": {"bandwidth": True}})
    shaped_ns, peer_ns = netns(), netns()
    cid, peer_cid = unique_name("ctr"), unique_name("peer")
    bandwidth = {"bandwidth": limits(ingress=8 * MBIT, egress=16 * MBIT)}
    cni.add(net.conflist, shaped_ns.path, container_id=cid, capability_args=bandwidth)
    peer = cni.add(net.conflist, peer_ns.path, container_id=peer_cid).result
    att = Attachment(cid, "eth0", None)

    assert tbf_rate(att.host_ifname) == 8 * MBIT
    assert tbf_rate(att.ifb_ifname) == 16 * MBIT
    assert f"Redirect to device {att.ifb_ifname}" in ingress_redirect(att.host_ifname)
    peer_att = Attachment(peer_cid, "eth0", None)
    assert peer_att.ifb_ifname not in ifb_devices()  # the peer asked for nothing
    cni.check(net.conflist, shaped_ns.path, container_id=cid, capability_args=bandwidth)

    egress = tcp_rate(shaped_ns, peer_ns, address(peer))                  # the container sends
    ingress = tcp_rate(shaped_ns, peer_ns, address(peer), reverse=True)   # the container receives
    print(f"measured: egress {egress / MBIT:.2f} Mbit/s (16 configured), "
          f"ingress {ingress / MBIT:.2f} Mbit/s (8 configured)")
    assert_within(egress, 16 * MBIT, "egress (container -> peer)")
    assert_within(ingress, 8 * MBIT, "ingress (peer -> container)")

    cni.delete(net.conflist, shaped_ns.path, container_id=cid, capability_args=bandwidth)
    assert_unshaped_gone(att)
    assert "eth0" not in shaped_ns.link_names()
    cni.delete(net.conflist, peer_ns.path, container_id=peer_cid)


def test_check_notices_a_removed_qdisc(cni: CniTool, netns: Callable[..., Netns],
                                       networks: Callable[..., TestNetwork]) -> None:
    net = networks(extra={"bandwidth": limits(ingress=10 * MBIT, egress=10 * MBIT)})
    ns, cid = netns(), unique_name("ctr")
    cni.add(net.conflist, ns.path, container_id=cid)
    att = Attachment(cid, "eth0", None)
    cni.check(net.conflist, ns.path, container_id=cid)
    run(["tc", "qdisc", "del", "dev", att.ifb_ifname, "root"])
    check = cni.check(net.conflist, ns.path, container_id=cid, raise_on_error=False)
    assert not check.ok and "egress shaping" in check.error.msg, check.error
    run(["tc", "qdisc", "del", "dev", att.host_ifname, "ingress"])
    check = cni.check(net.conflist, ns.path, container_id=cid, raise_on_error=False)
    assert not check.ok and f"does not redirect to {att.ifb_ifname}" in check.error.msg, check.error
    cni.delete(net.conflist, ns.path, container_id=cid)
    assert_unshaped_gone(att)


def test_network_bandwidth_shapes_every_attachment_and_runtime_config_overrides_it(
        cni: CniTool, netns: Callable[..., Netns], networks: Callable[..., TestNetwork]) -> None:
    net = networks(extra={"bandwidth": limits(ingress=10 * MBIT, egress=12 * MBIT),
                          "capabilities": {"bandwidth": True}})
    plain_ns, own_ns = netns(), netns()
    plain, own = unique_name("ctr"), unique_name("ctr")
    cni.add(net.conflist, plain_ns.path, container_id=plain)
    cni.add(net.conflist, own_ns.path, container_id=own,
            capability_args={"bandwidth": limits(ingress=20 * MBIT)})
    plain_att, own_att = Attachment(plain, "eth0", None), Attachment(own, "eth0", None)
    assert tbf_rate(plain_att.host_ifname) == 10 * MBIT and tbf_rate(plain_att.ifb_ifname) == 12 * MBIT
    # the runtime's object replaces the network's as a whole: no egress limit for this one
    assert tbf_rate(own_att.host_ifname) == 20 * MBIT and own_att.ifb_ifname not in ifb_devices()
    for ns, cid, att in ((plain_ns, plain, plain_att), (own_ns, own, own_att)):
        cni.delete(net.conflist, ns.path, container_id=cid)
        assert_unshaped_gone(att)


def test_del_without_netns_removes_the_ifb(cni: CniTool, netns: Callable[..., Netns],
                                           networks: Callable[..., TestNetwork]) -> None:
    net = networks(extra={"bandwidth": limits(egress=10 * MBIT)})
    ns, cid = netns(), unique_name("ctr")
    cni.add(net.conflist, ns.path, container_id=cid)
    att = Attachment(cid, "eth0", None)
    assert att.ifb_ifname in ifb_devices()
    assert run(["ip", "-6", "addr", "show", "dev", att.ifb_ifname]).stdout == ""  # no fe80:: of its own
    path = ns.path
    ns.delete()
    cni.delete(net.conflist, path, container_id=cid)
    assert_unshaped_gone(att)
    assert bridge_ports(net.bridge) == [] and net.state_files() == []
    cni.delete(net.conflist, path, container_id=cid)  # idempotent


def test_del_without_runtime_config_removes_the_ifb_when_the_capability_is_declared(
        cni: CniTool, netns: Callable[..., Netns], networks: Callable[..., TestNetwork]) -> None:
    """A runtime that lost the runtimeConfig it passed at ADD: the declared capability is enough."""
    net = networks(extra={"capabilities": {"bandwidth": True}})
    ns, cid = netns(), unique_name("ctr")
    cni.add(net.conflist, ns.path, container_id=cid, capability_args={"bandwidth": limits(egress=10 * MBIT)})
    att = Attachment(cid, "eth0", None)
    assert tbf_rate(att.ifb_ifname) == 10 * MBIT
    cni.delete(net.conflist, ns.path, container_id=cid)
    assert_unshaped_gone(att)


@pytest.mark.parametrize(("bandwidth", "message"), [
    ({"ingressRate": 10 * MBIT}, "ingressRate needs ingressBurst"),
    ({"egressBurst": BURST}, "egressBurst needs egressRate"),
    ({"ingressRate": -1, "ingressBurst": BURST}, "must not be negative"),
    ({"egressRate": 1.5e6, "egressBurst": BURST}, "must be a whole number of bits per second"),
    ({"egressRate": "fast", "egressBurst": BURST}, "must be a whole number"),
    ({"ingressRate": 10 * MBIT, "ingressBurst": 456}, "smaller than one full-size frame"),
    ({"ingressRate": 2**40, "ingressBurst": BURST}, "is above"),
    ({"ingressRate": 10 * MBIT, "ingressBurst": BURST, "shapedSubnets": ["10.0.0.0/8"]}, "unsupported key"),
    ([1], "must be a JSON object"),
], ids=["rate-without-burst", "burst-without-rate", "negative", "float", "string", "tiny-burst", "huge-rate",
        "unknown-key", "not-an-object"])
def test_bad_bandwidth_is_error_7_and_changes_nothing(bandwidth: Any, message: str, cni: CniTool,
                                                      netns: Callable[..., Netns],
                                                      networks: Callable[..., TestNetwork]) -> None:
    net = networks(extra={"capabilities": {"bandwidth": True}})
    ns, cid = netns(), unique_name("ctr")
    for conflist, args in ((net.conflist, {"bandwidth": bandwidth}),
                           ({**net.conflist, "plugins": [{**net.main, "bandwidth": bandwidth}]}, None)):
        add = cni.add(conflist, ns.path, container_id=cid, capability_args=args, raise_on_error=False)
        assert add.error is not None and add.error.code == 7 and message in add.error.msg, add.error
        assert "eth0" not in ns.link_names() and net.state_files() == []
        assert Attachment(cid, "eth0", None).ifb_ifname not in ifb_devices()
        if args is not None:  # the runtime's DEL after the failed ADD succeeds (bad runtimeConfig: lenient)
            cni.delete(conflist, ns.path, container_id=cid, capability_args=args)


def test_link_modes_refuse_bandwidth(cni: CniTool, netns: Callable[..., Netns], uplink: Uplink,
                                     tmp_path: Path) -> None:
    conf = {"cniVersion": "1.0.0", "name": unique_name("net"), "plugins": [
        {"type": "pybridge", "mode": "macvlan", "master": uplink.host_if, "capabilities": {"bandwidth": True},
         "ipam": {"type": "pybridge-ipam", "dataDir": str(cni.data_dir),
                  "ranges": [[{"subnet": str(uplink.subnet), "rangeStart": str(uplink.subnet.network_address + 10)}]]}}]}
    ns, cid = netns(), unique_name("ctr")
    add = cni.add(conf, ns.path, container_id=cid, capability_args={"bandwidth": limits(ingress=10 * MBIT)},
                  raise_on_error=False)
    assert add.error is not None and add.error.code == 7 and "need mode bridge" in add.error.msg, add.error
    assert "eth0" not in ns.link_names()
    cni.delete(conf, ns.path, container_id=cid, capability_args={"bandwidth": limits(ingress=10 * MBIT)})
    # without limits the capability is harmless
    cni.add(conf, ns.path, container_id=cid)
    cni.delete(conf, ns.path, container_id=cid)


def test_gc_removes_an_ifb_whose_attachment_is_gone(cni: CniTool, netns: Callable[..., Netns],
                                                    networks: Callable[..., TestNetwork],
                                                    tmp_path: Path) -> None:
    """A DEL that did not know of the shaping (the config lost its `bandwidth` key) leaves the
    ifb; `cni-bridge gc` finds it (its host veth is gone) and removes it; a live one stays."""
    net = networks(extra={"bandwidth": limits(egress=10 * MBIT)})
    (tmp_path / "net.d").mkdir()
    live_ns, gone_ns = netns(), netns()
    live, gone = unique_name("ctr"), unique_name("ctr")
    cni.add(net.conflist, live_ns.path, container_id=live)
    cni.add(net.conflist, gone_ns.path, container_id=gone)
    live_att, gone_att = Attachment(live, "eth0", None), Attachment(gone, "eth0", None)
    forgetful = {**net.conflist, "plugins": [{k: v for k, v in net.main.items() if k != "bandwidth"}]}
    cni.delete(forgetful, gone_ns.path, container_id=gone)
    assert gone_att.ifb_ifname in ifb_devices()

    dry = cli("gc", *cli_sources(cni, tmp_path))
    assert dry.returncode == 1 and f"would remove: ifb device {gone_att.ifb_ifname}" in dry.stdout, dry.stdout
    applied = cli("gc", "--apply", *cli_sources(cni, tmp_path))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert f"removed: ifb device {gone_att.ifb_ifname}" in applied.stdout, applied.stdout
    assert gone_att.ifb_ifname not in ifb_devices() and live_att.ifb_ifname in ifb_devices()
    assert live_att.ifb_ifname not in applied.stdout
    cni.delete(net.conflist, live_ns.path, container_id=live)
    assert_unshaped_gone(live_att)


def test_docker_options_shape_every_endpoint(plugin: Any) -> None:
    """`docker network create -o ingressRate=... -o egressRate=...`: CreateEndpoint shapes the
    host veth (Docker moves the other end into the container itself), DeleteEndpoint removes the
    ifb; a burst without its rate is refused at CreateNetwork."""
    subnet = unique_subnet(4)
    bridge, nid, eid = unique_name("br"), unique_name("nid") + "4" * 20, unique_name("eid") + "5" * 20
    generic = {"bridge": bridge, "ingressRate": str(10 * MBIT), "ingressBurst": str(BURST),
               "egressRate": str(12 * MBIT), "egressBurst": str(BURST)}
    body = {"NetworkID": nid, "Options": {"com.docker.network.generic": generic,
                                          "com.docker.network.enable_ipv6": False},
            "IPv4Data": [{"AddressSpace": "pybridge-local", "Pool": str(subnet),
                          "Gateway": f"{subnet.network_address + 1}/24", "AuxAddresses": {}}], "IPv6Data": []}
    bad = {**body, "NetworkID": unique_name("nid") + "6" * 20,
           "Options": {**body["Options"], "com.docker.network.generic": {"bridge": bridge, "egressBurst": "1"}}}
    assert "egressBurst needs egressRate" in plugin.err("NetworkDriver.CreateNetwork", bad)
    att = Attachment(eid, ENDPOINT_IFNAME, None)
    try:
        plugin.ok("NetworkDriver.CreateNetwork", body)
        plugin.ok("NetworkDriver.CreateEndpoint", {"NetworkID": nid, "EndpointID": eid,
                                                   "Interface": {"Address": f"{subnet.network_address + 2}/24"}})
        host_if = plugin.ok("NetworkDriver.EndpointOperInfo", {"NetworkID": nid, "EndpointID": eid})["Value"]["hostIfname"]
        ifb = att.ifb_ifname
        assert tbf_rate(host_if) == 10 * MBIT and tbf_rate(ifb) == 12 * MBIT
        assert f"Redirect to device {ifb}" in ingress_redirect(host_if)
        plugin.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})
        assert ifb not in ifb_devices() and qdiscs(host_if) == []
    finally:
        plugin.call("NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})
        plugin.call("NetworkDriver.DeleteNetwork", {"NetworkID": nid})
        run(["ip", "link", "del", bridge], check=False)
        run(["ip", "link", "del", att.ifb_ifname], check=False)
