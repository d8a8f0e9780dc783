"""`pybridge-ipam` as an executable, exec'd directly with nothing but env + stdin (as any CNI main
plugin execs it). As the IPAM of the Go `bridge` plugin on the real kernel:
tests/integration/ipam/test_exec.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cnitool import CniTool
from tests.support.ipam_config import NETWORK


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
