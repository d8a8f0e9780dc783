"""Issue 9: every bridge-mode example config under plugin-spec/examples/ really works: ADD / CHECK /
DEL through the CNI driver in a test namespace (that every example parses: tests/unit/test_examples.py).

Written generically: a new example file is picked up without touching this test. Names, bridges,
subnets, dataDir and uplink NICs are rewritten to this pytest run's unique ones, so the real cni0,
eth0/eth1 or the example's subnets are never touched.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cni_bridge import firewall
from tests.support.cnitool import CniTool
from tests.support.examples import FILES, plugins_of
from tests.support.session import unique_name
from tests.support.subnets import unique_subnet


def _rewrite(doc: dict[str, Any], data_dir: Path, uplink: str | None) -> dict[str, Any]:
    """Same example, this pytest run's names: network, bridge, subnets (per family), dataDir, uplink."""
    doc = copy.deepcopy(doc)
    doc["name"] = unique_name("net")
    main = next(p for p in plugins_of(doc) if p["type"] == "pybridge")
    main["bridge"] = unique_name("br")
    if "uplink" in main:
        main["uplink"] = uplink
    ipam = main["ipam"]
    ranges = []
    for range_set in ipam.get("ranges", []):
        version = ipaddress.ip_network(range_set[0]["subnet"], strict=False).version
        ranges.append([{"subnet": str(unique_subnet(version, 24 if version == 4 else 64))}])
    ipam["ranges"] = ranges
    ipam["dataDir"] = str(data_dir)
    return doc


def _bridge_examples() -> list[Path]:
    out = []
    for path in FILES:
        try:
            doc = json.loads(path.read_text())
            main = next((p for p in plugins_of(doc) if p.get("type") == "pybridge"), None)
        except (ValueError, AttributeError, TypeError):  # tests/unit/test_examples.py reports it
            continue
        if main is not None and main.get("mode", "bridge") == "bridge":
            out.append(path)
    return out


@pytest.mark.parametrize("path", _bridge_examples(), ids=lambda p: p.name)
def test_bridge_example_add_check_del(path: Path, cni: CniTool, netns, uplink_factory) -> None:
    doc = json.loads(path.read_text())
    main = next(p for p in plugins_of(doc) if p["type"] == "pybridge")
    if main.get("vlanId") is not None:
        pytest.skip("a vlan uplink needs 802.1q, which this kernel lacks (covered by tests/guest/kernel in the VM)")
    for plugin in plugins_of(doc):
        if plugin["type"] != "pybridge" and cni.find_plugin(plugin["type"]) is None:
            pytest.skip(f"chained plugin {plugin['type']} not installed (containernetworking-plugins)")
    up = uplink_factory(host_addr=False, ipv6=False) if "uplink" in main else None
    conf = _rewrite(doc, cni.data_dir, up.host_if if up else None)
    bridge = next(p for p in plugins_of(conf) if p["type"] == "pybridge")["bridge"]
    ns = netns()
    cid = unique_name("ctr")
    try:
        result = cni.add(conf, ns.path, container_id=cid).result
        addresses = ns.addresses("eth0")
        for ip in result["ips"]:
            assert ip["address"] in addresses
        gateways = [ip.get("gateway") for ip in result["ips"] if ip.get("gateway")]
        if main.get("isGateway") or main.get("isDefaultGateway"):
            for gw in gateways:
                assert ns.ping(gw), f"gateway {gw} unreachable"
        cni.check(conf, ns.path, container_id=cid)
        cni.delete(conf, ns.path, container_id=cid)
        assert "eth0" not in ns.link_names()
        assert not firewall.table_exists(conf["name"])
    finally:
        cni.cleanup()
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        if shutil.which("nft"):
            firewall.delete_table(conf["name"], bridge)
