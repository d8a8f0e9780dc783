"""The judge steps of `cni-bridge status` and `gc` (issue 14 item 6, issue 15), on hand-made
facts: no root, no kernel, no files.

`inventory.judge` turns gathered `Facts` into networks, judged endpoints and claims;
`inventory.stale.findings` proposes what gc removes. A host veth is proposed only when no owner
claims it -- claims come from every lease store and Docker endpoint record, not only from the
networks asked for -- and never on a bridge where some owner's claims are out of sight.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cni_bridge.attachment import Attachment
from cni_bridge.inventory.judge import claims_of, judge, judge_endpoint
from cni_bridge.inventory.model import (
    ALL_BRIDGES,
    ATTACHED,
    DOCKER,
    STALE,
    UNKNOWN,
    Container,
    Endpoint,
    Facts,
    HostLink,
    Network,
    NetworkConfig,
    Sources,
)
from cni_bridge.inventory.stale import ELEMENT, LEASE, PORT, TABLE, VM_PORT, findings, held_back
from cni_bridge.ipam.lease import Lease
from cni_bridge.vm.names import owner_of

NOW = 1_000_000.0
DATA = "/leases"
BRIDGE = HostLink("br0", 10, "bridge", "02:00:00:00:00:10", True)


def veth(owner: str, ifname: str = "eth0") -> str:
    return Attachment(owner, ifname, None).host_ifname


def lease(address: str, owner: str, ifname: str = "eth0", age: float = 3600) -> Lease:
    ip = ipaddress.ip_address(address)
    return Lease(ip, ipaddress.ip_network(f"{address}/24", strict=False), None, owner, ifname, NOW - age, 0)


def port(name: str, index: int, master: int | None = BRIDGE.index) -> HostLink:
    return HostLink(name, index, "veth", "02:00:00:00:00:01", True, master, peer=index + 1000, peer_netnsid=None)


def config(name: str, *, bridge: str = "br0", data_dir: str | None = DATA, plugin: str = "pybridge") -> NetworkConfig:
    return NetworkConfig(name, f"/etc/cni/net.d/{name}.conflist", plugin, "bridge" if plugin == "pybridge" else None,
                         bridge, True, data_dir)


def facts(*, configs: list[NetworkConfig], stores: dict[str, list[Lease]], links: list[HostLink] = (),
          docker_networks: list[dict] = (), docker_endpoints: list[dict] = ()) -> Facts:
    f = Facts(Sources((Path(DATA),), (), None, None), NOW)
    f.configs, f.docker_networks, f.docker_endpoints = list(configs), list(docker_networks), list(docker_endpoints)
    f.stores = {name: {DATA: held} for name, held in stores.items()}
    f.links = {link.name: link for link in [BRIDGE, *links]}
    f.table_names = {name: f"pybridge_{name}" for name in [*stores, *(c.name for c in configs)]}
    return f


def docker_records(nid: str, eid: str) -> tuple[dict, dict]:
    network = {"id": nid, "status": "ready", "ipv4": [], "ipv6": [],
               "config": {"name": nid, "bridge": "br0", "isGateway": True, "ipMasq": False}}
    endpoint = {"id": eid, "network": nid, "status": "ready", "host_ifname": veth(eid, "docker"),
                "src_name": "pbc" + veth(eid, "docker")[4:], "addresses": ["10.3.0.2"]}
    return network, endpoint


# --- a bridge shared by two CNI networks and a Docker network --------------------------------------
def shared_bridge() -> Facts:
    net, end = docker_records("d" * 64, "e" * 64)
    return facts(configs=[config("net1"), config("net2")],
                 stores={"net1": [lease("10.1.0.2", "ctr1")], "net2": [lease("10.2.0.2", "ctr2")]},
                 links=[port(veth("ctr1"), 11), port(veth("ctr2"), 12), port(end["host_ifname"], 13),
                        port(veth("junk"), 14)],
                 docker_networks=[net], docker_endpoints=[end])


def test_claims_come_from_every_owner_whatever_was_asked_for() -> None:
    f = shared_bridge()
    inv = judge(f, {"net1"}, grace=60)
    assert [n.name for n in inv.networks] == ["net1"]
    assert inv.claims.ports == {veth("ctr1"), veth("ctr2"), veth("e" * 64, "docker")}
    found = findings(inv)
    assert [(f.kind, f.subject) for f in found] == [(PORT, veth("junk"))]
    assert found[0].index == 14


def test_without_a_filter_each_port_is_proposed_once() -> None:
    inv = judge(shared_bridge(), None, grace=60)
    assert {n.name for n in inv.networks} == {"net1", "net2", "d" * 64}
    assert [(f.kind, f.subject) for f in findings(inv)] == [(PORT, veth("junk"))]


def test_docker_ipam_leases_claim_nothing_and_are_never_stale() -> None:
    f = facts(configs=[config("net1")], stores={"net1": [lease("10.1.0.9", "docker-" + "ab" * 16, "docker")]})
    inv = judge(f, None, grace=0)
    assert inv.claims.ports == set()
    [ep] = inv.networks[0].endpoints
    assert ep.state == DOCKER and findings(inv) == []


def test_a_bridge_with_an_owner_out_of_sight_is_left_alone() -> None:
    """A pybridge network with another IPAM (host-local) holds no lease here: its container's
    veth looks unclaimed, so nothing on that bridge may be judged."""
    f = facts(configs=[config("net1"), config("hostlocal", data_dir=None)], stores={"net1": []},
              links=[port(veth("somebody"), 11)])
    inv = judge(f, None, grace=60)
    assert "another IPAM" in inv.claims.why_unprovable("br0")
    assert [x for x in findings(inv) if x.kind == PORT] == []
    assert held_back(inv) == ["ports of bridge br0 (network hostlocal on it keeps its leases in another IPAM)"]


def test_unreadable_sources_make_every_bridge_unprovable() -> None:
    for field in ("config_errors", "docker_errors", "store_errors"):
        f = facts(configs=[config("net1")], stores={"net1": []}, links=[port(veth("x"), 11)])
        getattr(f, field).append("broken")
        claims = claims_of(f)
        assert ALL_BRIDGES in claims.unprovable and claims.why_unprovable("any")
        assert findings(judge(f, None, grace=60)) == []


def test_foreign_plugins_veths_are_not_candidates() -> None:
    """The Go bridge names its veths veth + 8 hex: never a pybridge port."""
    f = facts(configs=[config("net1")], stores={"net1": []}, links=[port("veth1a2b3c4d", 11), port("eth7", 12)])
    assert findings(judge(f, None, grace=60)) == []


def test_a_port_elsewhere_is_not_a_candidate() -> None:
    f = facts(configs=[config("net1")], stores={"net1": []}, links=[port(veth("x"), 11, master=None)])
    assert findings(judge(f, None, grace=60)) == []


# --- leases, elements, tables ------------------------------------------------------------------------
def test_stale_lease_element_and_table_findings() -> None:
    f = facts(configs=[config("net1"), config("net2", bridge="br2")],
              stores={"net1": [lease("10.1.0.2", "gone"), lease("10.1.0.3", "live")], "net2": []},
              links=[port(veth("live"), 11)])
    f.tables = {"pybridge_net1", "pybridge_net2"}
    f.members = {"net1": {"10.1.0.2": veth("gone"), "10.1.0.3": veth("live"), "10.1.0.7": veth("orphan")},
                 "net2": {}}
    inv = judge(f, None, grace=60)
    states = {ep.container_id: ep.state for ep in inv.network("net1").endpoints}
    assert states == {"gone": STALE, "live": ATTACHED}
    found = {(x.network, x.kind): x for x in findings(inv)}
    assert set(found) == {("net1", LEASE), ("net1", ELEMENT), ("net2", TABLE)}
    assert found["net1", LEASE].subject == "gone eth0" and "masquerade 10.1.0.2" in found["net1", LEASE].what
    assert found["net1", ELEMENT].subject == veth("orphan") and "10.1.0.7" in found["net1", ELEMENT].what


def test_young_and_unjudgeable_leases_are_not_stale() -> None:
    f = facts(configs=[config("go", plugin="bridge")], stores={"go": [lease("10.1.0.2", "c1")], "noconf": [
        lease("10.4.0.2", "c2")], "young": [lease("10.5.0.2", "c3", age=5)]})
    inv = judge(f, None, grace=60)
    states = {n.name: n.endpoints[0].state for n in inv.networks}
    assert states == {"go": UNKNOWN, "noconf": UNKNOWN, "young": UNKNOWN}
    assert findings(inv) == []


def test_judge_endpoint_reasons() -> None:
    net = Network("n", plugin="pybridge", mode="bridge")
    ep = Endpoint("c", "eth0", "cni", UNKNOWN, host_ifname="vethx", since=NOW - 3600)
    assert judge_endpoint(ep, net, None, False, NOW, 60) == (STALE, "host veth vethx is gone")
    assert judge_endpoint(ep, net, "/run/netns/a", False, NOW, 60) == (STALE, "netns /run/netns/a is gone")
    assert judge_endpoint(ep, net, "/run/netns/a", True, NOW, 60) == (STALE, "no eth0 in netns /run/netns/a")
    ep.container = Container("/run/netns/a", "eth0", present=True)
    assert judge_endpoint(ep, net, "/run/netns/a", True, NOW, 60) == (ATTACHED, "interface in netns")
    ep.container, ep.host_link = None, True
    assert judge_endpoint(ep, net, None, False, NOW, 60) == (ATTACHED, "host link present")


def test_docker_endpoints_and_problems() -> None:
    f = shared_bridge()
    f.docker_networks[0]["config"]["ipMasq"] = True
    inv = judge(f, {"d" * 12}, grace=60)  # a Docker network named by its short id
    [net] = inv.networks
    assert net.docker_id == "d" * 64 and net.bridge == "br0" and net.bridge_present
    [ep] = net.endpoints
    assert ep.source == "docker" and ep.state == ATTACHED and ep.host_master == "br0"
    assert net.problems == ["ipMasq is on but some attached endpoints have no masquerade entry"]


def test_status_json_shape_is_unchanged() -> None:
    inv = judge(shared_bridge(), None, grace=60)
    assert set(inv.to_dict()) == {"networks", "foreign_tables", "netns", "problems"}


# --- VM ports (cni-bridge vm) ----------------------------------------------------------------------
def vm_facts(*, tap_link: bool, record: bool, age: float = 3600, extra_links: list[HostLink] = ()) -> Facts:
    tap = "pbtap0123456789"
    f = facts(configs=[config("net1")], stores={"net1": [lease("10.1.0.5", *owner_of(tap), age=age)]},
              links=[HostLink(tap, 21, "tun", "fe:00:00:00:00:05", True, BRIDGE.index)] if tap_link else [])
    f.links.update({link.name: link for link in extra_links})
    if record:
        f.vm_ports = {tap: {"id": tap, "tap": tap, "network": "net1", "status": "ready", "mac": "52:54:00:00:00:05",
                            "addresses": ["10.1.0.5/24"], "since": NOW - age}}
    return f


def test_a_vm_port_with_tap_and_record_is_attached_and_claims_its_tap() -> None:
    inv = judge(vm_facts(tap_link=True, record=True), None, 60)
    (ep,) = inv.network("net1").endpoints
    assert (ep.source, ep.ifname, ep.state, ep.host_master) == ("vm", "pbtap0123456789", ATTACHED, "br0")
    assert "pbtap0123456789" in inv.claims.ports and findings(inv) == []


def test_a_vm_port_missing_its_tap_or_its_record_is_stale() -> None:
    for tap_link, record, why in ((False, True, "is gone"), (True, False, "no port record")):
        inv = judge(vm_facts(tap_link=tap_link, record=record), None, 60)
        (ep,) = inv.network("net1").endpoints
        assert ep.state == STALE and why in ep.why
        assert [(f.kind, f.subject) for f in findings(inv)] == [(VM_PORT, "pbtap0123456789")]


def test_a_young_vm_port_is_left_alone() -> None:
    inv = judge(vm_facts(tap_link=False, record=True, age=5), None, 60)
    assert inv.network("net1").endpoints[0].state == UNKNOWN and findings(inv) == []


def test_an_unclaimed_default_named_tap_on_the_bridge_is_a_port_finding_but_not_other_taps() -> None:
    stray = HostLink("pbtapabcdefabcd", 22, "tun", "fe:00:00:00:00:06", True, BRIDGE.index)
    vnet = HostLink("vnet0", 23, "tun", "fe:00:00:00:00:07", True, BRIDGE.index)
    inv = judge(vm_facts(tap_link=True, record=True, extra_links=[stray, vnet]), None, 60)
    assert [(f.kind, f.subject) for f in findings(inv)] == [(PORT, "pbtapabcdefabcd")]
