"""Proof that the shared test infrastructure does what the other tests rely on.

Part 1 (no root): cnitool's libcni semantics against a scripted fake plugin that logs what it
was given. Part 2 (root): namespaces, the uplink, the Go reference `bridge` + `host-local` +
`loopback` through cnitool, host snapshots, and the session-end leak check (via an inner pytest).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import requires_root
from tests.support import netns as support_netns
from tests.support.cnitool import (
    CniCallError,
    CniTool,
    PluginNotFoundError,
    PluginTimeoutError,
    bridge_conflist,
    load_netconf,
    parse_cni_args,
)
from tests.support.hostsnap import (
    HostSnapshot,
    assert_unchanged,
    diff,
    mine,
    normalize_iptables_save,
    normalize_nft,
    snapshot,
)
from tests.support.netns import (
    IFNAMSIZ,
    lease_files,
    run,
    unique_name,
    unique_subnet,
    wait_for,
)

REPO = Path(__file__).resolve().parents[1]
GO_PLUGINS = Path("/usr/lib/cni")
needs_go_plugins = pytest.mark.skipif(
    not (GO_PLUGINS / "bridge").exists(), reason="containernetworking-plugins not installed"
)

# ----- part 1: cnitool against a fake plugin ------------------------------------------------
FAKE_PLUGIN = r'''#!{python}
import json, os, sys, time
name = os.path.basename(sys.argv[0])
raw = sys.stdin.read()
conf = json.loads(raw) if raw.strip() else {{}}
env = {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}
cmd = env.get("CNI_COMMAND")
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({{"plugin": name, "env": env, "conf": conf}}) + "\n")
behave = conf.get("behave", {{}}).get(cmd, {{}})
if behave.get("sleep"):
    time.sleep(behave["sleep"])
if "garbage" in behave:
    print(behave["garbage"]); print("oops from " + name, file=sys.stderr); sys.exit(1)
if "fail" in behave:
    print(json.dumps(dict(cniVersion=conf.get("cniVersion"), **behave["fail"])))
    print("diagnostics from " + name, file=sys.stderr)
    sys.exit(1)
if cmd == "VERSION":
    print(json.dumps({{"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}}))
elif cmd == "ADD":
    prev = conf.get("prevResult") or {{"cniVersion": conf["cniVersion"], "interfaces": [], "ips": []}}
    prev = dict(prev, interfaces=prev.get("interfaces", []) + [{{"name": name}}])
    if behave.get("no_version"):
        prev.pop("cniVersion")
    print(json.dumps(prev))
'''


class Fake:
    """Two fake plugin types (`fakea`, `fakeb`) in a private CNI_PATH, and their call log."""

    def __init__(self, tmp: Path) -> None:
        self.bin = tmp / "bin"
        self.bin.mkdir()
        for name in ("fakea", "fakeb"):
            p = self.bin / name
            p.write_text(FAKE_PLUGIN.format(python=sys.executable))
            p.chmod(0o755)
        self.log = tmp / "calls.jsonl"
        self.log.touch()
        self.tool = CniTool(tmp / "cache", [str(tmp / "nonexistent"), str(self.bin)],
                            env={"FAKE_LOG": str(self.log)}, timeout=10)

    def calls(self) -> list[dict[str, Any]]:
        out = [json.loads(ln) for ln in self.log.read_text().splitlines()]
        self.log.write_text("")
        return out


def conflist(version: str = "1.0.0", a: dict | None = None, b: dict | None = None, **top: Any) -> dict:
    return {"cniVersion": version, "name": "fakenet",
            "plugins": [{"type": "fakea", **(a or {})}, {"type": "fakeb", **(b or {})}], **top}


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fake:
    monkeypatch.setenv("CNI_IFNAME", "inherited-must-not-leak")
    return Fake(tmp_path)


def test_add_chains_like_libcni(fake: Fake) -> None:
    conf = conflist(a={"capabilities": {"portMappings": True}}, b={"capabilities": {"mac": False}})
    pm = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    run_ = fake.tool.add(conf, "/run/netns/x", container_id="c1", ifname="eth1",
                         args="IgnoreUnknown=1;K8S_POD_NAME=p", capability_args={"portMappings": pm, "mac": "x"})
    calls = fake.calls()
    assert [c["plugin"] for c in calls] == ["fakea", "fakeb"]
    a, b = calls
    for c in calls:
        assert c["env"] == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x",
                            "CNI_IFNAME": "eth1", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=p",
                            "CNI_PATH": ":".join(fake.tool.path)}
        assert c["conf"]["name"] == "fakenet" and c["conf"]["cniVersion"] == "1.0.0"
    assert "prevResult" not in a["conf"]
    assert a["conf"]["runtimeConfig"] == {"portMappings": pm}  # only declared, true capabilities
    assert "runtimeConfig" not in b["conf"]
    assert b["conf"]["prevResult"]["interfaces"] == [{"name": "fakea"}]
    assert run_.result["interfaces"] == [{"name": "fakea"}, {"name": "fakeb"}]
    assert run_.ok and len(run_.calls) == 2 and all(c.elapsed > 0 and c.exit_code == 0 for c in run_.calls)
    # the libcni cache entry, byte-compatible in shape with cniCacheV1
    entry = json.loads((fake.tool.cache_dir / "results" / "fakenet-c1-eth1").read_text())
    assert entry["kind"] == "cniCacheV1" and entry["containerId"] == "c1" and entry["ifName"] == "eth1"
    assert json.loads(base64.b64decode(entry["config"])) == conf
    assert entry["result"] == run_.result and entry["netns"] == "/run/netns/x"
    assert entry["cniArgs"] == [["IgnoreUnknown", "1"], ["K8S_POD_NAME", "p"]]


def test_check_and_del_use_cached_result(fake: Fake) -> None:
    conf = conflist()
    added = fake.tool.add(conf, "/run/netns/x", container_id="c1").result
    fake.calls()
    fake.tool.check(conf, "/run/netns/x", container_id="c1")
    calls = fake.calls()
    assert [c["plugin"] for c in calls] == ["fakea", "fakeb"]
    assert all(c["conf"]["prevResult"] == added and c["env"]["CNI_COMMAND"] == "CHECK" for c in calls)
    run_ = fake.tool.delete(conf, "/run/netns/x", container_id="c1")
    calls = fake.calls()
    assert [c["plugin"] for c in calls] == ["fakeb", "fakea"]  # reverse order
    assert all(c["conf"]["prevResult"] == added for c in calls)
    assert run_.result is None and not fake.tool.cached_attachments()
    # second DEL: no cache, no prevResult, still calls both and succeeds
    fake.tool.delete(conf, "/run/netns/x", container_id="c1")
    assert [("prevResult" in c["conf"]) for c in fake.calls()] == [False, False]


def test_del_with_empty_netns_and_old_versions(fake: Fake) -> None:
    fake.tool.add(conflist("0.3.1"), "/run/netns/x", container_id="c1")
    fake.calls()
    fake.tool.delete(conflist("0.3.1"), None, container_id="c1")
    calls = fake.calls()
    assert all(c["env"]["CNI_NETNS"] == "" for c in calls)
    assert all("prevResult" not in c["conf"] for c in calls)  # libcni: cache used from 0.4.0 on
    with pytest.raises(CniCallError, match="does not support the CHECK"):
        fake.tool.check(conflist("0.3.1"), "/run/netns/x", container_id="c1")
    run_ = fake.tool.check(conflist(disableCheck=True), "/run/netns/x", container_id="c1")
    assert run_.ok and not run_.calls and not fake.calls()


def test_errors_are_parsed_and_del_stops_like_libcni(fake: Fake) -> None:
    fail = {"fail": {"code": 11, "msg": "try later", "details": "busy"}}
    conf = conflist(b={"behave": {"ADD": fail, "DEL": fail}})
    with pytest.raises(CniCallError) as ei:
        fake.tool.add(conf, "/run/netns/x", container_id="c1")
    err = ei.value
    assert (err.code, err.msg, err.details) == (11, "try later", "busy")
    assert err.error["cniVersion"] == "1.0.0" and "diagnostics from fakeb" in err.stderr
    assert err.call.plugin == "fakeb" and err.exit_code == 1
    assert not fake.tool.cached_attachments()  # failed ADD is not cached
    fake.calls()
    # DEL: fakeb (first, reversed) fails -> libcni stops; keep_going continues to fakea
    run_ = fake.tool.delete(conf, "/run/netns/x", container_id="c1", raise_on_error=False)
    assert [c.plugin for c in run_.calls] == ["fakeb"] and run_.error.code == 11
    run_ = fake.tool.delete(conf, "/run/netns/x", container_id="c1", keep_going=True, raise_on_error=False)
    assert [c.plugin for c in run_.calls] == ["fakeb", "fakea"] and len(run_.errors) == 1
    # output that is not an error object still gives a useful exception
    garbage = conflist(a={"behave": {"ADD": {"garbage": "panic: boom"}}})
    with pytest.raises(CniCallError, match="without a CNI error object") as ei:
        fake.tool.add(garbage, "/run/netns/x", container_id="c2")
    assert ei.value.code is None and "oops from fakea" in ei.value.stderr


def test_not_found_timeout_and_result_version_fixup(fake: Fake) -> None:
    with pytest.raises(PluginNotFoundError, match="nope"):
        fake.tool.add({"cniVersion": "1.0.0", "name": "n", "type": "nope"}, "/x", container_id="c")
    fake.tool.timeout = 0.5
    slow = conflist(a={"behave": {"ADD": {"sleep": 5}}})
    started = time.monotonic()
    run_ = fake.tool.add(slow, "/run/netns/x", container_id="c", raise_on_error=False)
    assert isinstance(run_.error, PluginTimeoutError) and time.monotonic() - started < 4
    fake.tool.timeout = 10
    res = fake.tool.add(conflist(b={"behave": {"ADD": {"no_version": True}}}), "/x", container_id="c3").result
    assert res["cniVersion"] == "1.0.0"


def test_single_conf_and_args_parsing() -> None:
    nl = load_netconf({"cniVersion": "0.4.0", "name": "one", "type": "bridge"})
    assert nl.name == "one" and [p["type"] for p in nl.plugins] == ["bridge"]
    assert parse_cni_args("A=1;B=x=y;") == [("A", "1"), ("B", "x=y")]
    assert parse_cni_args({"A": 1}) == [("A", "1")]
    with pytest.raises(ValueError):
        parse_cni_args("novalue")
    with pytest.raises(ValueError):
        load_netconf({"name": "x", "plugins": [{"notype": 1}]})


def test_gc_status_version(fake: Fake) -> None:
    conf = conflist("1.1.0")
    fake.tool.add(conf, "/run/netns/a", container_id="keep")
    stale = fake.tool.add(conf, "/run/netns/b", container_id="stale").result
    fake.calls()
    fake.tool.gc(conf, [("keep", "eth0")])
    calls = fake.calls()
    assert [(c["plugin"], c["env"]["CNI_COMMAND"]) for c in calls] == [
        ("fakeb", "DEL"), ("fakea", "DEL"), ("fakea", "GC"), ("fakeb", "GC")]
    assert calls[0]["env"]["CNI_CONTAINERID"] == "stale" and calls[0]["conf"]["prevResult"] == stale
    assert calls[0]["env"]["CNI_NETNS"] == "/run/netns/b"
    for c in calls[2:]:
        assert c["conf"]["cni.dev/valid-attachments"] == [{"containerID": "keep", "ifname": "eth0"}]
        assert c["env"]["CNI_CONTAINERID"] == "" and c["env"]["CNI_IFNAME"] == ""
    assert [a.container_id for a in fake.tool.cached_attachments()] == ["keep"]
    # before 1.1.0 libcni sends no GC/STATUS at all
    fake.tool.gc(conflist("1.0.0"), [("keep", "eth0")], delete_stale=False)
    fake.tool.status(conflist("1.0.0"))
    assert fake.calls() == []
    fake.tool.status(conf)
    assert [(c["plugin"], c["env"]["CNI_COMMAND"]) for c in fake.calls()] == [("fakea", "STATUS"), ("fakeb", "STATUS")]
    v = fake.tool.version(conf)
    assert [o["supportedVersions"][-1] for o in v.result] == ["1.1.0", "1.1.0"]
    assert fake.calls()[0]["conf"] == {"cniVersion": "1.1.0"}


def test_cli(fake: Fake, tmp_path: Path) -> None:
    conf_file = tmp_path / "net.conflist"
    conf_file.write_text(json.dumps(conflist()))
    env = dict(os.environ, FAKE_LOG=str(fake.log), PYTHONPATH=str(REPO))
    base = [sys.executable, "-m", "tests.support.cnitool"]
    opts = ["--path", str(fake.bin), "--cache-dir", str(tmp_path / "clicache"), "--id", "cli1"]
    p = subprocess.run([*base, "add", str(conf_file), "/run/netns/x", *opts, "--args", "K=V"],
                       capture_output=True, text=True, env=env, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert [i["name"] for i in json.loads(p.stdout)["interfaces"]] == ["fakea", "fakeb"]
    p = subprocess.run([*base, "del", str(conf_file), "", *opts, "-v"], capture_output=True, text=True,
                       env=env, cwd=REPO)
    assert p.returncode == 0 and p.stdout == "" and "fakeb DEL exit=0" in p.stderr
    bad = tmp_path / "bad.conflist"
    bad.write_text(json.dumps(conflist(a={"behave": {"ADD": {"fail": {"code": 7, "msg": "bad"}}}})))
    p = subprocess.run([*base, "add", str(bad), "/run/netns/x", *opts], capture_output=True, text=True,
                       env=env, cwd=REPO)
    assert p.returncode == 1 and json.loads(p.stdout)["code"] == 7


def test_unique_names_fit_the_kernel() -> None:
    names = [unique_name(k) for k in ("br", "ns", "veth", "a-very-long-kind", "", "NET")] + [
        unique_name("x") for _ in range(50)]
    prefix = support_netns.session().prefix
    assert len(set(names)) == len(names)
    for n in names:
        assert len(n.encode()) <= IFNAMSIZ and n.startswith(prefix) and re.fullmatch(r"[a-z0-9]+", n)


def test_unique_subnets_are_distinct_and_unrouted() -> None:
    nets = [unique_subnet() for _ in range(20)] + [unique_subnet(6) for _ in range(5)]
    assert len(set(nets)) == len(nets)
    assert all(n.prefixlen == (24 if n.version == 4 else 64) for n in nets)
    assert all(n.subnet_of(ipaddress.ip_network("10.128.0.0/9")) for n in nets if n.version == 4)
    routes = support_netns._routes_on_host()
    assert not any(n.overlaps(r) for n in nets for r in routes if r.version == n.version)


# ----- hostsnap units ----------------------------------------------------------------------
NFT_SAMPLE = """table inet pybridge { # handle 7
\tset n1 { # handle 2
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 10.1.0.2, 10.1.0.3,
\t\t\t     10.1.0.9 }
\t}

\tchain postrouting { # handle 1
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr @n1 counter packets 12 bytes 3456 masquerade # handle 3
\t}
}
"""


def test_normalize_nft_and_iptables() -> None:
    lines = normalize_nft(NFT_SAMPLE)
    assert "table inet pybridge > set n1: element 10.1.0.9" in lines
    assert "table inet pybridge > chain postrouting: ip saddr @n1 counter masquerade" in lines
    assert not any("handle" in ln or "packets" in ln for ln in lines)
    again = normalize_nft(NFT_SAMPLE.replace("12 bytes 3456", "99 bytes 1").replace("# handle 3", "# handle 9"))
    assert again == lines
    ipt = normalize_iptables_save("# Generated\n*nat\n:POSTROUTING ACCEPT [3:180]\n-A POSTROUTING -j X\nCOMMIT\n", "ipv4")
    assert ipt == ["ipv4 nat | :POSTROUTING ACCEPT", "ipv4 nat | -A POSTROUTING -j X"]


def test_diff_is_readable_and_ignores_other_live_sessions() -> None:
    other = "pbt" + secrets.token_hex(2)
    reg = support_netns.REGISTRY_DIR / f"{other}.json"
    a = HostSnapshot(None, {"links": ["eth0 kind=- master=- up mtu=1500"], "routes": []})
    b = HostSnapshot(None, {"links": ["eth0 kind=- master=- up mtu=1500", f"veth9 kind=veth master={other}br1 up mtu=1500"],
                            "routes": ["inet unicast 10.9.9.0/24 dev x"]})
    assert diff(a, b, ignore_foreign=False) == [
        f"links: + veth9 kind=veth master={other}br1 up mtu=1500", "routes: + inet unicast 10.9.9.0/24 dev x"]
    assert diff(b, a, ignore=[r"10\.9\.9\."], ignore_foreign=False) == [
        f"links: - veth9 kind=veth master={other}br1 up mtu=1500"]
    if not os.access(support_netns.REGISTRY_DIR.parent, os.W_OK):
        return
    support_netns.REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
    try:  # a live (this pid) foreign session: its lines vanish from the diff
        reg.write_text(json.dumps({"prefix": other, "pid": os.getpid(), "subnets": ["10.9.9.0/24"]}))
        assert diff(a, b) == []
    finally:
        reg.unlink(missing_ok=True)


# ----- part 2: real kernel -----------------------------------------------------------------
@requires_root
def test_netns_factory(netns) -> None:
    ns = netns()
    assert ns.exists() and ns.path == f"/run/netns/{ns.name}" and ns.name.startswith(support_netns.session().prefix)
    assert ns.link_names() == ["lo"] and "UP" in ns.ip_json("link", "show", "lo")[0]["flags"]
    assert ns.run("cat", "/proc/net/dev").returncode == 0
    assert ns.ping("127.0.0.1") and ns.ping("::1")
    assert not ns.ping("10.255.255.1", timeout=1)  # no route: fails fast, never leaves the ns
    tracked = ns.popen("sleep", "60")
    untracked = subprocess.Popen(["ip", "netns", "exec", ns.name, "sleep", "60"])
    assert wait_for(lambda: len(ns.pids()) == 2)
    ns.delete()
    assert not ns.exists() and tracked.poll() is not None and untracked.wait(5) == -9
    ns.delete()  # idempotent


@requires_root
def test_ping_tolerates_a_neighbour_entry_left_failed(netns) -> None:
    """After an unanswered ping the neighbour entry is FAILED and the next first packet is
    dropped while the kernel re-resolves; `ping()` must still report the address reachable."""
    a, b = netns(), netns()
    run(["ip", "link", "add", "p0", "netns", a.name, "type", "veth", "peer", "name", "p1", "netns", b.name])
    a.ip("addr", "add", "10.77.0.1/24", "dev", "p0")
    b.ip("addr", "add", "10.77.0.2/24", "dev", "p1")
    a.ip("link", "set", "p0", "up")
    assert not a.ping("10.77.0.2", timeout=1)  # peer down: ARP fails
    b.ip("link", "set", "p1", "up")
    assert a.ping("10.77.0.2") and a.ping("10.77.0.2", count=3, min_replies=3)


@requires_root
def test_uplink(uplink) -> None:
    assert uplink.host_if.startswith(support_netns.session().prefix) and len(uplink.host_if) <= IFNAMSIZ
    host = run(["ip", "-j", "addr", "show", "dev", uplink.host_if]).stdout
    assert str(uplink.host_ip) in host and str(uplink.host_ip6) in host
    assert uplink.outside.addresses(uplink.outside_if, family=4) == [f"{uplink.outside_ip}/24"]
    assert uplink.outside.ping(uplink.host_ip) and uplink.outside.ping(uplink.host_ip6)
    assert uplink.subnet.subnet_of(ipaddress.ip_network("198.18.0.0/15"))


@requires_root
def test_uplink_without_host_address(uplink_factory) -> None:
    up = uplink_factory("198.19.254.10/24", host_addr=False, ipv6=False)
    assert up.host_ip is None and up.outside_ip == ipaddress.ip_address("198.19.254.10")
    assert "198.19.254" not in run(["ip", "addr", "show", "dev", up.host_if]).stdout


@requires_root
@needs_go_plugins
def test_go_bridge_host_local_loopback(cni: CniTool, netns) -> None:
    """The reference plugins, driven like a runtime would: the baseline for everything else."""
    name, br, subnet = unique_name("net"), unique_name("br"), unique_subnet()
    gw = str(subnet.network_address + 1)
    conf = bridge_conflist(name, bridge=br, subnets=[str(subnet)], data_dir=cni.data_dir,
                           is_default_gateway=True, chain=[{"type": "loopback"}])
    before = snapshot([cni.data_dir])
    a, b = netns(), netns()
    ida, idb = unique_name("ctr"), unique_name("ctr")

    ra = cni.add(conf, a.path, container_id=ida, args="IgnoreUnknown=1;K8S_POD_NAME=pa")
    res = ra.result
    assert [c.plugin for c in ra.calls] == ["bridge", "loopback"]
    assert res["cniVersion"] == "1.0.0"
    ifaces = res["interfaces"]
    assert ifaces[0]["name"] == br and "sandbox" not in ifaces[0]
    eth0 = [i for i in ifaces if i.get("sandbox")]
    assert len(eth0) == 1 and eth0[0]["name"] == "eth0" and eth0[0]["sandbox"] == a.path
    assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", eth0[0]["mac"])
    ip_a = ipaddress.ip_interface(res["ips"][0]["address"])
    assert ip_a.network == subnet and res["ips"][0]["gateway"] == gw
    assert ifaces[res["ips"][0]["interface"]]["name"] == "eth0"
    assert a.addresses("eth0") == [str(ip_a)]
    assert a.ip_json("route", "show", "default")[0]["gateway"] == gw
    assert cni.cached(conf, ida).result == res

    ip_b = ipaddress.ip_interface(cni.add(conf, b.path, container_id=idb).result["ips"][0]["address"])
    assert a.ping(ip_b.ip) and b.ping(ip_a.ip) and a.ping(gw)
    assert len(lease_files(cni.data_dir)) == 2

    assert [c.plugin for c in cni.check(conf, a.path, container_id=ida).calls] == ["bridge", "loopback"]

    rd = cni.delete(conf, a.path, container_id=ida)
    assert [c.plugin for c in rd.calls] == ["loopback", "bridge"]
    assert "eth0" not in a.link_names() and len(lease_files(cni.data_dir)) == 1
    assert cni.cached(conf, ida) is None
    cni.delete(conf, a.path, container_id=ida)  # DEL twice: still success

    cni.delete(conf, "", container_id=idb)  # runtime lost the netns: IPAM must still release
    assert lease_files(cni.data_dir) == []
    b.delete()  # the container end goes with the namespace, and its host veth with it
    assert wait_for(lambda: json.loads(run(["ip", "-j", "link", "show", "master", br]).stdout or "[]") == [])
    run(["ip", "link", "delete", br])
    # host-local keeps its bookkeeping (lock, last_reserved_ip.N); anything else is a leak.
    # Only what is ours: other test runs may change the host at the same time.
    assert_unchanged(before, snapshot([cni.data_dir]), only=mine(cni.data_dir),
                     ignore=[rf"/{name}/$", rf"/{name}/lock = ", rf"/{name}/last_reserved_ip\.\d+ = "])


@requires_root
def test_snapshot_sees_changes(tmp_path: Path) -> None:
    files = tmp_path / "state"
    files.mkdir()
    s0 = snapshot([files])
    scope = mine(files)  # the host is shared with other test sessions: judge only our lines
    br, table, net = unique_name("br"), unique_name("t"), unique_subnet()
    try:
        run(["ip", "link", "add", br, "type", "bridge"])
        run(["ip", "addr", "add", f"{net.network_address + 1}/24", "dev", br])
        run(["ip", "link", "set", br, "up"])
        # no hook: the chain is inert, it only has to show up in the ruleset
        run(["nft", "-f", "-"], input=f"table inet {table} {{\n set s {{ type ipv4_addr; elements = {{ {net.network_address + 5} }}; }}\n"
                                       f" chain c {{\n ip saddr @s counter accept\n }}\n}}\n")
        (files / "lease").write_text("abc\r\neth0")
        d = diff(s0, snapshot([files]), only=scope)
        text = "\n".join(d)
        assert f"links: + {br} kind=bridge master=- up" in text
        assert f"addresses: + {br} inet {net.network_address + 1}/24" in text
        assert f"routes: + inet unicast {net} dev {br}" in text
        assert f"nft: + table inet {table} > set s: element {net.network_address + 5}" in text
        assert f"nft: + table inet {table} > chain c: ip saddr @s counter accept" in text
        assert f"files: + {files}/lease = 'abc\\r\\neth0'" in text
        with pytest.raises(AssertionError, match="host state changed"):
            assert_unchanged(s0, snapshot([files]), only=scope)
    finally:
        run(["nft", "delete", "table", "inet", table], check=False)
        run(["ip", "link", "delete", br], check=False)
        (files / "lease").unlink(missing_ok=True)
    assert_unchanged(s0, snapshot([files]), only=scope)


@requires_root
def test_snapshot_of_a_namespace_is_stable_under_traffic(netns) -> None:
    """Counters, handles and neighbour churn must not show up as differences."""
    a, b = netns(), netns()
    run(["ip", "link", "add", "p0", "netns", a.name, "type", "veth", "peer", "name", "p1", "netns", b.name])
    a.ip("addr", "add", "10.78.0.1/24", "dev", "p0")
    b.ip("addr", "add", "10.78.0.2/24", "dev", "p1")
    a.ip("link", "set", "p0", "up")
    b.ip("link", "set", "p1", "up")
    a.run("nft", "-f", "-", input="table inet t {\n set s { type ipv4_addr; flags dynamic; timeout 1h; }\n"
                                   " chain out {\n type filter hook output priority 0; policy accept;\n"
                                   "  update @s { ip daddr } counter\n }\n}\n")
    sysctls = ["net.ipv4.ip_forward"]
    assert a.ping("10.78.0.2")
    n0 = snapshot(netns=a.name, sysctls=sysctls)
    assert "table inet t > set s: element 10.78.0.2" in n0["nft"]
    assert a.ping("10.78.0.2", count=3)  # counters and set timers move
    assert diff(n0, snapshot(netns=a.name, sysctls=sysctls)) == []
    # iptables and sysctls inside a namespace: the root's rules are never touched
    a.run("iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", "10.1.2.3/32", "-j", "MASQUERADE")
    was = n0["sysctls"][0].split()[-1]  # a new netns copies ip_forward from the root's
    now = "0" if was == "1" else "1"
    a.run("sysctl", "-qw", f"net.ipv4.ip_forward={now}")
    d = diff(n0, snapshot(netns=a.name, sysctls=sysctls))
    assert "iptables: + ipv4 nat | -A POSTROUTING -s 10.1.2.3/32 -j MASQUERADE" in d
    assert f"sysctls: + net.ipv4.ip_forward = {now}" in d and f"sysctls: - net.ipv4.ip_forward = {was}" in d


INNER_TESTS = """
import subprocess
import pytest
from tests.support.netns import create_netns, register_data_dir

@pytest.fixture(scope="session")
def shared_ns():
    ns = create_netns()
    yield ns
    ns.delete()  # torn down before the leak check runs: not a leak

def test_uses_a_session_fixture(shared_ns):
    assert shared_ns.exists()

def test_fails_after_making_a_namespace(netns):
    ns = netns()
    open(MARK, "w").write(ns.name)
    assert False, "deliberate failure"

def test_leaks(test_prefix, tmp_path):
    sh = lambda *a: subprocess.run(a, check=True)
    sh("ip", "netns", "add", test_prefix + "leak1")
    sh("ip", "link", "add", test_prefix + "lbr", "type", "bridge")
    sh("ip", "link", "add", VETH, "type", "veth", "peer", "name", VETH + "p")
    sh("ip", "link", "set", VETH, "master", test_prefix + "lbr")
    sh("nft", "add", "table", "inet", test_prefix + "t1")
    d = register_data_dir(tmp_path / "data")
    (d / "net").mkdir(parents=True)
    (d / "net" / "10.1.2.3").write_text("ctr\\r\\neth0")
    (d / "net" / "lock").write_text("")
    (d / "net" / "owner.ctr+eth0").write_text("{}")  # pybridge-ipam's index: a leak too
    open(LEASE, "w").write(str(d / "net" / "10.1.2.3"))
"""


@requires_root
def test_failed_tests_clean_up_and_leaks_fail_the_session(tmp_path: Path) -> None:
    """Run an inner pytest session (own prefix) with a failing test and a leaking test."""
    inner_prefix = "pbt" + secrets.token_hex(2)
    veth = "vt" + secrets.token_hex(4)  # a plugin-style name without the prefix
    mark, lease = tmp_path / "ns-name", tmp_path / "lease-path"
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(REPO)!r})\nfrom tests.conftest import *  # noqa\n")
    (inner / "test_inner.py").write_text(
        f"MARK = {str(mark)!r}\nLEASE = {str(lease)!r}\nVETH = {veth!r}\n" + textwrap.dedent(INNER_TESTS))
    env = dict(os.environ, PYBRIDGE_TEST_PREFIX=inner_prefix)
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA",
                        "--rootdir", str(inner), str(inner)],
                       capture_output=True, text=True, env=env, cwd=inner, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "1 failed, 2 passed" in out, out
    assert len(re.findall(r"^  netns ", out, re.M)) == 1, out  # only the deliberate leak
    assert "TEST RESOURCES LEAKED" in out, out
    for item in (f"netns {inner_prefix}leak1", f"link {inner_prefix}lbr", f"link {veth} (enslaved to",
                 f"nft-table inet {inner_prefix}t1", "lease "):
        assert item in out, f"{item!r} not reported:\n{out}"
    assert "test_leaks" in out and "LeakWarning" in out, out  # attributed to the test
    # the failing test's namespace is gone, and the leak check removed the leaks
    assert not Path("/run/netns", mark.read_text()).exists()
    assert not Path(f"/run/netns/{inner_prefix}leak1").exists()
    links = run(["ip", "-j", "link", "show"]).stdout
    assert inner_prefix not in links and veth not in links
    assert inner_prefix not in run(["nft", "list", "tables"]).stdout
    lease_path = Path(lease.read_text())
    assert not lease_path.exists() and not lease_path.with_name("owner.ctr+eth0").exists()
    assert lease_path.with_name("lock").exists()  # bookkeeping is not a leak
    assert "owner.ctr+eth0" in out
    assert not (support_netns.REGISTRY_DIR / f"{inner_prefix}.json").exists()
