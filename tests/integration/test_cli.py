"""Issue 9: `cni-bridge status` and `gc` on the real kernel, and the plugin's operation log line.

The parts that need no kernel (help, usage errors, `ipam ls|release`, the CLI's log file) are in
tests/unit/test_cli.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cni_bridge import firewall
from cni_bridge.attachment import Attachment
from cni_bridge.ipam.config import parse_ipam_config
from cni_bridge.ipam.store import LeaseStore
from tests.support.cli import cli, cli_sources
from tests.support.cnitool import CniTool
from tests.support.session import unique_name
from tests.support.subnets import unique_subnet


# --- status / gc on the real kernel ------------------------------------------------------------
def _network(cni: CniTool, conf_dir: Path, *, masq: bool = True) -> dict[str, Any]:
    conf = {"cniVersion": "1.0.0", "name": unique_name("net"),
            "plugins": [{"type": "pybridge", "bridge": unique_name("br"), "isGateway": True,
                         "isDefaultGateway": True, "ipMasq": masq,
                         "ipam": {"type": "pybridge-ipam", "dataDir": str(cni.data_dir),
                                  "ranges": [[{"subnet": str(unique_subnet(4, 24))}]]}}]}
    conf_dir.mkdir(exist_ok=True)
    (conf_dir / f"50-{conf['name']}.conflist").write_text(json.dumps(conf))
    return conf


@pytest.fixture
def kernel_net(cni: CniTool, tmp_path: Path):
    """A pybridge network whose config lives in a private conf dir; the bridge is removed after."""
    conf = _network(cni, tmp_path / "net.d")
    yield conf
    bridge = conf["plugins"][0]["bridge"]
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    firewall.delete_table(conf["name"], bridge)


def test_status_shows_the_tree(cni: CniTool, netns, kernel_net, tmp_path: Path) -> None:
    ns1, ns2 = netns(), netns()
    cid1, cid2 = unique_name("ctr"), unique_name("ctr")
    r1 = cni.add(kernel_net, ns1.path, container_id=cid1).result
    cni.add(kernel_net, ns2.path, container_id=cid2)
    name, bridge = kernel_net["name"], kernel_net["plugins"][0]["bridge"]

    proc = cli("status", *cli_sources(cni, tmp_path), name, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    inv = json.loads(proc.stdout)
    [net] = inv["networks"]
    assert net["name"] == name and net["mode"] == "bridge" and net["bridge"] == bridge
    assert net["bridge_present"] and net["bridge_up"] and net["table_present"]
    assert len(net["masquerade"]) == 2
    eps = {ep["container_id"]: ep for ep in net["endpoints"]}
    assert set(eps) == {cid1, cid2}
    ep = eps[cid1]
    assert ep["state"] == "attached" and ep["host_master"] == bridge
    assert ep["host_ifname"] == Attachment(cid1, "eth0", None).host_ifname
    container = ep["container"]
    assert container["present"] and container["ifname"] == "eth0"
    assert os.path.samefile(container["netns"], ns1.path)
    assert container["addresses"] == [r1["ips"][0]["address"]]
    mac = next(i["mac"] for i in r1["interfaces"] if i.get("sandbox"))
    assert container["mac"] == mac
    assert ep["masquerade"] == [r1["ips"][0]["address"].split("/")[0]]

    text = cli("status", *cli_sources(cni, tmp_path), name)
    assert text.returncode == 0
    assert f"network {name}" in text.stdout and f"bridge {bridge} [up]" in text.stdout
    assert cid1[:12] in text.stdout and mac in text.stdout
    for cid, ns in ((cid1, ns1), (cid2, ns2)):
        cni.delete(kernel_net, ns.path, container_id=cid)


def test_gc_reclaims_what_a_vanished_container_left(cni: CniTool, netns, kernel_net, tmp_path: Path) -> None:
    keep_ns, lost_ns = netns(), netns()
    keep, lost = unique_name("ctr"), unique_name("ctr")
    name, bridge = kernel_net["name"], kernel_net["plugins"][0]["bridge"]
    cni.add(kernel_net, keep_ns.path, container_id=keep)
    lost_ip = cni.add(kernel_net, lost_ns.path, container_id=lost).result["ips"][0]["address"].split("/")[0]
    lost_ns.delete()          # the container died and nobody sent DEL (ctr run -d, a crash)
    store = LeaseStore(cni.data_dir, name)
    assert {lease.container_id for lease in store.all_leases()} == {keep, lost}

    # Junk of two more kinds: an unclaimed pybridge veth on the bridge and an orphan nft element.
    junk = Attachment(unique_name("ctr"), "eth0", None).host_ifname
    subprocess.run(["ip", "link", "add", junk, "type", "veth", "peer", "name", unique_name("jp")], check=True)
    try:
        subprocess.run(["ip", "link", "set", junk, "master", bridge], check=True)
        orphan = Attachment(unique_name("ctr"), "eth0", None).host_ifname
        import ipaddress
        firewall.add_members(firewall.Masquerade(name, bridge, (ipaddress.ip_network("10.0.0.0/8"),)),
                             [ipaddress.ip_address("10.255.255.254")], orphan)

        dry = cli("gc", *cli_sources(cni, tmp_path), "--grace", "0", name)
        assert dry.returncode == 1, dry.stdout + dry.stderr
        assert f"would remove: network {name}: lease {lost_ip} of {lost}" in dry.stdout
        assert f"owner {orphan}" in dry.stdout and f"host link {junk} on {bridge}" in dry.stdout
        assert keep not in dry.stdout
        assert len(store.all_leases()) == 2 and lost_ip in map(str, firewall.members(name))  # dry run

        assert cli("status", *cli_sources(cni, tmp_path), "--grace", "0", name).returncode == 1  # stale shown

        applied = cli("gc", *cli_sources(cni, tmp_path), "--grace", "0", "--apply", name)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert applied.stdout.count("removed:") == 3
        assert [lease.container_id for lease in store.all_leases()] == [keep]
        members = {str(a): owner for a, owner in firewall.members(name).items()}
        assert list(members.values()) == [Attachment(keep, "eth0", None).host_ifname]
        assert subprocess.run(["ip", "link", "show", junk], capture_output=True).returncode != 0

        again = cli("gc", *cli_sources(cni, tmp_path), "--grace", "0", name)
        assert again.returncode == 0 and "nothing stale" in again.stdout
        assert cli("status", *cli_sources(cni, tmp_path), name).returncode == 0
    finally:
        subprocess.run(["ip", "link", "del", junk], capture_output=True)
    cni.delete(kernel_net, "", container_id=lost)     # the runtime's late DEL: idempotent, no error
    cni.delete(kernel_net, keep_ns.path, container_id=keep)
    assert not firewall.table_exists(name)


def test_gc_grace_protects_young_leases(cni: CniTool, netns, kernel_net, tmp_path: Path) -> None:
    ns = netns()
    cid = unique_name("ctr")
    cni.add(kernel_net, ns.path, container_id=cid)
    ns.delete()
    young = cli("gc", *cli_sources(cni, tmp_path), kernel_net["name"])   # default grace 60 s
    assert young.returncode == 0 and "nothing stale" in young.stdout
    cni.delete(kernel_net, "", container_id=cid)   # DEL without netns cleans up
    assert LeaseStore(cni.data_dir, kernel_net["name"]).all_leases() == []


def test_plugin_operation_log_line(cni: CniTool, netns, kernel_net, tmp_path: Path) -> None:
    log = tmp_path / "pybridge.log"
    cni.extra_env["PYBRIDGE_LOG_FILE"] = str(log)
    ns = netns()
    cid = unique_name("ctr")
    add = cni.add(kernel_net, ns.path, container_id=cid)
    cni.delete(kernel_net, ns.path, container_id=cid)
    lines = log.read_text().splitlines()
    assert len(lines) == 2, lines
    for line, command in zip(lines, ("ADD", "DEL")):
        assert f"pybridge {command} net={kernel_net['name']} id={cid[:12]} if=eth0 " in line
        assert line.rstrip().endswith(" ok") and "ms " in line
    assert f"pybridge ADD net={kernel_net['name']}" in add.calls[0].stderr


def test_gc_leaves_foreign_and_docker_leases_alone(tmp_path: Path) -> None:
    """A Go `bridge` network using pybridge-ipam names its veths itself, and Docker IPAM leases
    belong to dockerd: neither may be judged stale from a missing pybridge veth."""
    data = tmp_path / "leases"
    name = unique_name("net")
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    ipam = {"type": "pybridge-ipam", "dataDir": str(data), "ranges": [[{"subnet": str(unique_subnet(4, 24))}]]}
    (conf_dir / "10-go.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": name, "plugins": [{"type": "bridge", "bridge": unique_name("br"), "ipam": ipam}]}))
    store = LeaseStore(data, name)
    cfg = parse_ipam_config(ipam)
    store.allocate(unique_name("ctr"), "eth0", cfg)
    store.allocate("docker-" + "ab" * 16, "docker", cfg)
    args = ["--conf-dir", str(conf_dir), "--data-dir", str(data), "--cni-cache-dir", str(tmp_path / "cache"),
            "--state-dir", str(tmp_path / "state"), "--grace", "0", name]
    inv = json.loads(cli("status", "--json", *args).stdout)
    [net] = inv["networks"]
    assert net["plugin"] == "bridge"
    assert sorted(ep["state"] for ep in net["endpoints"]) == ["docker", "unknown"]
    proc = cli("gc", "--apply", *args)
    assert proc.returncode == 0 and "nothing stale" in proc.stdout
    assert len(store.all_leases()) == 2
