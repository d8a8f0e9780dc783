"""Issue 2: the `pybridge` CNI plugin in bridge mode, end to end on the real kernel."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from cni_bridge import firewall
from cni_bridge.attachment import Attachment
from tests.support.cnitool import CniTool
from tests.support.session import unique_name
from tests.support.subnets import unique_subnet

pytestmark = pytest.mark.usefixtures("netns")


def bridge_conf(cni: CniTool, *, version: str = "1.0.0", subnet: Any = None, masq: bool = True,
                **extra: Any) -> dict[str, Any]:
    """A one-plugin conflist with unique network and bridge names and an in-process IPAM."""
    subnet = subnet or unique_subnet(4, 24)
    plugin = {"type": "pybridge", "bridge": unique_name("br"), "isGateway": True,
              "isDefaultGateway": True, "ipMasq": masq,
              "ipam": {"type": "pybridge-ipam", "ranges": [[{"subnet": str(subnet)}]],
                       "dataDir": str(cni.data_dir)}}
    plugin.update(extra)
    return {"cniVersion": version, "name": unique_name("net"), "plugins": [plugin]}


@pytest.fixture
def bridges() -> Any:
    """Bridges are per network, not per container, so DEL leaves them: the test removes them."""
    made: list[str] = []
    yield made
    for name in made:
        subprocess.run(["ip", "link", "del", name], capture_output=True)


def link_exists(name: str, netns: str | None = None) -> bool:
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["link", "show", name]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def lease_files(data_dir: Path, network: str) -> list[str]:
    d = data_dir / network
    if not d.exists():
        return []
    return sorted(p.name for p in d.iterdir() if p.name[0].isdigit() or ":" in p.name)


def exec_raw(cni: CniTool, command: str, config: dict[str, Any], **kw: Any):
    return cni.exec_plugin("pybridge", command, config, raise_on_error=False, **kw)


def test_two_containers_ping_each_other_and_gateway(cni, netns, bridges):
    conf = bridge_conf(cni)
    bridges.append(conf["plugins"][0]["bridge"])
    a, b = netns(), netns()
    ra = cni.add(conf, a.path).result
    rb = cni.add(conf, b.path).result
    ip_a = ipaddress.ip_interface(ra["ips"][0]["address"])
    ip_b = ipaddress.ip_interface(rb["ips"][0]["address"])
    gw = ra["ips"][0]["gateway"]
    # result: bridge, host veth, container interface with MAC and sandbox
    names = [i["name"] for i in ra["interfaces"]]
    assert names[0] == conf["plugins"][0]["bridge"] and names[2] == "eth0"
    assert ra["interfaces"][2]["sandbox"] == a.path and ra["interfaces"][2]["mac"]
    assert ra["ips"][0]["interface"] == 2
    assert {"dst": "0.0.0.0/0", "gw": gw} in ra["routes"]
    # kernel state a user would look at
    assert str(ip_a) in a.addresses("eth0")
    assert f"default via {gw} dev eth0" in a.ip("route")
    assert open("/proc/sys/net/ipv4/ip_forward").read().strip() == "1"
    assert a.ping(ip_b.ip) and b.ping(ip_a.ip) and a.ping(gw)
    # lease files and masquerade set membership
    net = conf["name"]
    assert lease_files(cni.data_dir, net) == sorted([str(ip_a.ip), str(ip_b.ip)])
    assert set(firewall.members(net)) == {ip_a.ip, ip_b.ip}
    host_veth = ra["interfaces"][1]["name"]
    cni.delete(conf, a.path)
    assert not link_exists(host_veth)
    assert set(firewall.members(net)) == {ip_b.ip}
    cni.delete(conf, b.path)
    assert lease_files(cni.data_dir, net) == []
    assert not firewall.table_exists(net), "the masquerade table goes with the last container"


def test_masquerade_to_outside_namespace(cni, netns, uplink, bridges, tmp_path):
    """The outside namespace has no route back to the container subnet: the TCP connection only
    works if the host rewrote the source, and the server records which source it saw."""
    conf = bridge_conf(cni)
    bridges.append(conf["plugins"][0]["bridge"])
    c = netns()
    result = cni.add(conf, c.path).result
    seen = tmp_path / "peer.txt"
    server = uplink.outside.popen(sys.executable, "-c", (
        "import socket,sys\n"
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('{uplink.outside_ip}', 8099)); s.listen(1); s.settimeout(20)\n"
        "conn, peer = s.accept()\n"
        f"open('{seen}', 'w').write(peer[0]); conn.sendall(b'ok'); conn.close()\n"))
    try:
        client = c.run(sys.executable, "-c", (
            "import socket,time\n"
            "for i in range(50):\n"
            "    try:\n"
            f"        s=socket.create_connection(('{uplink.outside_ip}', 8099), timeout=2); break\n"
            "    except OSError: time.sleep(0.1)\n"
            "print(s.recv(2).decode())\n"), check=False, timeout=30)
        assert client.stdout.strip() == "ok", client.stderr
        server.wait(timeout=10)
    finally:
        server.kill()
    container_ip = result["ips"][0]["address"].split("/")[0]
    assert seen.read_text() == str(uplink.host_ip), f"outside saw {seen.read_text()}, container is {container_ip}"
    ruleset = subprocess.run(["nft", "list", "table", "inet", firewall.table_name(conf["name"])],
                             capture_output=True, text=True).stdout
    assert "masquerade" in ruleset and container_ip in ruleset
    cni.delete(conf, c.path)


def test_rule_count_does_not_grow_with_containers(cni, netns, bridges):
    conf = bridge_conf(cni)
    bridges.append(conf["plugins"][0]["bridge"])
    table = firewall.table_name(conf["name"])

    def rules() -> int:
        out = subprocess.run(["nft", "list", "table", "inet", table], capture_output=True, text=True).stdout
        return sum(1 for line in out.splitlines() if "masquerade" in line)

    spaces = [netns() for _ in range(4)]
    counts = []
    for ns in spaces:
        cni.add(conf, ns.path)
        counts.append(rules())
    assert counts == [2, 2, 2, 2]  # one constant rule per family, whatever the subnets and members
    assert len(firewall.members(conf["name"])) == 4
    for ns in spaces:
        cni.delete(conf, ns.path)


# What an operator (or another program) may break behind the plugin's back, and what CHECK says.
TAMPERING = {
    "address-flushed": (lambda c, conf: c.ip("addr", "flush", "dev", "eth0"), "missing"),
    "masquerade-table-deleted": (lambda c, conf: firewall.delete_table(conf["name"], None), "masquerade"),
}


@pytest.mark.parametrize("tampering", list(TAMPERING))
def test_check_passes_then_fails_after_tampering(cni, netns, bridges, tampering):
    conf = bridge_conf(cni)
    bridges.append(conf["plugins"][0]["bridge"])
    c = netns()
    cni.add(conf, c.path)
    assert cni.check(conf, c.path).ok
    tamper, said = TAMPERING[tampering]
    tamper(c, conf)
    run = cni.check(conf, c.path, raise_on_error=False)
    assert not run.ok
    err = run.error.error
    assert err["code"] != 0 and said in err["msg"], err
    cni.delete(conf, c.path)


def test_del_twice_and_after_netns_is_gone(cni, netns, bridges):
    conf = bridge_conf(cni)
    bridges.append(conf["plugins"][0]["bridge"])
    a, b = netns(), netns()
    ra = cni.add(conf, a.path).result
    rb = cni.add(conf, b.path).result
    cid_a, cid_b = cni.default_container_id(a.path), cni.default_container_id(b.path)
    cni.delete(conf, a.path)
    assert cni.delete(conf, a.path, container_id=cid_a).ok  # second DEL: still success
    # b: the namespace disappears first (container already gone), then DEL with and without it
    b.delete()
    assert cni.delete(conf, b.path, container_id=cid_b).ok
    assert cni.delete(conf, "", container_id=cid_b).ok
    for r in (ra, rb):
        assert not link_exists(r["interfaces"][1]["name"])
    assert lease_files(cni.data_dir, conf["name"]) == []
    assert not firewall.table_exists(conf["name"])


def test_del_with_empty_netns_releases_everything(cni, netns, bridges):
    """containerd sends DEL with CNI_NETNS="" after the task is gone."""
    conf = bridge_conf(cni)
    bridges.append(conf["plugins"][0]["bridge"])
    c = netns()
    r = cni.add(conf, c.path).result
    cid = cni.default_container_id(c.path)
    assert cni.delete(conf, "", container_id=cid).ok
    assert not link_exists(r["interfaces"][1]["name"])
    assert lease_files(cni.data_dir, conf["name"]) == []
    assert not firewall.table_exists(conf["name"])


def test_exhausted_range_leaves_nothing_behind(cni, netns, bridges):
    subnet = unique_subnet(4, 29)  # .1 gateway, .2-.6 usable: five containers
    conf = bridge_conf(cni, subnet=subnet)
    bridges.append(conf["plugins"][0]["bridge"])
    spaces = [netns() for _ in range(6)]
    for ns in spaces[:5]:
        cni.add(conf, ns.path)
    prefix = conf["name"][:7]  # this pytest run's prefix: links of concurrent runs change meanwhile

    def our_links() -> list[str]:
        out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        return [line.split(":")[1].strip() for line in out.splitlines()
                if prefix in line or "veth" in line.split(":")[1]]

    hosts = {Attachment(cni.default_container_id(ns.path), "eth0", None).host_ifname for ns in spaces}
    before_links = [n for n in our_links() if n.split("@")[0] in hosts or prefix in n]
    run = cni.add(conf, spaces[5].path, raise_on_error=False)
    assert not run.ok
    assert "no free" in run.error.error["msg"].lower() or "exhaust" in run.error.error["msg"].lower()
    assert spaces[5].link_names() == ["lo"]
    assert len(lease_files(cni.data_dir, conf["name"])) == 5
    assert len(firewall.members(conf["name"])) == 5
    after_links = [n for n in our_links() if n.split("@")[0] in hosts or prefix in n]
    assert sorted(after_links) == sorted(before_links)
    for ns in spaces[:5]:
        cni.delete(conf, ns.path)


def test_failure_after_ipam_releases_the_address(cni, netns, bridges):
    """The container already has an eth0: ADD fails after IPAM and must undo everything."""
    conf = bridge_conf(cni)
    bridges.append(conf["plugins"][0]["bridge"])
    c = netns()
    c.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    run = cni.add(conf, c.path, raise_on_error=False)
    assert not run.ok and "already has an interface" in run.error.error["msg"]
    assert lease_files(cni.data_dir, conf["name"]) == []
    assert not firewall.table_exists(conf["name"])
    host_veth = Attachment(cni.default_container_id(c.path), "eth0", None).host_ifname
    assert not link_exists(host_veth)


def test_bad_config_is_error_7_and_creates_nothing(cni, netns):
    conf = bridge_conf(cni)
    c = netns()
    bad = dict(conf["plugins"][0], name=conf["name"], cniVersion="1.0.0", mtu="big")
    call = exec_raw(cni, "ADD", bad, container_id="c1", netns=c.path, ifname="eth0")
    assert call.exit_code != 0 and call.output["code"] == 7 and "mtu" in call.output["msg"]
    assert not link_exists(conf["plugins"][0]["bridge"])
    assert lease_files(cni.data_dir, conf["name"]) == []


@pytest.mark.parametrize("env,stdin,code", [
    ({"CNI_COMMAND": "BOGUS"}, b"{}", 4),
    ({"CNI_COMMAND": "ADD", "CNI_IFNAME": "eth0", "CNI_NETNS": "/run/netns/x"}, b"{}", 4),  # no container id
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "../../etc", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"}, b"{}", 4),
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_IFNAME": "a/b", "CNI_NETNS": "/x"}, b"{}", 4),
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x",
      "CNI_ARGS": "FOO=1"}, b"{}", 4),
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"}, b"{not json", 6),
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"},
     b'{"cniVersion": "0.2.0", "name": "n", "type": "pybridge"}', 1),
    ({"CNI_COMMAND": "CHECK", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"},
     b'{"cniVersion": "0.3.1", "name": "n", "type": "pybridge"}', 1),
    ({"CNI_COMMAND": "GC"}, b'{"cniVersion": "1.0.0", "name": "n", "type": "pybridge"}', 1),
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"},
     b'{"cniVersion": "1.0.0", "name": "n/../x", "type": "pybridge"}', 7),
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"},
     b'{"cniVersion": "1.0.0", "name": "n", "type": "pybridge", "bridge": "this-name-is-too-long"}', 7),
])
def test_errors_are_spec_objects(env, stdin, code):
    exe = Path(sys.executable).parent / "pybridge"
    proc = subprocess.run([str(exe)], input=stdin, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True)
    assert proc.returncode != 0
    obj = json.loads(proc.stdout)
    assert obj["code"] == code, obj
    assert set(obj) == {"cniVersion", "code", "msg", "details"} and obj["msg"]
    assert b"Traceback" not in proc.stdout


def test_version_output():
    exe = Path(sys.executable).parent / "pybridge"
    proc = subprocess.run([str(exe)], input=b'{"cniVersion": "0.4.0"}', env={"CNI_COMMAND": "VERSION"},
                          capture_output=True)
    assert proc.returncode == 0
    obj = json.loads(proc.stdout)
    assert obj == {"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_result_follows_config_version(cni, netns, bridges, version):
    conf = bridge_conf(cni, version=version, masq=False)
    bridges.append(conf["plugins"][0]["bridge"])
    c = netns()
    r = cni.add(conf, c.path).result
    assert r["cniVersion"] == version
    if version < "1.0.0":
        assert r["ips"][0]["version"] == "4"
    else:
        assert "version" not in r["ips"][0]
    cni.delete(conf, c.path)


def test_del_and_check_print_nothing_on_success(cni, netns, bridges):
    conf = bridge_conf(cni)
    bridges.append(conf["plugins"][0]["bridge"])
    c = netns()
    cni.add(conf, c.path)
    check = cni.check(conf, c.path)
    delete = cni.delete(conf, c.path)
    assert check.calls[0].stdout == "" and delete.calls[0].stdout == ""


def test_dual_stack_and_ipv6_forwarding(cni, netns, bridges):
    v4, v6 = unique_subnet(4), unique_subnet(6)
    conf = bridge_conf(cni)
    conf["plugins"][0]["ipam"]["ranges"] = [[{"subnet": str(v4)}], [{"subnet": str(v6)}]]
    bridges.append(conf["plugins"][0]["bridge"])
    a, b = netns(), netns()
    ra = cni.add(conf, a.path).result
    rb = cni.add(conf, b.path).result
    b6 = next(ipaddress.ip_interface(i["address"]).ip for i in rb["ips"] if ":" in i["address"])
    assert a.ping(b6)
    assert {"dst": "::/0", "gw": str(v6.network_address + 1)} in ra["routes"]
    assert open("/proc/sys/net/ipv6/conf/all/forwarding").read().strip() == "1"
    assert any(a.version == 6 for a in firewall.members(conf["name"]))
    cni.delete(conf, a.path)
    cni.delete(conf, b.path)


@pytest.mark.parametrize("allow", [False, True])
def test_ipv4_only_interface_gets_no_ipv6_address(cni, netns, bridges, allow):
    """A container interface given IPv4 only gets no IPv6 address at all (address generation
    "none": no link-local, hence no DAD/MLD/router solicitations flooded over the bridge), unless
    allowIPv6OnIPv4Interface keeps the kernel default. A dual-stack interface keeps its link-local."""
    conf = bridge_conf(cni, allowIPv6OnIPv4Interface=allow)
    bridges.append(conf["plugins"][0]["bridge"])
    a = netns()
    result = cni.add(conf, a.path).result
    addresses = a.ip("-6", "addr", "show", "dev", "eth0")
    mode = a.ip("-d", "link", "show", "dev", "eth0")
    if allow:
        assert "inet6 fe80::" in addresses and "addrgenmode none" not in mode
    else:
        assert addresses.strip() == "" and "addrgenmode none" in mode
    assert a.ping(result["ips"][0]["gateway"])
    cni.delete(conf, a.path)

    dual = bridge_conf(cni)
    dual["plugins"][0]["ipam"]["ranges"] = [[{"subnet": str(unique_subnet(4))}], [{"subnet": str(unique_subnet(6))}]]
    bridges.append(dual["plugins"][0]["bridge"])
    b = netns()
    cni.add(dual, b.path)
    assert "inet6 fe80::" in b.ip("-6", "addr", "show", "dev", "eth0")
    cni.delete(dual, b.path)


def test_parallel_adds_race_to_create_the_bridge(cni, netns, bridges):
    conf = bridge_conf(cni)
    bridges.append(conf["plugins"][0]["bridge"])
    spaces = [netns() for _ in range(8)]
    runs: list[Any] = [None] * len(spaces)

    def add(i: int) -> None:
        runs[i] = cni.add(conf, spaces[i].path, raise_on_error=False)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(len(spaces))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.ok for r in runs), [r.error for r in runs if not r.ok]
    addrs = {r.result["ips"][0]["address"] for r in runs}
    assert len(addrs) == len(spaces)
    for ns in spaces:
        cni.delete(conf, ns.path)


def test_gc_releases_attachments_not_in_the_valid_list(cni, netns, bridges):
    conf = bridge_conf(cni, version="1.1.0")
    bridges.append(conf["plugins"][0]["bridge"])
    keep, drop = netns(), netns()
    rk = cni.add(conf, keep.path).result
    rd = cni.add(conf, drop.path).result
    plugin_conf = dict(conf["plugins"][0], name=conf["name"], cniVersion="1.1.0")
    # an absent key releases nothing
    assert exec_raw(cni, "GC", plugin_conf).exit_code == 0
    assert len(lease_files(cni.data_dir, conf["name"])) == 2
    valid = [{"containerID": cni.default_container_id(keep.path), "ifname": "eth0"}]
    call = exec_raw(cni, "GC", dict(plugin_conf, **{"cni.dev/valid-attachments": valid}))
    assert call.exit_code == 0 and call.stdout == ""
    assert lease_files(cni.data_dir, conf["name"]) == [rk["ips"][0]["address"].split("/")[0]]
    assert not link_exists(rd["interfaces"][1]["name"])
    assert set(map(str, firewall.members(conf["name"]))) == {rk["ips"][0]["address"].split("/")[0]}
    cni.delete(conf, keep.path)
    cni.delete(conf, drop.path)


def test_status(cni):
    conf = bridge_conf(cni, version="1.1.0")
    plugin_conf = dict(conf["plugins"][0], name=conf["name"], cniVersion="1.1.0")
    call = exec_raw(cni, "STATUS", plugin_conf)
    assert call.exit_code == 0 and call.stdout == ""


def test_external_ipam_host_local(cni, netns, bridges, tmp_path):
    """Any ipam.type other than pybridge-ipam is exec'd from CNI_PATH (here the Go host-local)."""
    conf = bridge_conf(cni)
    subnet = unique_subnet(4)
    conf["plugins"][0]["ipam"] = {"type": "host-local", "subnet": str(subnet), "dataDir": str(tmp_path / "hl")}
    bridges.append(conf["plugins"][0]["bridge"])
    c = netns()
    r = cni.add(conf, c.path).result
    assert ipaddress.ip_interface(r["ips"][0]["address"]).ip in subnet
    assert c.ping(r["ips"][0]["gateway"])
    cni.delete(conf, c.path)
    assert not firewall.table_exists(conf["name"])
    assert [p.name for p in (tmp_path / "hl" / conf["name"]).iterdir() if p.name[0].isdigit()] == []


def test_hairpin_promisc_and_mtu(cni, netns, bridges):
    conf = bridge_conf(cni, masq=False, hairpinMode=True, promiscMode=True, mtu=1400)
    bridge = conf["plugins"][0]["bridge"]
    bridges.append(bridge)
    c = netns()
    r = cni.add(conf, c.path).result
    host_veth = r["interfaces"][1]["name"]
    info = json.loads(subprocess.run(["ip", "-d", "-j", "link", "show", host_veth], capture_output=True,
                                     text=True).stdout)[0]
    assert info["linkinfo"]["info_slave_data"]["hairpin"] is True
    assert info["mtu"] == 1400
    assert "PROMISC" in subprocess.run(["ip", "link", "show", bridge], capture_output=True, text=True).stdout
    assert json.loads(c.ip("-j", "link", "show", "eth0"))[0]["mtu"] == 1400
    cni.delete(conf, c.path)
