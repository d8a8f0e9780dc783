"""Regressions of the Docker driver on the real kernel (issue 14 items 7 and 11), through the
plugin's Flask app (as libnetwork calls it) and `cni-bridge serve`; no dockerd needed.

7.  DeleteNetwork of a Docker network whose bridge a CNI network still uses keeps the bridge's
    uplink (the NIC stays enslaved), so the CNI containers keep their segment.
11. A full disk after the kernel work of CreateNetwork / CreateEndpoint rolls that work back
    (the driver's state dir on a tiny tmpfs that the test fills: a real ENOSPC); a state file
    that is not a usable record is skipped and reported by `serve` and `cni-bridge status`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.attachment import Attachment
from cni_bridge.docker.app import create_app
from cni_bridge.docker.context import Settings
from cni_bridge.docker.network import ENDPOINT_IFNAME
from cni_bridge.docker.options import default_bridge
from cni_bridge.firewall import members, table_name
from tests.support.cnitool import CniTool
from tests.support.dockerd import VENV_BIN, driver_settings
from tests.support.host import run
from tests.support.netns import Netns
from tests.support.session import unique_name
from tests.support.subnets import unique_subnet
from tests.support.topology import Uplink

GENERIC = "com.docker.network.generic"


class Plugin:
    """libnetwork's side of the remote driver protocol, through Flask's test client."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = create_app(settings).test_client()

    def call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        return json.loads(self.client.post(f"/{method}", data=json.dumps(body)).get_data(as_text=True))

    def ok(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        payload = self.call(method, body)
        assert "Err" not in payload, payload
        return payload


def network_body(nid: str, subnet: ipaddress.IPv4Network, generic: dict[str, str]) -> dict[str, Any]:
    return {"NetworkID": nid, "Options": {GENERIC: generic, "com.docker.network.enable_ipv6": False},
            "IPv4Data": [{"AddressSpace": "pybridge-local", "Pool": str(subnet),
                          "Gateway": f"{subnet.network_address + 1}/{subnet.prefixlen}", "AuxAddresses": {}}],
            "IPv6Data": []}


def link(name: str) -> dict[str, Any] | None:
    proc = run(["ip", "-j", "link", "show", "dev", name], check=False)
    return json.loads(proc.stdout)[0] if proc.returncode == 0 else None


def addresses(name: str) -> list[str]:
    out = json.loads(run(["ip", "-j", "addr", "show", "dev", name]).stdout)
    return [f"{a['local']}/{a['prefixlen']}" for a in out[0]["addr_info"] if a["family"] == "inet"]


def forward_rules(nid: str) -> str:
    ruleset = run(["nft", "list", "ruleset"]).stdout
    return "\n".join(line for line in ruleset.splitlines() if f"pybridge:{nid}" in line)


@pytest.fixture
def bridges(request: pytest.FixtureRequest) -> Callable[[], str]:
    """Names for bridges, each deleted at test end (pybridge leaves some on purpose)."""
    def make() -> str:
        name = unique_name("br")
        request.addfinalizer(lambda: run(["ip", "link", "del", name], check=False))
        return name
    return make


# --- item 7: the uplink stays while the bridge stays --------------------------------------------
def test_delete_network_keeps_the_uplink_of_a_bridge_still_in_use(
        tmp_path: Path, cni: CniTool, uplink_factory: Callable[..., Uplink], netns: Callable[..., Netns],
        bridges: Callable[[], str]) -> None:
    """A Docker network and a CNI network share one flat bridge and its uplink NIC. Removing
    the Docker network must leave the CNI container on the NIC's segment."""
    nic = uplink_factory(host_addr=False)
    bridge = bridges()
    plugin = Plugin(driver_settings(tmp_path))
    nid = unique_name("nid") + "7" * 20
    plugin.ok("NetworkDriver.CreateNetwork", network_body(nid, nic.subnet, {"bridge": bridge, "uplink": nic.host_if,
                                                                             "ipMasq": "false"}))
    assert link(nic.host_if)["master"] == bridge
    conf = {"cniVersion": "1.0.0", "name": unique_name("net"),
            "plugins": [{"type": "pybridge", "bridge": bridge, "uplink": nic.host_if, "isGateway": False,
                         "ipMasq": False, "ipam": {"type": "pybridge-ipam", "dataDir": str(cni.data_dir), "ranges": [[{
                             "subnet": str(nic.subnet), "rangeStart": str(nic.subnet.network_address + 10)}]]}}]}
    ns = netns()
    cni.add(conf, ns.path)
    assert ns.ping(nic.outside_ip)
    try:
        plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": nid})
        assert link(bridge) is not None, "the bridge carries the CNI container: it stays"
        assert link(nic.host_if).get("master") == bridge, "the uplink left a bridge that is still in use"
        assert ns.ping(nic.outside_ip), "the CNI container lost its segment"
        assert not forward_rules(nid), "the Docker network's own rules go with it"
    finally:
        cni.delete(conf, ns.path)
        plugin.call("NetworkDriver.DeleteNetwork", {"NetworkID": nid})


def test_delete_network_releases_only_an_uplink_it_attached(
        tmp_path: Path, uplink_factory: Callable[..., Uplink], bridges: Callable[[], str]) -> None:
    """An operator's bridge whose NIC the operator enslaved: a Docker network on it (`-o
    bridge=... -o uplink=...`) found the port there, so DeleteNetwork leaves it; a NIC the
    network enslaved itself is released (and a bridge it made is deleted)."""
    plugin = Plugin(driver_settings(tmp_path))
    nic, own_nic = uplink_factory(host_addr=False), uplink_factory(host_addr=False)
    operator_bridge, own_bridge = bridges(), bridges()
    run(["ip", "link", "add", operator_bridge, "type", "bridge"])
    run(["ip", "link", "set", nic.host_if, "master", operator_bridge])
    found, made = unique_name("nid") + "8" * 20, unique_name("nid") + "9" * 20
    plugin.ok("NetworkDriver.CreateNetwork", network_body(found, nic.subnet, {"bridge": operator_bridge,
                                                                               "uplink": nic.host_if}))
    plugin.ok("NetworkDriver.CreateNetwork", network_body(made, own_nic.subnet, {"bridge": own_bridge,
                                                                                  "uplink": own_nic.host_if}))
    plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": found})
    assert link(nic.host_if).get("master") == operator_bridge
    assert addresses(operator_bridge) == [], "the gateway address the network added goes with it"
    plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": made})
    assert link(own_bridge) is None and link(own_nic.host_if).get("master") is None


# --- item 11: disk full and bad records ----------------------------------------------------------
@pytest.fixture
def tiny_state(tmp_path: Path) -> Iterator[Path]:
    """The driver's state directory on a 64 KiB tmpfs of its own, unmounted at the end."""
    mount = tmp_path / "state"
    mount.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", unique_name("tmpfs"), str(mount)])
    try:
        yield mount
    finally:
        run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path, leave_pages: int = 1) -> Path:
    """Fill the file system of `directory` until `leave_pages` pages are free: the next record
    written (one page) still fits, the one after it does not."""
    st = os.statvfs(directory)
    filler = directory / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * ((st.f_bavail - leave_pages) * st.f_bsize))
    assert os.statvfs(directory).f_bavail == leave_pages
    return filler


def test_disk_full_after_create_network_rolls_back(tmp_path: Path, tiny_state: Path,
                                                    bridges: Callable[[], str]) -> None:
    settings = Settings(state_dir=tiny_state, ipam_data_dir=driver_settings(tmp_path).ipam_data_dir)
    plugin = Plugin(settings)
    subnet, bridge, nid = unique_subnet(4), bridges(), unique_name("nid") + "a" * 20
    body = network_body(nid, subnet, {"bridge": bridge})
    filler = fill(tiny_state)
    err = plugin.call("NetworkDriver.CreateNetwork", body)["Err"]
    assert "No space left on device" in err
    assert link(bridge) is None, "the bridge made before the failed write is still there"
    assert not forward_rules(nid) and table_name(nid) not in run(["nft", "list", "tables"]).stdout
    assert os.listdir(tiny_state / "networks") == [], "a 'creating' record blocks re-creating the network"
    filler.unlink()
    try:
        plugin.ok("NetworkDriver.CreateNetwork", body)  # the same subnet and bridge again
        assert addresses(bridge) == [f"{subnet.network_address + 1}/{subnet.prefixlen}"]
    finally:
        plugin.call("NetworkDriver.DeleteNetwork", {"NetworkID": nid})
    assert link(bridge) is None


def test_disk_full_after_create_endpoint_rolls_back(tmp_path: Path, tiny_state: Path,
                                                     bridges: Callable[[], str]) -> None:
    settings = Settings(state_dir=tiny_state, ipam_data_dir=driver_settings(tmp_path).ipam_data_dir)
    plugin = Plugin(settings)
    subnet, bridge = unique_subnet(4), bridges()
    nid, eid = unique_name("nid") + "b" * 20, unique_name("eid") + "c" * 20
    plugin.ok("NetworkDriver.CreateNetwork", network_body(nid, subnet, {"bridge": bridge}))
    host_if = Attachment(eid, ENDPOINT_IFNAME, None).host_ifname
    endpoint = {"NetworkID": nid, "EndpointID": eid, "Options": {},
                "Interface": {"Address": f"{subnet.network_address + 2}/{subnet.prefixlen}"}}
    try:
        filler = fill(tiny_state)
        assert "No space left on device" in plugin.call("NetworkDriver.CreateEndpoint", endpoint)["Err"]
        assert link(host_if) is None, "the veth pair made before the failed write is still there"
        assert ipaddress.ip_address(subnet.network_address + 2) not in members(nid)
        assert os.listdir(tiny_state / "endpoints") == []
        filler.unlink()
        plugin.ok("NetworkDriver.CreateEndpoint", endpoint)
        assert link(host_if)["master"] == bridge
        plugin.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})
    finally:
        plugin.call("NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})
        plugin.call("NetworkDriver.DeleteNetwork", {"NetworkID": nid})


def test_endpoint_address_outside_the_network_is_refused(tmp_path: Path, bridges: Callable[[], str]) -> None:
    """An address in no pool of the network (seen from a fuzzed CreateEndpoint: 224.0.0.1/32)
    is refused with an error, and the network's firewall table learns no foreign subnet; an
    address of the pool written with another prefix length takes the pool's."""
    plugin = Plugin(driver_settings(tmp_path))
    subnet, bridge = unique_subnet(4), bridges()
    nid = unique_name("nid") + "d" * 20
    eids = [unique_name("eid") + c * 20 for c in "ef"]
    plugin.ok("NetworkDriver.CreateNetwork", network_body(nid, subnet, {"bridge": bridge}))
    try:
        inside = {"NetworkID": nid, "EndpointID": eids[0], "Options": {},
                  "Interface": {"Address": f"{subnet.network_address + 2}/8"}}
        plugin.ok("NetworkDriver.CreateEndpoint", inside)
        table_before = run(["nft", "list", "table", "inet", table_name(nid)]).stdout
        assert "nets4" in table_before and str(subnet) in table_before
        for address in ("224.0.0.1/32", "127.0.0.1/8", f"{subnet.broadcast_address + 1}/{subnet.prefixlen}"):
            outside = {"NetworkID": nid, "EndpointID": eids[1], "Options": {}, "Interface": {"Address": address}}
            err = plugin.call("NetworkDriver.CreateEndpoint", outside)["Err"]
            assert "is not in a subnet of network" in err, err
            assert link(Attachment(eids[1], ENDPOINT_IFNAME, None).host_ifname) is None
        assert run(["nft", "list", "table", "inet", table_name(nid)]).stdout == table_before
    finally:
        for eid in eids:
            plugin.call("NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})
        plugin.call("NetworkDriver.DeleteNetwork", {"NetworkID": nid})


def test_serve_starts_past_bad_records_and_status_reports_them(served_driver: Any, tmp_path: Path) -> None:
    """Unusable files in every kind of record: `serve` starts anyway (and still recovers a
    half-created network next to them), logs each; `cni-bridge status` lists each."""
    sock, settings, procs, start = served_driver
    state = settings.state_dir
    for kind in ("networks", "endpoints", "pools", "locks"):
        (state / kind).mkdir(parents=True, exist_ok=True)
    bad = {
        state / "networks" / "emptyobject.json": "{}",
        state / "networks" / "noconfig.json": json.dumps({"id": "noconfig", "status": "creating"}),
        state / "networks" / "badmode.json": json.dumps({"id": "badmode", "status": "creating", "ipv4": [],
                                                          "ipv6": [], "config": {"name": "badmode", "mode": "warp"}}),
        state / "endpoints" / "notjson.json": "{truncated",
        state / "pools" / "list.json": "[1, 2]",
    }
    for path, text in bad.items():
        path.write_text(text)
    (state / "endpoints" / "adirectory.json").mkdir()
    half = unique_name("nid") + "d" * 20
    half_bridge = default_bridge(half)  # a bridge the half-created network made: recovery deletes it
    (state / "networks" / f"{half}.json").write_text(json.dumps(
        {"id": half, "status": "creating", "ipv4": [], "ipv6": [],
         "config": {"name": half, "bridge": half_bridge, "isGateway": True}}))
    run(["ip", "link", "add", half_bridge, "type", "bridge"])
    try:
        start(workers=1, threads=1)
    finally:
        run(["ip", "link", "del", half_bridge], check=False)
    log = (tmp_path / "serve.log").read_text()
    for path in [*bad, state / "endpoints" / "adirectory.json"]:
        if path.name != "badmode.json":  # a usable record whose config fails: recovery says so
            assert f"skipped unusable state file {path}" in log, log
    assert "could not remove half-created network badmode" in log
    assert f"removed half-created network {half[:12]}" in log and link(half_bridge) is None

    status = subprocess.run([str(VENV_BIN / "cni-bridge"), "status", "--state-dir", str(state),
                             "--conf-dir", str(tmp_path / "none"), "--data-dir", str(tmp_path / "none"),
                             "--cni-cache-dir", str(tmp_path / "none")], capture_output=True, text=True, timeout=60)
    assert status.returncode == 1, status.stdout + status.stderr
    for path in [*bad, state / "endpoints" / "adirectory.json"]:
        if path.name != "badmode.json":
            assert str(path) in status.stdout, status.stdout
