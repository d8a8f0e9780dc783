"""`pybridge-ipam` as the IPAM of the Go `bridge` plugin, on the real kernel.

Why: any CNI main plugin may exec us with nothing but env + stdin; the Go reference `bridge`
(from containernetworking-plugins) is the strictest real client of that contract we can run here.
Exec'd directly, without a kernel: tests/unit/ipam/test_exec.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.cnitool import CniTool, bridge_conflist
from tests.support.forwarding import forward_allowance
from tests.support.leaks import lease_files
from tests.support.netns import create_netns
from tests.support.session import register_data_dir, unique_name
from tests.support.subnets import unique_subnet

GO_BRIDGE = Path("/usr/lib/cni/bridge")


@pytest.mark.skipif(not GO_BRIDGE.exists(), reason="needs containernetworking-plugins (/usr/lib/cni/bridge)")
def test_go_bridge_uses_pybridge_ipam(tmp_path: Path) -> None:
    tool = CniTool(tmp_path / "cache", timeout=30)
    data_dir = register_data_dir(tmp_path / "leases")
    subnet = unique_subnet(4, 28)
    bridge = unique_name("br")
    conf = bridge_conflist(unique_name("net"), bridge=bridge, subnets=[str(subnet)],
                           data_dir=data_dir, ipam_type="pybridge-ipam", cni_version="1.0.0")
    conf["plugins"][0]["path"] = str(GO_BRIDGE)  # documentation only; CNI_PATH decides
    namespaces = [create_netns() for _ in range(2)]
    with forward_allowance(bridge):  # a Docker host drops forwarding by default; the Go bridge adds no accept
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
            assert lease_files(data_dir) == []
        finally:
            tool.cleanup()
            for ns in namespaces:
                ns.delete()
            subprocess.run(["ip", "link", "delete", bridge], capture_output=True, check=False)
    assert not os.path.exists(f"/sys/class/net/{bridge}")
