"""pybridge under containerd's `ctr run --cni` (go-cni + libcni), with a private containerd.

What containerd does that podman does not: after the task is gone it sends DEL with
CNI_NETNS="" (host-side state — the lease, the masquerade element — must still be released),
and `ctr run -d` never sends DEL at all, which is what CNI GC (spec 1.1) is for.
"""

from __future__ import annotations

import copy
import importlib.util
import ipaddress
import json
import re
import subprocess
import sysconfig
from pathlib import Path

import pytest

from tests.support.cnitool import CniTool
from tests.support.containerd import LIBCNI_DIR, CtrNet
from tests.support.podman import IMAGE
from tests.support.runtime_checks import bridge_ports, nft_table_text
from tests.support.session import unique_name

pytestmark = [pytest.mark.containerd, pytest.mark.timeout(300)]


def assert_released(cn: CtrNet) -> None:
    net = cn.net
    assert net.state_files() == [], "leases left behind"
    assert bridge_ports(net.bridge) == [], "host veths left on the bridge"
    assert nft_table_text(net.name) == "", "masquerade entries left behind"
    assert list((LIBCNI_DIR / "results").glob(f"{net.name}-*")) == [], "libcni cache entries left"


def test_run_rm_and_del_without_netns(ctr_net: CtrNet) -> None:
    net = ctr_net.net
    name = unique_name("c")
    script = ("ip -o -4 addr show dev eth0; ip -4 route; "
              f"ping -c 1 -W 2 {net.gateway} >/dev/null && echo GATEWAY-OK")
    out = ctr_net.run("--rm", "--cni", IMAGE, name, "sh", "-c", script)
    m = re.search(r"inet (\S+)", out)
    assert m, out
    assert ipaddress.ip_interface(m.group(1)).network == net.subnet
    assert f"default via {net.gateway} dev eth0" in out
    assert "GATEWAY-OK" in out, out
    calls = [c for c in ctr_net.inst.calls() if c["id"] == ctr_net.cid(name)]
    assert [c["command"] for c in calls] == ["ADD", "DEL"], calls
    assert calls[0]["netns"].startswith("/proc/") and calls[0]["ifname"] == "eth0"
    assert calls[1]["netns"] == "", "ctr sends DEL after the task is gone, without a netns"
    assert_released(ctr_net)  # ... and still everything host-side was released


def test_detached_containers_are_reclaimed_by_gc(ctr_net: CtrNet, tmp_path: Path) -> None:
    """`ctr run -d` never sends DEL: plugin GC (spec 1.1, valid-attachments) and libcni-style GC
    (DEL of cached attachments that are not valid) release what the dead task held."""
    net = ctr_net.net
    a, b = unique_name("c"), unique_name("c")
    for name in (a, b):
        ctr_net.run("-d", "--cni", IMAGE, name, "sleep", "300")
    ip_a, ip_b = ctr_net.ipv4(a), ctr_net.ipv4(b)
    ctr_net.exec(a, "ping", "-c", "1", "-W", "2", ip_b)
    ctr_net.exec(b, "ping", "-c", "1", "-W", "2", net.gateway)
    assert len(net.leases()) == 2 and ip_a in nft_table_text(net.name) and ip_b in nft_table_text(net.name)

    ctr_net.ctrd.remove_container(b)  # the task dies; its netns and veth pair go with it
    assert [c["command"] for c in ctr_net.inst.calls() if c["id"] == ctr_net.cid(b)] == ["ADD"]
    assert len(net.leases()) == 2 and ip_b in nft_table_text(net.name), "nothing released without DEL"

    # 1) the plugins' own GC, as a 1.1 runtime sends it: B is not a valid attachment any more
    gc_conf = copy.deepcopy(net.conflist)
    gc_conf["cniVersion"] = "1.1.0"
    run = CniTool(tmp_path / "private-cache").gc(gc_conf, [(ctr_net.cid(a), "eth0")], delete_stale=False)
    assert [c.command for c in run.calls] == ["GC"]
    assert [p.name for p in net.leases()] == [ip_a]
    table = nft_table_text(net.name)
    assert ip_a in table and ip_b not in table
    ctr_net.exec(a, "ping", "-c", "1", "-W", "2", net.gateway)  # the valid one is untouched

    # 2) libcni's GC over containerd's own cache: DEL for every cached attachment not valid
    ctr_net.ctrd.remove_container(a)
    tool = CniTool(LIBCNI_DIR)
    cached = {e.container_id for e in tool.cached_attachments(net.name)}
    assert cached == {ctr_net.cid(a), ctr_net.cid(b)}
    tool.gc(net.conflist, [])
    assert_released(ctr_net)


def test_cni_bridge_gc_reclaims_detached(ctr_net: CtrNet, tmp_path: Path) -> None:
    """`cni-bridge gc` (the operator's tool) on a network whose container died without DEL:
    a dry run reports it, --apply releases its lease and masquerade entry, the live one stays."""
    if importlib.util.find_spec("cni_bridge.commands.gc") is None:
        pytest.skip("cni-bridge gc is not implemented yet")
    net = ctr_net.net
    a, b = unique_name("c"), unique_name("c")
    for name in (a, b):
        ctr_net.run("-d", "--cni", IMAGE, name, "sleep", "300")
    ip_a, ip_b = ctr_net.ipv4(a), ctr_net.ipv4(b)
    ctr_net.ctrd.remove_container(b)
    conf_dir = tmp_path / "gc-conf"
    conf_dir.mkdir()
    (conf_dir / f"{net.name}.conflist").write_text(json.dumps(net.conflist))
    argv = [str(Path(sysconfig.get_path("scripts")) / "cni-bridge"), "gc", "--conf-dir", str(conf_dir),
            "--data-dir", str(net.data_dir), "--cni-cache-dir", str(LIBCNI_DIR), "--grace", "0", net.name]
    dry = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 1, dry.stdout + dry.stderr
    assert ip_b in dry.stdout and ip_a not in dry.stdout, dry.stdout
    assert len(net.leases()) == 2, "a dry run changes nothing"
    applied = subprocess.run(argv + ["--apply"], capture_output=True, text=True, timeout=60)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert [p.name for p in net.leases()] == [ip_a]
    table = nft_table_text(net.name)
    assert ip_a in table and ip_b not in table
    ctr_net.exec(a, "ping", "-c", "1", "-W", "2", net.gateway)
