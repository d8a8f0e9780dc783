"""Proof that the shared test infrastructure does what the other tests rely on, without root:
cnitool's libcni semantics against a scripted fake plugin that logs what it was given, unique
names and subnets, and hostsnap's normalising and diffing. With root (namespaces, the uplink, the
Go reference plugins, host snapshots, the session-end leak check): tests/integration/test_support_selftest.py.
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
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import session as support_session
from tests.support.cnitool import (
    CniCallError,
    CniTool,
    PluginNotFoundError,
    PluginTimeoutError,
    load_netconf,
    parse_cni_args,
)
from tests.support.hostsnap import HostSnapshot, diff, normalize_iptables_save, normalize_nft
from tests.support.paths import REPO
from tests.support.session import IFNAMSIZ, unique_name
from tests.support.subnets import routes_on_host, unique_subnet

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
    prefix = support_session.session().prefix
    assert len(set(names)) == len(names)
    for n in names:
        assert len(n.encode()) <= IFNAMSIZ and n.startswith(prefix) and re.fullmatch(r"[a-z0-9]+", n)


def test_unique_subnets_are_distinct_and_unrouted() -> None:
    nets = [unique_subnet() for _ in range(20)] + [unique_subnet(6) for _ in range(5)]
    assert len(set(nets)) == len(nets)
    assert all(n.prefixlen == (24 if n.version == 4 else 64) for n in nets)
    assert all(n.subnet_of(ipaddress.ip_network("10.128.0.0/9")) for n in nets if n.version == 4)
    routes = routes_on_host()
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
    reg = support_session.REGISTRY_DIR / f"{other}.json"
    a = HostSnapshot(None, {"links": ["eth0 kind=- master=- up mtu=1500"], "routes": []})
    b = HostSnapshot(None, {"links": ["eth0 kind=- master=- up mtu=1500", f"veth9 kind=veth master={other}br1 up mtu=1500"],
                            "routes": ["inet unicast 10.9.9.0/24 dev x"]})
    assert diff(a, b, ignore_foreign=False) == [
        f"links: + veth9 kind=veth master={other}br1 up mtu=1500", "routes: + inet unicast 10.9.9.0/24 dev x"]
    assert diff(b, a, ignore=[r"10\.9\.9\."], ignore_foreign=False) == [
        f"links: - veth9 kind=veth master={other}br1 up mtu=1500"]
    if not os.access(support_session.REGISTRY_DIR.parent, os.W_OK):
        return
    support_session.REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
    try:  # a live (this pid) foreign session: its lines vanish from the diff
        reg.write_text(json.dumps({"prefix": other, "pid": os.getpid(), "subnets": ["10.9.9.0/24"]}))
        assert diff(a, b) == []
    finally:
        reg.unlink(missing_ok=True)
