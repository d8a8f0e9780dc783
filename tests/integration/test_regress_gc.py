"""`cni-bridge gc` deletes only host links it has proven to be its own and orphaned (issue 14
item 6), on the real kernel: one bridge shared by two CNI networks and a Docker network (its
endpoints made through the driver's Flask app, no dockerd).

- claims come from every known owner, whatever networks the command names: `gc --apply NET1`
  leaves NET2's container and the Docker endpoint on the shared bridge alone;
- a port that gets claimed after the snapshot (a Docker endpoint made meanwhile, a lease an ADD
  wrote meanwhile) is kept: each candidate is re-verified right before it is deleted.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.attachment import Attachment
from cni_bridge.cli import build_parser
from cni_bridge.commands import gc
from cni_bridge.docker.app import create_app
from cni_bridge.docker.network import ENDPOINT_IFNAME
from cni_bridge.ipam.config import parse_ipam_config
from cni_bridge.ipam.store import LeaseStore
from tests.support.cnitool import CniTool
from tests.support.dockerd import VENV_BIN, driver_settings
from tests.support.host import run
from tests.support.netns import Netns
from tests.support.session import unique_name
from tests.support.subnets import unique_subnet


@dataclass
class Shared:
    """Two CNI networks and a Docker network on one bridge, each with one attachment."""
    tmp: Path
    cni: CniTool
    bridge: str
    confs: list[dict[str, Any]]
    netns: list[Netns]
    docker: Any                   # Flask test client of the driver
    state_dir: Path
    nid: str
    endpoints: list[str]

    def sources(self) -> list[str]:
        return ["--conf-dir", str(self.tmp / "net.d"), "--data-dir", str(self.cni.data_dir),
                "--state-dir", str(self.state_dir), "--cni-cache-dir", str(self.cni.cache_dir), "--grace", "0"]

    def docker_call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        payload = json.loads(self.docker.post(f"/{method}", data=json.dumps(body)).get_data(as_text=True))
        assert "Err" not in payload, payload
        return payload

    def docker_endpoint(self) -> str:
        """A Docker endpoint on the shared bridge (as CreateEndpoint makes it); its host veth."""
        eid = unique_name("eid") + "e" * 20
        subnet = ipaddress.ip_network(self.docker_subnet)
        self.endpoints.append(eid)
        self.docker_call("NetworkDriver.CreateEndpoint", {
            "NetworkID": self.nid, "EndpointID": eid, "Options": {},
            "Interface": {"Address": f"{subnet.network_address + 1 + len(self.endpoints)}/{subnet.prefixlen}"}})
        return Attachment(eid, ENDPOINT_IFNAME, None).host_ifname

    docker_subnet: str = ""


def veth_of(cid: str) -> str:
    return Attachment(cid, "eth0", None).host_ifname


def master_of(name: str) -> str | None:
    proc = run(["ip", "-j", "link", "show", "dev", name], check=False)
    return json.loads(proc.stdout)[0].get("master") if proc.returncode == 0 else None


def orphan_port(bridge: str, cid: str) -> str:
    """A pybridge-named host veth on the bridge that nothing claims (its peer stays on the host)."""
    name = veth_of(cid)
    run(["ip", "link", "add", name, "type", "veth", "peer", "name", unique_name("op")])
    run(["ip", "link", "set", name, "master", bridge])
    return name


@pytest.fixture
def shared(tmp_path: Path, cni: CniTool, netns: Any) -> Iterator[Shared]:
    bridge = unique_name("br")
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    confs = []
    for _ in range(2):
        conf = {"cniVersion": "1.0.0", "name": unique_name("net"),
                "plugins": [{"type": "pybridge", "bridge": bridge, "isGateway": True, "ipMasq": True,
                             "ipam": {"type": "pybridge-ipam", "dataDir": str(cni.data_dir),
                                      "ranges": [[{"subnet": str(unique_subnet(4, 24))}]]}}]}
        (conf_dir / f"50-{conf['name']}.conflist").write_text(json.dumps(conf))
        confs.append(conf)
    settings = driver_settings(tmp_path)
    s = Shared(tmp_path, cni, bridge, confs, [], create_app(settings).test_client(), settings.state_dir,
               unique_name("nid") + "6" * 20, [])
    try:
        for conf in confs:
            ns = netns()
            cni.add(conf, ns.path, container_id=unique_name("ctr"))
            s.netns.append(ns)
        subnet = unique_subnet(4, 24)
        s.docker_subnet = str(subnet)
        s.docker_call("NetworkDriver.CreateNetwork", {
            "NetworkID": s.nid, "Options": {"com.docker.network.generic": {"bridge": bridge}},
            "IPv4Data": [{"AddressSpace": "pybridge-local", "Pool": str(subnet),
                          "Gateway": f"{subnet.network_address + 1}/24"}]})
        yield s
    finally:
        for eid in s.endpoints:
            s.docker.post("/NetworkDriver.DeleteEndpoint", data=json.dumps({"NetworkID": s.nid, "EndpointID": eid}))
        s.docker.post("/NetworkDriver.DeleteNetwork", data=json.dumps({"NetworkID": s.nid}))
        cni.cleanup()
        run(["ip", "link", "del", bridge], check=False)


def cached_veths(s: Shared) -> list[str]:
    """Host veths of the two CNI attachments (one per network)."""
    return [veth_of(e.container_id) for conf in s.confs for e in s.cni.cached_attachments(conf["name"])]


def gc_in_process(s: Shared, *argv: str) -> int:
    """`cni-bridge gc` in this process, so a test can step in between its phases."""
    args = build_parser().parse_args(["gc", *s.sources(), *argv])
    return args.func(args)


def test_gc_of_one_network_leaves_other_owners_on_a_shared_bridge_alone(shared: Shared) -> None:
    net1 = shared.confs[0]["name"]
    docker_port = shared.docker_endpoint()
    cni_ports = cached_veths(shared)
    junk = orphan_port(shared.bridge, unique_name("ctr"))
    cli = [str(VENV_BIN / "cni-bridge"), "gc", *shared.sources(), net1]
    dry = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 1, dry.stdout + dry.stderr
    assert junk in dry.stdout
    for port in [*cni_ports, docker_port]:
        assert port not in dry.stdout, dry.stdout
    applied = subprocess.run([*cli, "--apply"], capture_output=True, text=True, timeout=120)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert master_of(junk) is None
    for port in [*cni_ports, docker_port]:
        assert master_of(port) == shared.bridge, f"gc {net1} deleted {port}, which another owner claims"


def test_gc_keeps_an_endpoint_made_after_its_snapshot(shared: Shared, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    made: list[str] = []
    real = gc.collect

    def snapshot_then_endpoint(args: Any) -> Any:
        inventory = real(args)
        made.append(shared.docker_endpoint())  # dockerd starts a container while gc runs
        return inventory
    monkeypatch.setattr(gc, "collect", snapshot_then_endpoint)
    assert gc_in_process(shared, "--apply") == 0, capsys.readouterr().out
    assert made and master_of(made[0]) == shared.bridge, "gc deleted an endpoint made after its snapshot"


def test_gc_re_verifies_each_port_right_before_deleting_it(shared: Shared, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A port judged orphaned whose owner shows up before the removal (an ADD of that container
    has just leased its address) is kept; a port still unclaimed then is removed."""
    net1 = shared.confs[0]
    cid = unique_name("ctr")
    claimed_meanwhile, orphan = orphan_port(shared.bridge, cid), orphan_port(shared.bridge, unique_name("ctr"))
    real = gc.findings

    def judge_then_claim(inventory: Any) -> Any:
        found = real(inventory)
        assert any(claimed_meanwhile in f.what for f in found), [f.what for f in found]
        ipam = net1["plugins"][0]["ipam"]
        LeaseStore(Path(ipam["dataDir"]), net1["name"]).allocate(cid, "eth0", parse_ipam_config(ipam))
        return found
    monkeypatch.setattr(gc, "findings", judge_then_claim)
    gc_in_process(shared, "--apply")
    out = capsys.readouterr().out
    assert master_of(claimed_meanwhile) == shared.bridge, out
    assert master_of(orphan) is None, out
    LeaseStore(Path(net1["plugins"][0]["ipam"]["dataDir"]), net1["name"]).release(cid, "eth0")
    run(["ip", "link", "del", claimed_meanwhile], check=False)
