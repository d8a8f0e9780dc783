"""vxlan networks that span hosts (issue 18), on three simulated hosts.

Each host is a network namespace with its own pybridge run dir; the plugin is exec'd inside it
(`ip netns exec`), so its bridge, vxlan device, nft tables and locks are that host's. The hosts'
underlay NICs are joined by a switch: a bridge in a fourth namespace (tests/support/topology.py).
The hosts share one IPAM dataDir (the file store on one file system), which stands in for the
shared lease store that gives a spanning network unique addresses.

Without `group`, peers are programmed: the test plays the distributor, reading each host's
registry (`cni-bridge vxlan local`) and feeding every host the union (`cni-bridge vxlan
reconcile`). With `group`, the kernel floods to the multicast group and learns.
"""

from __future__ import annotations

import ipaddress
import json
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import hostsnap
from tests.support.cnitool import CniCallError, CniTool, bridge_conflist
from tests.support.dockerd import plugin_call
from tests.support.netns import Netns
from tests.support.overlay import attach, detach, docker_endpoint, docker_vxlan_network, fdb
from tests.support.session import register_data_dir, unique_name
from tests.support.subnets import unique_subnet
from tests.support.topology import SimHost, Underlay, create_underlay

PORT = 4790  # not the default: proves the configured port is the one on the wire


@pytest.fixture
def underlay(tmp_path: Path) -> Iterator[Underlay]:
    data_dir = tmp_path / "cni-data"
    data_dir.mkdir()
    register_data_dir(data_dir)
    u = create_underlay(3, tmp_path, data_dir=data_dir)
    yield u
    u.delete()


def network(u: Underlay, name: str, vni: int, subnets: list[str], *, first: int = 2, underlay6: bool = False,
            **vxlan: Any) -> Callable[[SimHost], dict]:
    """The conflist of one vxlan network as host `h` has it (its own `local`); addresses from
    the `first` one of each subnet on."""
    bridge = unique_name("brvx")

    def on(h: SimHost) -> dict:
        conf = bridge_conflist(name, bridge=bridge, subnets=subnets, data_dir=h.cni.data_dir, plugin_type="pybridge",
                               ipam_type="pybridge-ipam", ip_masq=True, cni_version="1.1.0",
                               extra={"isolate": True,
                                      "vxlan": {"vni": vni, "local": str(h.addr6 if underlay6 else h.addr4), "port": PORT, "dev": h.nic,
                                                **vxlan}})
        for ranges in conf["plugins"][0]["ipam"]["ranges"]:
            ranges[0]["rangeStart"] = str(ipaddress.ip_network(ranges[0]["subnet"]).network_address + first)
        return conf
    return on


def distribute(u: Underlay, vni: int, hosts: list[SimHost] | None = None) -> list[dict]:
    """What etcd will do: every host's published endpoints, fed to every host's reconcile."""
    hosts = hosts or u.hosts
    endpoints = []
    for h in hosts:
        for vtep in json.loads(h.cli("vxlan", "local", str(vni)).stdout):
            endpoints += vtep["endpoints"]
    for h in hosts:
        if h.ns.run("ip", "link", "show", f"vx-{vni}", check=False).returncode == 0:
            h.cli("vxlan", "reconcile", str(vni), "-", input=json.dumps(endpoints))
    return endpoints


def link_mtu(ns: Netns, ifname: str) -> int:
    return ns.ip_json("link", "show", "dev", ifname)[0]["mtu"]


def capture(ns: Netns, iface: str, n: int, *expr: str) -> subprocess.Popen:
    """tcpdump of at most `n` packets, returned once the capture is open (it says "listening on")."""
    dump = ns.popen("tcpdump", "-i", iface, "-n", "-l", "-c", str(n), *expr)
    for _ in range(50):
        line = dump.stderr.readline()
        if "listening on" in line:
            return dump
        if not line:
            break
    raise AssertionError(f"tcpdump did not start on {iface}")


def captured(dump: subprocess.Popen) -> str:
    try:
        return dump.communicate(timeout=10)[0]
    except subprocess.TimeoutExpired:
        dump.terminate()
        return dump.communicate()[0]


def count_vxlan_packets(switch: Netns, port: str, udp_port: int, n: int, traffic: Callable[[], Any]) -> int:
    """Packets to UDP `udp_port` seen on the switch port `port` while `traffic()` runs (at most n)."""
    dump = capture(switch, port, n, "udp", "dst", "port", str(udp_port))
    traffic()
    return len([line for line in captured(dump).splitlines() if f".{udp_port}:" in line])


def gone_everywhere(u: Underlay, vni: int) -> None:
    for h in u.hosts:
        assert h.ns.run("ip", "link", "show", f"vx-{vni}", check=False).returncode != 0
        assert json.loads(h.cli("vxlan", "local").stdout) == []
        assert "pybridge_" not in h.ns.run("nft", "list", "tables").stdout


def test_programmed_peers_ipv4_and_ipv6(underlay: Underlay, netns: Callable[..., Netns]) -> None:
    u = underlay
    vni = 4242
    conf = network(u, unique_name("net"), vni, [str(unique_subnet(4, 24)), str(unique_subnet(6))])
    a, b, c = (attach(conf, h, netns) for h in u.hosts)
    # The container MTU leaves room for the encapsulation (ul0: 1500, IPv4 underlay: 50 bytes).
    assert link_mtu(a.ns, "eth0") == 1450
    details = json.loads(u.hosts[0].ns.run("ip", "-d", "-j", "link", "show", f"vx-{vni}").stdout)[0]
    vx = details["linkinfo"]["info_data"]
    assert vx["id"] == vni and vx["port"] == PORT and vx["learning"] is False and vx["proxy"] is True
    assert details["master"] == conf(u.hosts[0])["plugins"][0]["bridge"]
    # Before any peer is programmed, nothing crosses hosts: no flooding to unknown hosts.
    assert not a.ns.ping(b.ip4, timeout=1)
    endpoints = distribute(u, vni)
    assert sorted(e["mac"] for e in endpoints) == sorted(x.mac for x in (a, b, c))
    for x, y in ((a, b), (a, c), (b, c), (c, a)):
        assert x.ns.ping(y.ip4), f"{x.host.addr4} -> {y.host.addr4} IPv4"
        assert x.ns.ping(y.ip6), f"{x.host.addr4} -> {y.host.addr4} IPv6"
    # h0's FDB: a flood entry per peer VTEP with a member, one entry per remote MAC.
    h0, h1, h2 = u.hosts
    assert fdb(h0, vni) == sorted([("00:00:00:00:00:00", str(h1.addr4)), ("00:00:00:00:00:00", str(h2.addr4)),
                                   (b.mac, str(h1.addr4)), (c.mac, str(h2.addr4))])
    shown = json.loads(h0.cli("vxlan", "show", str(vni)).stdout)
    assert shown["peers"] == [str(h1.addr4), str(h2.addr4)]
    assert {e["mac"]: sorted(e["ips"]) for e in shown["endpoints"]} == {b.mac: sorted([b.ip4, b.ip6]),
                                                                         c.mac: sorted([c.ip4, c.ip6])}
    # `cni-bridge status` on h0 shows the device, its VNI, peers and remote endpoints.
    conf_dir = h0.run_dir / "net.d"
    conf_dir.mkdir()
    (conf_dir / "10-vx.conflist").write_text(json.dumps(conf(h0)))
    status = h0.cli("status", "--conf-dir", str(conf_dir), "--data-dir", str(h0.cni.data_dir),
                    "--cni-cache-dir", str(h0.cni.cache_dir), check=False).stdout
    assert f"vxlan vx-{vni} VNI {vni} local {h0.addr4} port {PORT} [up] peers {h1.addr4}, {h2.addr4}" in status
    assert f"remote {b.mac} " in status and f"via {h1.addr4}" in status
    # Underlay packets are vxlan on the configured port.
    assert count_vxlan_packets(u.switch, u.ports[1], PORT, 3,
                               lambda: a.ns.ping(b.ip4, count=3, min_replies=3)) >= 3
    # A host that lost entries or kept stale ones (missed events) converges at the next reconcile.
    h0.ns.run("bridge", "fdb", "del", b.mac, "dev", f"vx-{vni}", "dst", str(h1.addr4), "self")
    h0.ns.run("bridge", "fdb", "append", "02:00:00:00:dd:01", "dev", f"vx-{vni}", "dst", str(h2.addr4), "self")
    h0.ns.ip("neigh", "del", b.ip4, "dev", f"vx-{vni}")
    assert h0.cli("vxlan", "reconcile", str(vni), "-", input=json.dumps(endpoints)).stdout.strip() == \
        "fdb +1 -1, neighbours +1 -0"
    assert a.ns.ping(b.ip4) and (b.mac, str(h1.addr4)) in fdb(h0, vni)
    # A second reconcile with the same input changes nothing.
    assert h0.cli("vxlan", "reconcile", str(vni), "-", input=json.dumps(endpoints)).stdout.strip() == \
        "fdb +0 -0, neighbours +0 -0"
    # c leaves: after reconcile it is gone from the others' FDB, and so is h2 (no member left).
    detach(conf, c)
    assert h2.ns.run("ip", "link", "show", f"vx-{vni}", check=False).returncode != 0  # its last user
    distribute(u, vni)
    assert fdb(h0, vni) == sorted([("00:00:00:00:00:00", str(h1.addr4)), (b.mac, str(h1.addr4))])
    assert fdb(h1, vni) == sorted([("00:00:00:00:00:00", str(h0.addr4)), (a.mac, str(h0.addr4))])
    assert not any(c.ip4 in line for line in h0.ns.run("ip", "neigh", "show", "dev", f"vx-{vni}").stdout.splitlines())
    assert a.ns.ping(b.ip4) and not a.ns.ping(c.ip4, timeout=1)
    detach(conf, a)
    detach(conf, b)
    gone_everywhere(u, vni)


def test_cross_host_traffic_is_not_masqueraded(underlay: Underlay, netns: Callable[..., Netns]) -> None:
    """ipMasq on: traffic leaving the overlay would be masqueraded, but a peer on another host
    sees the container's own address (the network's subnets are excluded from the rule)."""
    u = underlay
    vni = 77
    conf = network(u, unique_name("net"), vni, [str(unique_subnet(4, 24)), str(unique_subnet(6))])
    a, b = attach(conf, u.hosts[0], netns), attach(conf, u.hosts[1], netns)
    distribute(u, vni, u.hosts[:2])
    tables = u.hosts[0].ns.run("nft", "list", "ruleset").stdout
    assert "masquerade" in tables  # the network does masquerade what leaves it
    dump = capture(b.ns, "eth0", 1, "icmp", "and", "src", "host", a.ip4)
    assert a.ns.ping(b.ip4, count=2)
    assert f"{a.ip4} > {b.ip4}" in captured(dump)
    detach(conf, a)
    detach(conf, b)
    gone_everywhere(u, vni)


def test_multicast_learning(underlay: Underlay, netns: Callable[..., Netns]) -> None:
    u = underlay
    vni = 5001
    group = f"239.{unique_subnet(4, 24).network_address.packed[1]}.1.1"
    conf = network(u, unique_name("net"), vni, [str(unique_subnet(4, 24)), str(unique_subnet(6))], group=group)
    a, b, c = (attach(conf, h, netns) for h in u.hosts)
    vx = json.loads(u.hosts[0].ns.run("ip", "-d", "-j", "link", "show", f"vx-{vni}").stdout)[0]["linkinfo"]["info_data"]
    assert vx["group"] == group and vx["learning"] is True
    for x, y in ((a, b), (b, c), (c, a)):
        assert x.ns.ping(y.ip4) and x.ns.ping(y.ip6)
    # The kernel learned b's MAC behind h1's VTEP; no peer was programmed.
    assert (b.mac, str(u.hosts[1].addr4)) in fdb(u.hosts[0], vni)
    assert count_vxlan_packets(u.switch, u.ports[2], PORT, 2,
                               lambda: c.ns.ping(a.ip4, count=2, min_replies=2)) >= 2
    refused = u.hosts[0].cli("vxlan", "reconcile", str(vni), "-", input="[]", check=False)
    assert refused.returncode == 1 and "multicast group" in refused.stderr
    for x in (a, b, c):
        detach(conf, x)
    gone_everywhere(u, vni)


def test_two_vnis_do_not_see_each_other(underlay: Underlay, netns: Callable[..., Netns]) -> None:
    """Same subnet, same multicast group, same port, two VNIs: layer 2 is separate, and the
    isolation firewall keeps the host from routing between the two bridges."""
    u = underlay
    subnets = [str(unique_subnet(4, 24)), str(unique_subnet(6))]
    group = "239.7.7.7"
    red = network(u, unique_name("red"), 100, subnets, group=group)
    blue = network(u, unique_name("blu"), 200, subnets, first=100, group=group)
    r0, r1 = attach(red, u.hosts[0], netns), attach(red, u.hosts[1], netns)
    b1 = attach(blue, u.hosts[1], netns)
    b0 = attach(blue, u.hosts[0], netns)
    assert r0.ns.ping(r1.ip4) and b0.ns.ping(b1.ip4) and b1.ns.ping(b0.ip6)
    assert not r0.ns.ping(b1.ip4, timeout=1) and not r0.ns.ping(b0.ip4, timeout=1)
    assert not b0.ns.ping(r1.ip6, timeout=1)
    h0 = u.hosts[0].ns.run("ip", "-j", "link", "show", "type", "vxlan").stdout
    masters = {link["ifname"]: link["master"] for link in json.loads(h0)}
    assert masters == {"vx-100": red(u.hosts[0])["plugins"][0]["bridge"],
                       "vx-200": blue(u.hosts[0])["plugins"][0]["bridge"]}
    for conf, members in ((red, (r0, r1)), (blue, (b0, b1))):
        for x in members:
            detach(conf, x)
    gone_everywhere(u, 100)
    gone_everywhere(u, 200)


def test_ipv6_underlay(underlay: Underlay, netns: Callable[..., Netns]) -> None:
    """VTEPs on IPv6 addresses: 70 bytes of overhead, FDB entries towards IPv6 VTEPs."""
    u = underlay
    vni = 606
    conf = network(u, unique_name("net"), vni, [str(unique_subnet(4, 24)), str(unique_subnet(6))], underlay6=True)
    a, b = attach(conf, u.hosts[0], netns), attach(conf, u.hosts[1], netns)
    assert link_mtu(a.ns, "eth0") == 1430
    distribute(u, vni, u.hosts[:2])
    assert (b.mac, str(u.hosts[1].addr6)) in fdb(u.hosts[0], vni)
    assert a.ns.ping(b.ip4) and b.ns.ping(a.ip6)
    detach(conf, a)
    detach(conf, b)
    gone_everywhere(u, vni)


def test_reconcile_touches_nothing_else(underlay: Underlay, netns: Callable[..., Netns]) -> None:
    """Entries pybridge does not program survive every reconcile: the bridge's own FDB entries
    on the port, a non-permanent neighbour on the device, a permanent neighbour elsewhere, the
    entries of another vxlan device. A MAC that moved to another VTEP and an IP that moved to
    another MAC are replaced."""
    u = underlay
    h0, h1, h2 = u.hosts
    vni = 808
    conf = network(u, unique_name("net"), vni, [str(unique_subnet(4, 24))])
    a = attach(conf, h0, netns)
    dev, bridge = f"vx-{vni}", conf(h0)["plugins"][0]["bridge"]
    other = unique_name("vxo")
    h0.ns.ip("link", "add", other, "type", "vxlan", "id", "9", "dstport", "4791", "local", str(h0.addr4))
    h0.ns.run("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", other, "dst", str(h2.addr4))
    h0.ns.run("bridge", "fdb", "add", "02:00:00:00:aa:01", "dev", dev, "master", "static")
    h0.ns.ip("neigh", "add", "198.51.100.7", "lladdr", "02:00:00:00:aa:02", "dev", dev, "nud", "stale")
    h0.ns.ip("neigh", "add", "198.51.100.8", "lladdr", "02:00:00:00:aa:03", "dev", bridge, "nud", "permanent")

    def foreign() -> list[str]:
        return [h0.ns.run("bridge", "fdb", "show", "dev", other).stdout.strip(),
                "02:00:00:00:aa:01" in h0.ns.run("bridge", "fdb", "show", "dev", dev).stdout,
                h0.ns.ip("neigh", "show", "198.51.100.7", "dev", dev).strip() != "",
                h0.ns.ip("neigh", "show", "198.51.100.8", "dev", bridge).strip() != ""]

    untouched = foreign()
    assert untouched[0] and all(untouched[1:])
    mac_b = "02:00:00:00:bb:01"
    feed = [{"mac": mac_b, "vtep": str(h1.addr4), "ips": ["10.99.0.5"]}]
    h0.cli("vxlan", "reconcile", str(vni), "-", input=json.dumps(feed))
    assert fdb(h0, vni) == sorted([("00:00:00:00:00:00", str(h1.addr4)), (mac_b, str(h1.addr4))])
    moved = [{"mac": mac_b, "vtep": str(h2.addr4), "ips": []},
             {"mac": "02:00:00:00:bb:02", "vtep": str(h2.addr4), "ips": ["10.99.0.5"]}]
    assert h0.cli("vxlan", "reconcile", str(vni), "-", input=json.dumps(moved)).stdout.strip() == \
        "fdb +3 -1, neighbours +1 -0"
    assert fdb(h0, vni) == sorted([("00:00:00:00:00:00", str(h2.addr4)), (mac_b, str(h2.addr4)),
                                   ("02:00:00:00:bb:02", str(h2.addr4))])
    assert "lladdr 02:00:00:00:bb:02 PERMANENT" in h0.ns.ip("neigh", "show", "10.99.0.5", "dev", dev)
    h0.cli("vxlan", "reconcile", str(vni), "-", input="[]")
    assert fdb(h0, vni) == [] and h0.ns.ip("neigh", "show", "10.99.0.5", "dev", dev).strip() == ""
    assert foreign() == untouched
    h0.ns.ip("link", "del", other)
    detach(conf, a)
    gone_everywhere(u, vni)


def test_docker_network_across_two_hosts(underlay: Underlay, netns: Callable[..., Netns], tmp_path: Path) -> None:
    """`docker network create -d pybridge -o vxlanId=... -o vxlanLocal=<this host>` on two hosts
    (the driver served in each host's namespace, called as libnetwork calls it): the device comes
    with the network, endpoints get the lowered MTU and are published in the registry, the two
    hosts' containers share one segment, and `docker network rm` takes the device away."""
    u = underlay
    h0, h1 = u.hosts[:2]
    vni, subnet = 9090, unique_subnet(4, 24)
    nid = unique_name("nid") + "0" * 40
    sockets = [h.serve(u.hosts[0].cni.data_dir.parent / f"leases{i}") for i, h in enumerate((h0, h1))]
    containers = []
    try:
        for i, (h, sock) in enumerate(zip((h0, h1), sockets)):
            docker_vxlan_network(sock, nid, h, vni, PORT, subnet)
            vx = json.loads(h.ns.run("ip", "-d", "-j", "link", "show", f"vx-{vni}").stdout)[0]
            assert vx["linkinfo"]["info_data"]["local"] == str(h.addr4) and vx["mtu"] == 1450
            address = f"{subnet.network_address + 10 + i}/24"
            eid = f"{i}" * 64
            ctr = netns()
            mac = docker_endpoint(sock, nid, eid, h, address, ctr)
            assert ctr.ip_json("link", "show", "dev", "eth0")[0]["mtu"] == 1450
            containers.append((h, sock, eid, ctr, address.split("/")[0], mac))
        endpoints = distribute(u, vni, [h0, h1])
        assert sorted(e["mac"] for e in endpoints) == sorted(c[5] for c in containers)
        (_, _, _, c0, ip0, _), (_, _, _, c1, ip1, _) = containers
        assert c0.ping(ip1) and c1.ping(ip0)
        for h, sock, eid, ctr, _, _ in containers:
            ctr.delete()
            assert plugin_call(sock, "NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})[0] == 200
            assert json.loads(h.cli("vxlan", "local").stdout) == []
            assert h.ns.run("ip", "link", "show", f"vx-{vni}", check=False).returncode == 0  # the network's
            assert plugin_call(sock, "NetworkDriver.DeleteNetwork", {"NetworkID": nid}) == (200, {})
            assert h.ns.run("ip", "link", "show", f"vx-{vni}", check=False).returncode != 0
    finally:
        for h, sock in zip((h0, h1), sockets):
            plugin_call(sock, "NetworkDriver.DeleteNetwork", {"NetworkID": nid})


def test_conflicting_vxlan_configurations_are_refused(underlay: Underlay, netns: Callable[..., Netns]) -> None:
    """Error 7, nothing left behind: a VNI taken by another bridge, a device of that name with
    another port, a second VNI on one bridge, a missing underlay NIC. A second container of the
    network (IPv6 VTEP) finds the device as it is."""
    u = underlay
    h0 = u.hosts[0]
    subnet = str(unique_subnet(4, 24))
    net = network(u, unique_name("net"), 11, [subnet], underlay6=True)
    a, b = attach(net, h0, netns), attach(net, h0, netns)
    assert a.ns.ping(b.ip4)
    bridge = net(h0)["plugins"][0]["bridge"]

    def refused(conf: dict, message: str) -> None:
        ns = netns()
        with pytest.raises(CniCallError) as err:
            h0.cni.add(conf, ns.path, container_id=unique_name("ctr"))
        assert err.value.code == 7 and message in err.value.msg, err.value.msg
        assert ns.link_names() == ["lo"]

    other_bridge = network(u, unique_name("net"), 11, [subnet], underlay6=True)(h0)
    refused(other_bridge, f"VNI 11 is already a port of bridge {bridge}")
    other_port = net(h0)
    other_port["plugins"][0]["vxlan"]["port"] = PORT + 1
    refused(other_port, "vx-11 exists but is not vxlan VNI 11")
    second_vni = net(h0)
    second_vni["plugins"][0]["vxlan"]["vni"] = 12
    refused(second_vni, f"bridge {bridge} already has vxlan port vx-11")
    no_nic = network(u, unique_name("net"), 13, [subnet])(h0)
    no_nic["plugins"][0]["vxlan"]["dev"] = "nonic0"
    refused(no_nic, "vxlan.dev nonic0 (the underlay NIC) not found")
    assert json.loads(h0.ns.run("ip", "-j", "link", "show", "type", "vxlan").stdout)[0]["ifname"] == "vx-11"
    h0.cni.check(net(h0), a.ns.path, container_id=a.cid)  # CHECK looks at the vxlan port too
    h0.ns.ip("link", "set", "vx-11", "nomaster")
    with pytest.raises(CniCallError) as err:
        h0.cni.check(net(h0), a.ns.path, container_id=a.cid)
    assert "vxlan device vx-11 missing or not on bridge" in err.value.msg
    h0.ns.ip("link", "set", "vx-11", "master", bridge)
    detach(net, a)
    assert h0.ns.run("ip", "link", "show", "vx-11", check=False).returncode == 0  # b still uses it
    detach(net, b)
    gone_everywhere(u, 11)


def test_gc_reclaims_a_device_whose_containers_went_without_del(underlay: Underlay,
                                                                 netns: Callable[..., Netns]) -> None:
    """The runtime lost its containers (sandboxes gone, no DEL): `cni-bridge gc --apply` on that
    host releases the leases and then the vxlan device left alone on the bridge, and its registry."""
    u = underlay
    h0 = u.hosts[0]
    vni = 707
    conf = network(u, unique_name("net"), vni, [str(unique_subnet(4, 24))])
    a, b = attach(conf, h0, netns), attach(conf, h0, netns)
    conf_dir = h0.run_dir / "net.d"
    conf_dir.mkdir()
    (conf_dir / "10-vx.conflist").write_text(json.dumps(conf(h0)))
    gc = ["gc", "--conf-dir", str(conf_dir), "--data-dir", str(h0.cni.data_dir), "--cni-cache-dir",
          str(h0.cni.cache_dir), "--grace", "0"]
    a.ns.delete()
    dry = h0.cli(*gc, check=False).stdout
    assert "lease" in dry and "vxlan device" not in dry  # b is still attached: the device stays
    b.ns.delete()
    assert f"would remove: network {conf(h0)['name']}: vxlan device vx-{vni} (VNI {vni})" in \
        h0.cli(*gc, check=False).stdout
    applied = h0.cli(*gc, "--apply", check=False).stdout  # the leases first, then the device
    assert f"removed: network {conf(h0)['name']}: vxlan device vx-{vni} (VNI {vni})" in applied, applied
    assert h0.ns.run("ip", "link", "show", f"vx-{vni}", check=False).returncode != 0
    assert json.loads(h0.cli("vxlan", "local").stdout) == []
    assert "vxlan" not in h0.cli(*gc, check=False).stdout


# ----- crashes ---------------------------------------------------------------------------------
CRASH_LINE = re.compile(r"pybridge crashpoint: (\d+) (\S+)")
TRACE_LINE = re.compile(r"pybridge crashpoint trace: (\d+) (\S+)")


def with_env(h: SimHost, **env: str) -> CniTool:
    """h's CniTool (same cache, same namespace) with extra environment for the plugin."""
    return CniTool(h.cni.cache_dir, data_dir=h.cni.data_dir, env=h.cni.extra_env | env, wrapper=h.cni.wrapper)


def host_snapshot(h: SimHost) -> hostsnap.HostSnapshot:
    return hostsnap.snapshot([h.cni.data_dir, h.run_dir / "vxlan"], netns=h.ns.name)


@pytest.mark.parametrize(("killed", "cleanup"), [("ADD", "DEL"), ("ADD", "GC"), ("DEL", "DEL")])
def test_crash_at_every_step_then_del(underlay: Underlay, netns: Callable[..., Netns], killed: str,
                                      cleanup: str) -> None:
    """An ADD (or DEL) of a vxlan network killed after any step, then DEL (or CNI GC without
    it): the host is as before (no vxlan device, no registry record, no lease), and the next
    ADD works."""
    h = underlay.hosts[0]
    vni = 31
    conf = network(underlay, unique_name("net"), vni, [str(unique_subnet(4, 24))])(h)
    warm = netns()
    tracer = with_env(h, PYBRIDGE_CRASH_TRACE="1")
    if killed == "ADD":
        stderr = tracer.add(conf, warm.path, container_id="warmup").calls[-1].stderr
        h.cni.delete(conf, warm.path, container_id="warmup")
    else:
        h.cni.add(conf, warm.path, container_id="warmup")
        stderr = tracer.delete(conf, warm.path, container_id="warmup").calls[-1].stderr
    steps = [m.group(2) for m in TRACE_LINE.finditer(stderr)]
    assert ({"vxlan", "vxlan-registry"} if killed == "ADD" else {"vxlan-registry-removed", "vxlan-released"}) \
        <= set(steps), steps
    for n in range(1, len(steps) + 1):
        ns, cid = netns(), f"crash{n}"
        before = host_snapshot(h)
        crasher = with_env(h, PYBRIDGE_CRASH_AFTER=str(n))
        if killed == "ADD":
            call = crasher.add(conf, ns.path, container_id=cid, raise_on_error=False).calls[-1]
        else:
            h.cni.add(conf, ns.path, container_id=cid)
            call = crasher.delete(conf, ns.path, container_id=cid, raise_on_error=False).calls[-1]
        found = CRASH_LINE.search(call.stderr)
        assert call.exit_code == -signal.SIGKILL and found and int(found.group(1)) == n, call.stderr
        if cleanup == "GC":
            h.cni.gc(conf, [("bystander", "eth0")])
        else:
            h.cni.delete(conf, ns.path, container_id=cid)
        differences = hostsnap.diff(before, host_snapshot(h), ignore=[r"/last_reserved\.\d+ = "],
                                    ignore_foreign=False)
        assert not differences, f"{killed} killed after step {n} ({found.group(2)}), {cleanup}:\n  " + "\n  ".join(differences)
        assert h.ns.run("ip", "link", "show", f"vx-{vni}", check=False).returncode != 0
        ns.delete()
        ns = netns()  # GC cannot reach into the old sandbox: the runtime retries in a new one
        h.cni.add(conf, ns.path, container_id=cid)
        h.cni.delete(conf, ns.path, container_id=cid)
        ns.delete()
