"""`cni-bridge vm attach|detach|ls`: tap ports for VMs on the host, on a CNI network and on a
pybridge Docker network (the driver's state, made through its API in-process).

What a user checks: the tap exists with the flags, owner and group asked for (sysfs), it is a port
of the network's bridge, the lease is in the network's store under the port's owner key, the
printed MAC is the guest's (not the tap's), a frame written into the tap (what QEMU does) reaches
the bridge and the gateway answers it; after detach nothing is left, the bridge included when
the port brought it. gc reclaims a port whose record or tap went away; a crash after any step of
an attach is undone by detach.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.firewall import table_name
from cni_bridge.kernel.tuntap import IFF_MULTI_QUEUE, IFF_TAP, opened_tap
from cni_bridge.vm.names import owner_of
from tests.support import hostsnap
from tests.support.cli import cli
from tests.support.cnitool import CniTool
from tests.support.host import run
from tests.support.leaks import lease_files
from tests.support.plugin_client import GATEWAY_OPTS, Plugin
from tests.support.session import unique_name
from tests.support.subnets import unique_subnet
from tests.support.vmframes import gateway_answers
from tests.support.vmports import Vm, cni_network

CRASH_LINE = re.compile(r"pybridge crashpoint: (\d+) (\S+)")
TRACE_LINE = re.compile(r"pybridge crashpoint trace: (\d+) (\S+)")
ATTACH_STEPS = {"vm-port-recorded", "ipam-owner-file", "ipam-lease-file", "bridge", "gateway-address",
                "tap-created", "tap-up", "masquerade", "vm-port-ready"}


# ----- helpers -----------------------------------------------------------------------------
def link(name: str) -> dict[str, Any] | None:
    found = json.loads(run(["ip", "-d", "-j", "link", "show", "dev", name], check=False).stdout or "[]")
    return found[0] if found else None


def sysfs(tap: str, attr: str) -> str:
    return Path(f"/sys/class/net/{tap}/{attr}").read_text().strip()


def addresses_leased(data_dir: Path) -> list[str]:
    return sorted(p.name for p in lease_files(data_dir) if not p.name.startswith("owner."))


@pytest.fixture
def vms(request: pytest.FixtureRequest) -> Any:
    made: list[Vm] = []

    def make(tmp_path: Path, state_dir: Path | None = None) -> Vm:
        made.append(Vm(tmp_path, state_dir))
        return made[-1]
    yield make
    for vm in made:
        vm.cleanup()


@pytest.fixture
def vm_net(vms: Any, tmp_path: Path, cni: CniTool, own_bridges: list[str]) -> tuple[Vm, dict[str, Any]]:
    """A `Vm` and a CNI bridge network in its config dir (bridge removed at the end)."""
    vm = vms(tmp_path)
    conf = cni_network(vm, cni)
    own_bridges.append(conf["plugins"][0]["bridge"])
    return vm, conf


# ----- CNI networks --------------------------------------------------------------------------
def test_attach_ls_detach_on_a_cni_network(vms: Any, tmp_path: Path, cni: CniTool, own_bridges: list[str]) -> None:
    vm = vms(tmp_path)
    conf = cni_network(vm, cni)
    name, bridge = conf["name"], conf["plugins"][0]["bridge"]
    own_bridges.append(bridge)
    port = vm.attach(name, "--mac", "52:54:00:12:34:56", "--owner", "4242", "--group", "4343", "--multi-queue")
    tap = port["tap"]
    assert re.fullmatch(r"pbtap[0-9a-f]{10}", tap) and port["mac"] == "52:54:00:12:34:56"
    assert port["gateway"] and port["ips"][0].startswith(port["gateway"].rsplit(".", 1)[0])
    flags = int(sysfs(tap, "tun_flags"), 16)
    assert flags & IFF_TAP and flags & IFF_MULTI_QUEUE
    assert (sysfs(tap, "owner"), sysfs(tap, "group")) == ("4242", "4343")
    info = link(tap)
    assert info["master"] == bridge
    assert info["address"] != port["mac"]  # the tap's own MAC: a bridge keeps its ports' MACs to itself
    assert addresses_leased(cni.data_dir) == [port["ips"][0].split("/")[0]]
    lease = cni.data_dir / name / port["ips"][0].split("/")[0]
    assert json.loads(lease.read_text())["container_id"] == owner_of(tap)[0]
    assert port["ips"][0].split("/")[0] in run(["nft", "list", "table", "inet", table_name(name)]).stdout
    assert [(p["network"], p["tap"], p["mac"], p["ips"], p["tap_present"]) for p in vm.ls()] == \
        [(name, tap, port["mac"], port["ips"], True)]
    status = cli("status", "--json", *vm.sources(cni.data_dir), name)
    assert status.returncode == 0, status.stdout + status.stderr
    endpoints = json.loads(status.stdout)["networks"][0]["endpoints"]
    assert [(e["source"], e["ifname"], e["state"]) for e in endpoints] == [("vm", tap, "attached")]
    gc = cli("gc", *vm.sources(cni.data_dir), "--grace", "0")
    assert gc.returncode == 0 and "nothing stale" in gc.stdout, gc.stdout

    # the guest's side (QEMU opens the tap the same way): an ARP request reaches the gateway
    with opened_tap(tap, multi_queue=True) as fd:
        assert gateway_answers(fd, port["mac"], port["ips"][0].split("/")[0], port["gateway"])

    vm.detach(name, tap)
    assert link(tap) is None and link(bridge) is None  # the port brought the bridge: it goes too
    assert lease_files(cni.data_dir) == [] and vm.ls() == []
    assert table_name(name) not in run(["nft", "list", "tables"]).stdout
    vm.detach(name, tap)  # idempotent


def test_a_container_keeps_the_bridge_and_shares_the_range(vms: Any, tmp_path: Path, cni: CniTool, netns: Any,
                                                           own_bridges: list[str]) -> None:
    vm = vms(tmp_path)
    conf = cni_network(vm, cni)
    name, bridge = conf["name"], conf["plugins"][0]["bridge"]
    own_bridges.append(bridge)
    port = vm.attach(name, "--name", unique_name("tap"))
    ns = netns()
    result = cni.add(conf, ns.path).result
    assert result["ips"][0]["address"] != port["ips"][0]  # one store, one range, no collision
    vm.detach(name, port["tap"])
    assert link(bridge) is not None  # the container still uses it
    assert link(port["tap"]) is None
    cni.delete(conf, ns.path)
    assert lease_files(cni.data_dir) == []


def test_refusals(vm_net: Any, cni: CniTool) -> None:
    vm, conf = vm_net
    missing = vm.attach(unique_name("nonet"), check=False)
    assert missing.returncode == 1 and "no network" in missing.stderr
    bad_mac = vm.attach(conf["name"], "--mac", "01:00:00:00:00:01", check=False)
    assert bad_mac.returncode == 1 and "multicast" in bad_mac.stderr
    tap = unique_name("tap")
    vm.attach(conf["name"], "--name", tap)
    again = vm.attach(conf["name"], "--name", tap, check=False)
    assert again.returncode == 1 and "already" in again.stderr
    vm.detach(conf["name"], tap)
    assert lease_files(cni.data_dir) == []


# ----- gc --------------------------------------------------------------------------------------
def test_gc_reclaims_a_port_whose_record_or_tap_is_gone(vm_net: Any, cni: CniTool) -> None:
    vm, conf = vm_net
    name = conf["name"]
    keep = vm.attach(name)
    lost_record = vm.attach(name)
    lost_tap = vm.attach(name)
    (vm.port_dir / "ports" / f"{lost_record['tap']}.json").unlink()
    run(["ip", "link", "del", lost_tap["tap"]])
    gc = cli("gc", *vm.sources(cni.data_dir), "--grace", "0", "--apply")
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert link(lost_record["tap"]) is None
    assert [p["tap"] for p in vm.ls()] == [keep["tap"]]
    assert addresses_leased(cni.data_dir) == [keep["ips"][0].split("/")[0]]
    assert link(keep["tap"]) is not None
    members = run(["nft", "list", "table", "inet", table_name(name)]).stdout
    assert lost_record["tap"] not in members and lost_tap["tap"] not in members and keep["tap"] in members
    vm.detach(name, keep["tap"])
    assert lease_files(cni.data_dir) == []


# ----- crash injection -------------------------------------------------------------------------
def test_attach_crash_at_every_step_is_undone_by_detach(vm_net: Any, cni: CniTool) -> None:
    vm, conf = vm_net
    name = conf["name"]
    warm = vm.attach(name, "--name", unique_name("warm"), env={"PYBRIDGE_CRASH_TRACE": "1"}, check=False)
    steps = [m.group(2) for m in TRACE_LINE.finditer(warm.stderr)]
    assert ATTACH_STEPS <= set(steps), steps
    keep = json.loads(warm.stdout)  # keeps the network's bridge and table (as a host in use has)
    for n in range(1, len(steps) + 1):
        tap = unique_name("crash")
        before = hostsnap.snapshot([cni.data_dir, vm.port_dir])
        proc = vm.attach(name, "--name", tap, env={"PYBRIDGE_CRASH_AFTER": str(n)}, check=False)
        assert proc.returncode == -signal.SIGKILL and CRASH_LINE.search(proc.stderr), proc.stderr
        vm.detach(name, tap)
        after = hostsnap.snapshot([cni.data_dir, vm.port_dir])
        differences = hostsnap.diff(before, after, only=hostsnap.mine(cni.data_dir, vm.port_dir, tap),
                                    ignore=[r"/last_reserved\.\d+ = ", r"/bitmap\.\d+ = "])
        assert not differences, f"crash after step {n} ({steps[n - 1]}):\n  " + "\n  ".join(differences)
    vm.detach(name, keep["tap"])
    assert lease_files(cni.data_dir) == []


# ----- Docker networks ---------------------------------------------------------------------------
def test_attach_detach_on_a_docker_network(vms: Any, tmp_path: Path, plugin: Plugin, own_bridges: list[str]) -> None:
    subnet = unique_subnet(4, 24)
    bridge, nid = unique_name("br"), unique_name("nid") + "7" * 40
    own_bridges.append(bridge)
    pool = plugin.ok("IpamDriver.RequestPool", {"Pool": str(subnet)})["PoolID"]
    gateway = plugin.ok("IpamDriver.RequestAddress", {"PoolID": pool, "Options": GATEWAY_OPTS})["Address"]
    vm = vms(tmp_path, plugin.settings.state_dir)
    try:
        plugin.ok("NetworkDriver.CreateNetwork", {
            "NetworkID": nid, "Options": {"com.docker.network.generic": {"bridge": bridge},
                                          "com.docker.network.enable_ipv6": False},
            "IPv4Data": [{"AddressSpace": "pybridge-local", "Pool": str(subnet), "Gateway": gateway,
                          "AuxAddresses": {}}], "IPv6Data": []})
        port = vm.attach(nid[:12], "--owner", "4242")
        assert port["network"] == nid and port["gateway"] == gateway.split("/")[0]
        assert link(port["tap"])["master"] == bridge and sysfs(port["tap"], "owner") == "4242"
        leased = plugin.leases()
        assert leased[port["ips"][0].split("/")[0]] == owner_of(port["tap"])[0]
        vm.detach(nid, port["tap"])
        assert link(port["tap"]) is None and link(bridge) is not None  # the network's bridge is Docker's
        assert port["ips"][0].split("/")[0] not in plugin.leases()
    finally:
        plugin.call("NetworkDriver.DeleteNetwork", {"NetworkID": nid})
        plugin.call("IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": gateway.split("/")[0]})
        plugin.call("IpamDriver.ReleasePool", {"PoolID": pool})
    assert link(bridge) is None


def test_an_l2_only_network_gives_a_port_without_address(vms: Any, tmp_path: Path, own_bridges: list[str]) -> None:
    """No `ipam` in the network: the port is a bridge port and nothing else (no lease, no table)."""
    vm = vms(tmp_path)
    name, bridge = unique_name("net"), unique_name("br")
    own_bridges.append(bridge)
    conf = {"cniVersion": "1.1.0", "name": name, "plugins": [{"type": "pybridge", "bridge": bridge}]}
    (vm.conf_dir / f"20-{name}.conflist").write_text(json.dumps(conf))
    port = vm.attach(name)
    assert (port["ips"], port["gateway"]) == ([], None)
    assert link(port["tap"])["master"] == bridge
    assert table_name(name) not in run(["nft", "list", "tables"]).stdout
    vm.detach(name, port["tap"])
    assert link(port["tap"]) is None and link(bridge) is None
