"""Restart survival and the Docker crash point (issue #8), without a container runtime.

- The Docker driver killed at the contract level (HTTP on the socket, no dockerd) after every
  step of RequestAddress / CreateEndpoint / Join: after a restart and what libnetwork sends after
  a failed call, the driver's namespace is exactly as before.
- A reboot simulation for CNI (runtime state such as links, nft tables, namespaces and /run gone;
  the lease store under /var/lib kept).
The same with a real dockerd (killed at Join, SIGKILL under load, reboot): tests/runtime/test_restart.py.

What libnetwork sends after a failed call (moby 20.10, libnetwork network.go / endpoint.go):
RequestAddress failed -> nothing (it never learnt the address); CreateEndpoint failed ->
ReleaseAddress only (no DeleteEndpoint); Join failed -> DeleteEndpoint, then ReleaseAddress.
Its plugin client retries a request whose connection broke, but with an empty body (the
request buffer was already read), so a retried call can only fail.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from cni_bridge import firewall
from cni_bridge.crashpoint import ENV as CRASH_ENV
from cni_bridge.ipam.store import LeaseStore
from tests.support import dockerd as docker_support
from tests.support import hostsnap
from tests.support.cli import cli, cli_sources
from tests.support.cnitool import CniTool, bridge_conflist
from tests.support.dockerd import plugin_call
from tests.support.hostsnap import LEASE_HINTS
from tests.support.netns import Netns
from tests.support.session import register_data_dir, unique_name
from tests.support.subnets import unique_subnet

GATEWAY_OPTS = {"RequestAddressType": "com.docker.network.gateway"}


# --- a driver process on a private socket inside a namespace --------------------------------------
def private_driver(ns: Netns, root: Path, crash_after: str | None = None, *,
                   trace: bool = False) -> docker_support.DriverProcess:
    """`cni-bridge serve` in its own network namespace on a private socket (no dockerd): what
    it does to links, addresses, nft and iptables stays in that namespace, so a snapshot of the
    namespace is a complete before/after comparison."""
    env = {CRASH_ENV: crash_after} if crash_after else {}
    if trace:
        env["PYBRIDGE_CRASH_TRACE"] = "1"
    drv = docker_support.DriverProcess(docker_support.DockerEngine("", root, ns), root, "10.213.0.0/16",
                                       socket=root / "pybridge.sock", env=env)
    drv.start()
    return drv


class Contract:
    """Talks to a private driver like libnetwork does; `restart()` is a SIGKILL and a start."""

    def __init__(self, ns: Netns, root: Path) -> None:
        self.ns, self.root = ns, root
        self.drv: docker_support.DriverProcess | None = None

    def restart(self, crash_after: str | None = None, *, trace: bool = False) -> None:
        if self.drv is not None:
            self.drv.kill()
        self.drv = private_driver(self.ns, self.root, crash_after, trace=trace)

    def call(self, method: str, body: Any = None) -> tuple[int, Any] | None:
        """(status, answer), or None when the connection broke (the worker died)."""
        try:
            return plugin_call(self.drv.socket, method, body, timeout=30)
        except (ConnectionError, http.client.RemoteDisconnected):
            return None

    def ok(self, method: str, body: Any = None) -> dict[str, Any]:
        reply = self.call(method, body)
        assert reply is not None and reply[0] == 200, (method, reply, self.drv.log_tail())
        return reply[1]

    def stderr(self) -> str:
        return (self.root / "driver.stderr").read_text(errors="replace")

    def snapshot(self) -> hostsnap.HostSnapshot:
        return hostsnap.snapshot([self.drv.state_dir, self.drv.ipam_dir], netns=self.ns.name)


@pytest.fixture
def served(netns: Any, tmp_path: Path) -> Iterator[Contract]:
    (tmp_path / "leases").mkdir()
    register_data_dir(tmp_path / "leases")
    contract = Contract(netns(), tmp_path)
    try:
        yield contract
    finally:
        if contract.drv is not None:
            contract.drv.kill()


@dataclass
class ContractNet:
    """A pybridge network made through the contract, as dockerd makes it."""
    nid: str
    pool_id: str
    subnet: ipaddress.IPv4Network
    bridge: str
    gateway: str


def create_contract_network(drv: Contract) -> ContractNet:
    subnet = unique_subnet(4)
    nid = unique_name("nid").ljust(64, "0")
    bridge = unique_name("br")
    pool_id = drv.ok("IpamDriver.RequestPool", {"AddressSpace": "pybridge-local", "Pool": str(subnet),
                                                 "Options": {}, "V6": False})["PoolID"]
    gateway = drv.ok("IpamDriver.RequestAddress", {"PoolID": pool_id, "Options": GATEWAY_OPTS})["Address"]
    drv.ok("NetworkDriver.CreateNetwork", {
        "NetworkID": nid, "Options": {"com.docker.network.generic": {"bridge": bridge},
                                      "com.docker.network.enable_ipv6": False},
        "IPv4Data": [{"AddressSpace": "pybridge-local", "Pool": str(subnet), "Gateway": gateway,
                      "AuxAddresses": {}}], "IPv6Data": []})
    return ContractNet(nid, pool_id, subnet, bridge, gateway)


def remove_contract_network(drv: Contract, net: ContractNet) -> None:
    drv.ok("NetworkDriver.DeleteNetwork", {"NetworkID": net.nid})
    drv.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": net.gateway.split("/")[0]})
    drv.ok("IpamDriver.ReleasePool", {"PoolID": net.pool_id})


@dataclass
class Attempt:
    """One container start as libnetwork drives it: which call the crash interrupted."""
    failed_at: str | None = None     # "RequestAddress", "CreateEndpoint", "Join" or None
    address: str | None = None
    eid: str = ""


def start_endpoint(drv: Contract, net: ContractNet) -> Attempt:
    """RequestAddress, CreateEndpoint, Join -- stopping at the first call that gets no answer."""
    attempt = Attempt(eid=unique_name("eid").ljust(64, "e"))
    reply = drv.call("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Options": {}})
    if reply is None:
        attempt.failed_at = "RequestAddress"
        return attempt
    assert reply[0] == 200, reply
    attempt.address = reply[1]["Address"]
    calls = [("CreateEndpoint", {"NetworkID": net.nid, "EndpointID": attempt.eid,
                                 "Interface": {"Address": attempt.address}, "Options": {}}),
             ("Join", {"NetworkID": net.nid, "EndpointID": attempt.eid, "SandboxKey": "/var/run/docker/netns/x",
                       "Options": {}})]
    for method, body in calls:
        reply = drv.call(f"NetworkDriver.{method}", body)
        if reply is None:
            attempt.failed_at = method
            return attempt
        assert reply[0] == 200, reply
    return attempt


def libnetwork_cleanup(drv: Contract, net: ContractNet, attempt: Attempt) -> None:
    """What dockerd sends after the failed call (see the module docstring)."""
    if attempt.failed_at == "Join":
        drv.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": net.nid, "EndpointID": attempt.eid})
    if attempt.failed_at in ("CreateEndpoint", "Join"):
        drv.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": attempt.address.split("/")[0]})


# Every step a container start reaches in the driver, in order (checked by
# test_contract_crash_steps_are_all_covered, so a new step() cannot go untested).
START_STEPS = ["ipam-owner-file", "ipam-lease-file", "ipam-hints",          # RequestAddress
               "docker-endpoint-recorded", "bridge", "bridge-mac-pinned",   # CreateEndpoint
               "gateway-address", "ip-forward-sysctl", "veth-pair", "masquerade",
               "docker-endpoint-ready",
               "docker-join-received"]                                      # Join


def _reached_steps(stderr: str) -> list[str]:
    return [line.split()[-1] for line in stderr.splitlines() if line.startswith("pybridge crashpoint trace:")]


def test_contract_crash_steps_are_all_covered(served: Contract) -> None:
    served.restart()
    net = create_contract_network(served)
    served.restart(trace=True)
    attempt = start_endpoint(served, net)
    assert attempt.failed_at is None
    assert _reached_steps(served.stderr()) == START_STEPS
    stop_endpoint(served, net, attempt)
    remove_contract_network(served, net)


def stop_endpoint(drv: Contract, net: ContractNet, attempt: Attempt) -> None:
    """A container stops: Leave, DeleteEndpoint, ReleaseAddress."""
    drv.ok("NetworkDriver.Leave", {"NetworkID": net.nid, "EndpointID": attempt.eid})
    drv.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": net.nid, "EndpointID": attempt.eid})
    drv.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": attempt.address.split("/")[0]})


@pytest.mark.parametrize("after", ["restart", "respawn"])
@pytest.mark.parametrize("step", START_STEPS)
def test_contract_crash_at_every_start_step(served: Contract, step: str, after: str) -> None:
    """Kill the worker right after `step` of a container start; then either the whole driver is
    SIGKILLed and started again (start-up recovery runs) or gunicorn just replaced the worker
    (no recovery). libnetwork's clean-up for the failed call must leave the namespace, the
    driver's state and the lease store exactly as before; a following start works; removing
    everything leaves an empty state and store."""
    served.restart()
    net = create_contract_network(served)
    before = served.snapshot()
    served.restart(crash_after=step)
    attempt = start_endpoint(served, net)
    assert served.stderr().rstrip().endswith(f" {step}"), served.drv.log_tail()
    assert attempt.failed_at is not None
    if after == "restart":
        served.restart()
    libnetwork_cleanup(served, net, attempt)
    changed = hostsnap.diff(before, served.snapshot(), ignore=[LEASE_HINTS])
    if attempt.failed_at == "RequestAddress":
        # Known limit: dockerd never learnt the address, so it never releases it; the lease (or
        # a bare owner file) of a `docker-<random>` owner stays until the pool's last
        # ReleasePool (`docker network rm`), checked below. Nothing else may differ.
        orphan = f"files: + {served.drv.ipam_dir}/docker-"
        assert changed and all(line.startswith(orphan) and "docker-gw-" not in line for line in changed), changed
    else:
        assert changed == [], "\n".join(changed)

    served.restart()
    again = start_endpoint(served, net)  # the next container start works
    assert again.failed_at is None
    assert served.ns.ip("link", "show", "master", net.bridge).count("master") == 1
    stop_endpoint(served, net, again)
    assert hostsnap.diff(before, served.snapshot(), ignore=[LEASE_HINTS]) == changed
    remove_contract_network(served, net)
    assert not any(served.drv.ipam_dir.iterdir())
    assert [p for p in served.drv.state_dir.rglob("*.json")] == []


# --- reboot simulation, CNI --------------------------------------------------------------------------
@pytest.mark.parametrize("reconcile", ["cni-bridge-gc", "cni-gc"])
def test_cni_reboot_simulation(cni: CniTool, netns: Any, tmp_path: Path, reconcile: str) -> None:
    """Three containers attached; then a reboot: their namespaces (with the veths), the bridge,
    the nft table and FORWARD rules, and PYBRIDGE_RUN_DIR (tmpfs /run: lock files) are gone;
    the lease store (dataDir under /var/lib) and libcni's cache (/var/lib/cni) are kept. The
    runtime re-creates one pod with the same container id and a new namespace, and reconciles
    the others with `cni-bridge gc` or a CNI GC (spec 1.1, valid-attachments): their leases are
    released, the re-created one keeps its address, nothing is duplicated."""
    run_dir = tmp_path / "run"   # stands in for /run/cni-bridge (the host's is shared)
    cni.extra_env.update(PYBRIDGE_RUN_DIR=str(run_dir), PYBRIDGE_FASTPATH_SOCKET="off")
    subnet = unique_subnet(4)
    gateway = str(subnet.network_address + 1)
    conf = bridge_conflist(unique_name("net"), bridge=unique_name("br"), subnets=str(subnet), data_dir=cni.data_dir,
                           plugin_type="pybridge", ipam_type="pybridge-ipam", cni_version="1.1.0",
                           is_default_gateway=True, ip_masq=True)
    name, bridge = conf["name"], conf["plugins"][0]["bridge"]
    (tmp_path / "net.d").mkdir()
    (tmp_path / "net.d" / f"50-{name}.conflist").write_text(json.dumps(conf))
    cli_env = {"PYBRIDGE_RUN_DIR": str(run_dir)}
    store = LeaseStore(cni.data_dir, name)
    try:
        pods = {unique_name("ctr"): netns() for _ in range(3)}
        before = {cid: cni.add(conf, ns.path, container_id=cid).result["ips"][0]["address"].split("/")[0]
                  for cid, ns in pods.items()}
        first, *others = pods
        assert pods[first].ping(before[others[0]]) and pods[first].ping(gateway)

        for ns in pods.values():          # the reboot
            ns.delete()
        firewall.delete_table(name, bridge)
        subprocess.run(["ip", "link", "del", bridge], check=True)
        shutil.rmtree(run_dir)
        assert sorted(lease.container_id for lease in store.all_leases()) == sorted(pods)

        pods[first] = netns()             # the runtime re-creates one pod
        again = cni.add(conf, pods[first].path, container_id=first).result["ips"][0]["address"].split("/")[0]
        assert again == before[first]     # its lease survived the reboot: same address
        assert pods[first].ping(gateway)  # bridge, gateway address, routes re-created

        if reconcile == "cni-bridge-gc":
            proc = cli("gc", *cli_sources(cni, tmp_path), "--grace", "0", "--apply", name, env=cli_env)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert proc.stdout.count("removed: ") == len(others), proc.stdout
        else:
            cni.gc(conf, valid_attachments=[(first, "eth0")])
        assert [lease.container_id for lease in store.all_leases()] == [first]
        newcomer = unique_name("ctr")
        pods[newcomer] = netns()
        address = cni.add(conf, pods[newcomer].path, container_id=newcomer).result["ips"][0]["address"].split("/")[0]
        assert address != again and pods[newcomer].ping(again) and pods[newcomer].ping(gateway)
        assert sorted(map(str, firewall.members(name))) == sorted([again, address])
        assert cli("status", *cli_sources(cni, tmp_path), name, env=cli_env).returncode == 0
        dry = cli("gc", *cli_sources(cni, tmp_path), "--grace", "0", name, env=cli_env)
        assert dry.returncode == 0 and "nothing stale" in dry.stdout, dry.stdout

        for cid in (first, newcomer):
            cni.delete(conf, pods[cid].path, container_id=cid)
        assert store.all_leases() == [] and not firewall.table_exists(name)
    finally:
        for cid, entry in [(e.container_id, e) for e in cni.cached_attachments(name)]:
            cni.delete(conf, "", container_id=cid, ifname=entry.ifname, raise_on_error=False)
        firewall.delete_table(name, bridge)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
