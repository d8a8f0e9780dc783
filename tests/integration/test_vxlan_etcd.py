"""vxlan networks that span hosts with their peers from etcd (issue 18 + the etcd store of issue 17).

Three simulated hosts (tests/support/topology.py) and a 3-member etcd cluster on the root
namespace's loopback, reachable from each host's namespace on the same 127.0.0.1 ports
(tests/support/loopback.py). The network's IPAM store is etcd: one range shared by the three
hosts, and the same cluster carries each host's endpoints (overlay/distribute.py). Every host
runs `cni-bridge vxlan sync --watch` (or the one-shot `vxlan sync`); no peer is fed by hand.
Convergence is awaited (polling what a user would check), never slept for.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.cnitool import bridge_conflist
from tests.support.dockerd import plugin_call
from tests.support.etcd import EtcdCluster
from tests.support.host import wait_for
from tests.support.loopback import forward_loopback
from tests.support.netns import Netns
from tests.support.overlay import Container, attach, detach, docker_endpoint, docker_vxlan_network, fdb
from tests.support.session import unique_name
from tests.support.subnets import unique_subnet
from tests.support.topology import SimHost, Underlay, create_underlay

PORT = 4791
CONVERGE = 60.0  # upper bound for a change to reach a host (a watch event, else a round every 20 s)
ZERO = "00:00:00:00:00:00"


class Syncers:
    """One `cni-bridge vxlan sync --watch` per host, killed by `kill` / at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, h: SimHost, interval: float = 20) -> None:
        log = open(self.tmp / f"sync-{h.ns.name}.log", "a")
        self.procs[h.ns.name] = h.ns.popen(
            "env", f"PYBRIDGE_RUN_DIR={h.run_dir}", str(Path(sys.executable).with_name("cni-bridge")),
            "vxlan", "sync", "--watch", "--interval", str(interval), stdout=log, stderr=log, start_new_session=True)
        log.close()

    def log(self, h: SimHost) -> str:
        path = self.tmp / f"sync-{h.ns.name}.log"
        return path.read_text() if path.exists() else ""

    def kill(self, h: SimHost) -> None:
        proc = self.procs.pop(h.ns.name, None)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    def stop_all(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


@dataclass
class Site:
    underlay: Underlay
    cluster: EtcdCluster
    syncers: Syncers


@pytest.fixture
def site(etcd_cluster: EtcdCluster, tmp_path: Path) -> Iterator[Site]:
    u = create_underlay(3, tmp_path)
    syncers = Syncers(tmp_path)
    ports = [urllib.parse.urlsplit(e).port for e in etcd_cluster.endpoints]
    deleted = False
    try:
        for i, h in enumerate(u.hosts):
            h.cni.extra_env["PYBRIDGE_HOST_ID"] = f"host{i}"
        with forward_loopback([h.ns.name for h in u.hosts], ports):
            try:
                yield Site(u, etcd_cluster, syncers)
            finally:  # DELs of what a failed test left, while etcd is still reachable
                syncers.stop_all()
                deleted = True
                u.delete()
    finally:
        syncers.stop_all()
        if not deleted:
            u.delete()


def network(s: Site, vni: int) -> tuple[Callable[[SimHost], dict], str]:
    """The conflist as host `h` has it (its own vxlan `local`), and the etcd prefix."""
    prefix = "/" + unique_name("vxe")
    name, bridge = unique_name("net"), unique_name("brvx")
    subnets = [str(unique_subnet(4, 24)), str(unique_subnet(6))]
    store = {"type": "etcd", "endpoints": s.cluster.endpoints, "prefix": prefix, "timeout": 3}

    def on(h: SimHost) -> dict:
        conf = bridge_conflist(name, bridge=bridge, subnets=subnets, data_dir="/nonexistent", plugin_type="pybridge",
                               ipam_type="pybridge-ipam", ip_masq=True, cni_version="1.1.0",
                               extra={"vxlan": {"vni": vni, "local": str(h.addr4), "port": PORT, "dev": h.nic}})
        ipam = conf["plugins"][0]["ipam"]
        del ipam["dataDir"]
        ipam["store"] = store
        return conf
    return on, prefix


def expected_fdb(h: SimHost, others: list[Container]) -> list[tuple[str, str]]:
    remote = [c for c in others if c.host is not h]
    return sorted({(c.mac, str(c.host.addr4)) for c in remote} | {(ZERO, str(c.host.addr4)) for c in remote})


def converged(vni: int, members: list[Container], hosts: list[SimHost]) -> bool:
    return all(fdb(h, vni) == expected_fdb(h, members) for h in hosts)


def pings(x: Container, y: Container) -> bool:
    return x.ns.ping(y.ip4) and x.ns.ping(y.ip6)


def published(s: Site, prefix: str, vni: int) -> dict[str, dict[str, Any]]:
    return {k: json.loads(v) for k, v in s.cluster.get_prefix(f"{prefix}/vxlan/{vni}/").items()}


def test_peers_come_from_etcd_whichever_host_attached_first(site: Site, netns: Callable[..., Netns]) -> None:
    s, vni = site, 4343
    h0, h1, h2 = s.underlay.hosts
    conf, prefix = network(s, vni)
    s.syncers.start(h0)
    s.syncers.start(h1)
    # h2 attaches first, h0 next, h1 last (it joins once the others talk already); two each.
    c2 = [attach(conf, h2, netns) for _ in range(2)]
    c0 = [attach(conf, h0, netns) for _ in range(2)]
    assert wait_for(lambda: converged(vni, c0 + c2, [h0]), CONVERGE), fdb(h0, vni)
    # h2 runs no sync loop (a CNI-only host): the one-shot sync programs it.
    assert h2.cli("vxlan", "sync").returncode == 0
    assert converged(vni, c0 + c2, [h0, h2]) and pings(c0[0], c2[1]) and pings(c2[0], c0[1])
    c1 = [attach(conf, h1, netns) for _ in range(2)]
    everyone = c0 + c1 + c2
    assert wait_for(lambda: converged(vni, everyone, [h0, h1]), CONVERGE), (fdb(h0, vni), fdb(h1, vni))
    h2.cli("vxlan", "sync")
    assert converged(vni, everyone, [h2])
    for x, y in ((c1[0], c0[0]), (c1[1], c2[0]), (c0[1], c1[1]), (c2[1], c1[0])):
        assert pings(x, y), f"{x.host.addr4} -> {y.host.addr4}"
    # One range shared by three hosts: six distinct addresses, each an etcd lease.
    addresses = [c.ip4 for c in everyone] + [c.ip6 for c in everyone]
    assert len(set(addresses)) == 12
    net = conf(h0)["name"]
    leases = {k.rsplit("/", 1)[1] for k in s.cluster.get_prefix(f"{prefix}/ipam/{net}/lease/")}
    assert leases == set(addresses)
    # What etcd holds: one key per attachment under its host's VTEP.
    records = published(s, prefix, vni)
    assert sorted((r["mac"], r["vtep"]) for r in records.values()) == sorted((c.mac, str(c.host.addr4)) for c in everyone)
    # A container deleted on h2 is gone from the others' FDB (and its neighbour entry).
    detach(conf, c2[0])
    left = c0 + c1 + c2[1:]
    assert wait_for(lambda: converged(vni, left, [h0, h1]), CONVERGE), fdb(h0, vni)
    assert c2[0].ip4 not in h0.ns.run("ip", "neigh", "show", "dev", f"vx-{vni}").stdout
    # h2's last member leaves: nobody floods to h2 any more.
    detach(conf, c2[1])
    left = c0 + c1
    assert wait_for(lambda: converged(vni, left, [h0, h1]), CONVERGE), fdb(h0, vni)
    assert all(dst != str(h2.addr4) for _, dst in fdb(h0, vni) + fdb(h1, vni))
    for c in left:
        detach(conf, c)
    assert published(s, prefix, vni) == {}
    for h in (h0, h1, h2):
        assert h.ns.run("ip", "link", "show", f"vx-{vni}", check=False).returncode != 0


def test_restarted_sync_and_lost_kernel_state_converge(site: Site, netns: Callable[..., Netns]) -> None:
    s, vni = site, 4344
    h0, h1, h2 = s.underlay.hosts
    conf, prefix = network(s, vni)
    for h in (h0, h1):
        s.syncers.start(h)
    a, b = attach(conf, h0, netns), attach(conf, h1, netns)
    assert wait_for(lambda: converged(vni, [a, b], [h0, h1]), CONVERGE)
    assert pings(a, b)
    # h0's sync dies: its kernel entries stay, traffic goes on.
    s.syncers.kill(h0)
    before = fdb(h0, vni)
    assert pings(a, b) and fdb(h0, vni) == before
    # While it is down, h2 joins and h1 gets a second member: events h0 misses.
    s.syncers.start(h2)
    c, b2 = attach(conf, h2, netns), attach(conf, h1, netns)
    members = [a, b, b2, c]
    assert wait_for(lambda: converged(vni, members, [h1, h2]), CONVERGE)
    assert fdb(h0, vni) == before  # nobody programmed h0
    s.syncers.start(h0)  # restarted: converges from etcd alone
    assert wait_for(lambda: converged(vni, members, [h0]), CONVERGE), fdb(h0, vni)
    assert pings(a, c) and pings(a, b2)
    # etcd loses its quorum: every host keeps its kernel state, rounds fail and are retried.
    kept = {h.ns.name: fdb(h, vni) for h in (h0, h1, h2)}
    s.cluster.stop(1)
    s.cluster.stop(2)
    assert wait_for(lambda: "try again" in s.syncers.log(h0), CONVERGE), s.syncers.log(h0)
    assert {h.ns.name: fdb(h, vni) for h in (h0, h1, h2)} == kept and pings(a, c)
    s.cluster.start(1)
    s.cluster.start(2)
    s.cluster.wait_ready()
    # h1 reboots: its containers, bridge, vxlan device and run dir are gone, its sync too.
    s.syncers.kill(h1)
    for x in (b, b2):
        x.ns.delete()  # takes the veth pairs with it
    h1.ns.run("ip", "link", "delete", f"vx-{vni}")
    h1.ns.run("ip", "link", "delete", conf(h1)["plugins"][0]["bridge"])
    shutil.rmtree(h1.run_dir / "vxlan")
    # After the reboot the runtime starts a container again, and the sync loop.
    b3 = attach(conf, h1, netns)
    s.syncers.start(h1)
    members = [a, b3, c]
    assert wait_for(lambda: converged(vni, members, [h0, h1, h2]), CONVERGE), (fdb(h0, vni), fdb(h1, vni))
    assert sorted(r["mac"] for r in published(s, prefix, vni).values()) == sorted(x.mac for x in members)
    assert pings(b3, a) and pings(c, b3)
    for x in members:
        detach(conf, x)
    for x in (b, b2):  # the runtime's DEL after the reboot: nothing left to undo but the leases
        detach(conf, x)
    assert published(s, prefix, vni) == {}


def test_docker_networks_are_synced_by_serve(site: Site, netns: Callable[..., Netns], tmp_path: Path) -> None:
    """`cni-bridge serve --ipam-store etcd` on two hosts: the same Docker network (`-o vxlanId
    -o vxlanLocal`) on each, endpoints published and programmed by serve's own sync thread."""
    s, vni = site, 9191
    h0, h1 = s.underlay.hosts[:2]
    prefix = "/" + unique_name("vxd")
    subnet = unique_subnet(4, 24)
    nid = unique_name("nid") + "0" * 40
    sockets = [h.serve(tmp_path / f"unused{i}", "--ipam-store", "etcd", "--etcd-endpoints", ",".join(s.cluster.endpoints),
                       "--etcd-prefix", prefix) for i, h in enumerate((h0, h1))]
    ends = []
    try:
        for i, (h, sock) in enumerate(zip((h0, h1), sockets)):
            docker_vxlan_network(sock, nid, h, vni, PORT, subnet)
            address, eid, ctr = f"{subnet.network_address + 10 + i}/24", f"{i}" * 64, netns()
            ends.append((h, sock, eid, ctr, address.split("/")[0], docker_endpoint(sock, nid, eid, h, address, ctr)))
        (_, _, _, c0, ip0, mac0), (_, sock1, eid1, c1, ip1, mac1) = ends
        assert wait_for(lambda: (mac1, str(h1.addr4)) in fdb(h0, vni) and (mac0, str(h0.addr4)) in fdb(h1, vni),
                        CONVERGE), (fdb(h0, vni), fdb(h1, vni))
        assert c0.ping(ip1) and c1.ping(ip0)
        assert sorted(r["mac"] for r in published(s, prefix, vni).values()) == sorted([mac0, mac1])
        c1.delete()
        assert plugin_call(sock1, "NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid1})[0] == 200
        assert wait_for(lambda: fdb(h0, vni) == [], CONVERGE), fdb(h0, vni)
    finally:
        for h, sock in zip((h0, h1), sockets):
            plugin_call(sock, "NetworkDriver.DeleteNetwork", {"NetworkID": nid})


def test_a_host_gone_for_good_leaves_the_others_tables_when_its_lease_expires(site: Site,
                                                                              netns: Callable[..., Netns]) -> None:
    """h2's loop (rounds every second: a 5 s lease) stops and never comes back, its container
    without a DEL: its keys expire, and h0 stops flooding to it."""
    s, vni = site, 4345
    h0, _, h2 = s.underlay.hosts
    conf, prefix = network(s, vni)
    s.syncers.start(h0)
    s.syncers.start(h2, interval=1)
    a, c = attach(conf, h0, netns), attach(conf, h2, netns)
    assert wait_for(lambda: converged(vni, [a, c], [h0, h2]), CONVERGE)
    assert pings(a, c)
    records = published(s, prefix, vni)
    assert len(records) == 2
    s.syncers.kill(h2)
    assert wait_for(lambda: fdb(h0, vni) == [], CONVERGE), fdb(h0, vni)
    assert [r["vtep"] for r in published(s, prefix, vni).values()] == [str(h0.addr4)]
    # h2's loop comes back (the host was only away): its container is published again
    s.syncers.start(h2, interval=1)
    assert wait_for(lambda: converged(vni, [a, c], [h0, h2]), CONVERGE)
    assert pings(c, a)
    detach(conf, a)
    detach(conf, c)
    assert wait_for(lambda: published(s, prefix, vni) == {}, CONVERGE)
