"""`pybridge-ipam` as an executable: exec'd directly, and as the IPAM of the Go `bridge` plugin.

Why: any CNI main plugin may exec us with nothing but env + stdin; the Go reference `bridge`
(from containernetworking-plugins) is the strictest real client of that contract we can run here.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import netns as tn
from tests.support.cnitool import CniTool, bridge_conflist

from .conftest import NETWORK

GO_BRIDGE = Path("/usr/lib/cni/bridge")


@pytest.fixture
def tool(tmp_path: Path) -> CniTool:
    cni = CniTool(tmp_path / "cache", timeout=30)
    if cni.find_plugin("pybridge-ipam") is None:
        pytest.fail("pybridge-ipam is not installed in the venv: run `.venv/bin/pip install -e .`")
    return cni


def _conf(data_dir: Path, version: str = "1.1.0", **ipam: object) -> dict:
    return {"cniVersion": version, "name": NETWORK,
            "ipam": {"type": "pybridge-ipam", "dataDir": str(data_dir),
                     "ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]], **ipam}}


def test_exec_add_check_del_gc_status(tool: CniTool, data_dir: Path) -> None:
    conf = _conf(data_dir)
    common = dict(container_id="c1", netns="/var/run/netns/none", ifname="eth0")
    added = tool.exec_plugin("pybridge-ipam", "ADD", conf, **common, args="IgnoreUnknown=1;IP=10.1.0.9").output
    assert [x["address"] for x in added["ips"]] == ["10.1.0.9/24", "fd00:1::2/64"]
    assert added["cniVersion"] == "1.1.0"
    tool.exec_plugin("pybridge-ipam", "CHECK", conf, **common)
    tool.exec_plugin("pybridge-ipam", "DEL", conf, **common)
    tool.exec_plugin("pybridge-ipam", "DEL", conf, **common)  # twice is fine
    failed = tool.exec_plugin("pybridge-ipam", "CHECK", conf, **common, raise_on_error=False)
    assert failed.exit_code != 0 and failed.output["code"] == 3
    tool.exec_plugin("pybridge-ipam", "ADD", conf, **common)
    tool.exec_plugin("pybridge-ipam", "GC", conf)  # no valid-attachments key: keeps everything
    assert (data_dir / NETWORK / "owner.c1+eth0").exists()
    tool.exec_plugin("pybridge-ipam", "GC", {**conf, "cni.dev/valid-attachments": []})
    assert not (data_dir / NETWORK / "owner.c1+eth0").exists()
    tool.exec_plugin("pybridge-ipam", "STATUS", conf)


def test_exec_errors_are_cni_error_objects(tool: CniTool, data_dir: Path) -> None:
    bad = tool.exec_plugin("pybridge-ipam", "ADD", _conf(data_dir), container_id="../evil",
                           netns="/x", ifname="eth0", raise_on_error=False)
    assert bad.output["code"] == 4 and "container id" in bad.output["msg"]
    full = _conf(data_dir, ranges=[[{"subnet": "10.1.0.0/30"}]])  # .2 is the only address
    tool.exec_plugin("pybridge-ipam", "ADD", full, container_id="a", netns="/x", ifname="eth0")
    exhausted = tool.exec_plugin("pybridge-ipam", "ADD", full, container_id="b", netns="/x",
                                 ifname="eth0", raise_on_error=False)
    assert exhausted.output["code"] == 11 and "no free address" in exhausted.output["msg"]


needs_root_and_go = pytest.mark.skipif(
    not (tn.is_root() and GO_BRIDGE.exists()),
    reason="needs root and containernetworking-plugins (/usr/lib/cni/bridge)")


@needs_root_and_go
def test_go_bridge_uses_pybridge_ipam(tool: CniTool, tmp_path: Path) -> None:
    data_dir = tn.register_data_dir(tmp_path / "leases")
    subnet = tn.unique_subnet(4, 28)
    bridge = tn.unique_name("br")
    conf = bridge_conflist(tn.unique_name("net"), bridge=bridge, subnets=[str(subnet)],
                           data_dir=data_dir, ipam_type="pybridge-ipam", cni_version="1.0.0")
    conf["plugins"][0]["path"] = str(GO_BRIDGE)  # documentation only; CNI_PATH decides
    namespaces = [tn.create_netns() for _ in range(2)]
    try:
        results = [tool.add(conf, ns.path, container_id=f"ctr{i}").result for i, ns in enumerate(namespaces)]
        addresses = [r["ips"][0]["address"] for r in results]
        assert addresses == [f"{subnet[2]}/28", f"{subnet[3]}/28"]
        assert [c.plugin for c in tool.history] == ["bridge", "bridge"]  # bridge exec'd pybridge-ipam itself
        for ns, address in zip(namespaces, addresses):
            assert address in ns.addresses("eth0")
        assert namespaces[0].ping(subnet[3])  # the two containers reach each other over the bridge
        leases = sorted(p.name for p in (data_dir / conf["name"]).iterdir() if p.name[0].isdigit())
        assert leases == [str(subnet[2]), str(subnet[3])]
        lease = json.loads((data_dir / conf["name"] / str(subnet[2])).read_text())
        assert lease["container_id"] == "ctr0" and lease["ifname"] == "eth0"
        tool.check(conf, namespaces[0].path, container_id="ctr0")
        for i, ns in enumerate(namespaces):
            tool.delete(conf, ns.path, container_id=f"ctr{i}")
        assert tn.lease_files(data_dir) == []
    finally:
        tool.cleanup()
        for ns in namespaces:
            ns.delete()
        subprocess.run(["ip", "link", "delete", bridge], capture_output=True, check=False)
    assert not os.path.exists(f"/sys/class/net/{bridge}")
