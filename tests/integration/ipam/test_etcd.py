"""The etcd lease store against a real 3-member etcd cluster (tests/support/etcd.py).

Hosts are simulated: each has its own host id (PYBRIDGE_HOST_ID) and run directory, and runs the
exec'd `pybridge-ipam` (or the real `pybridge` plugin) as a separate process, like one machine of
a cluster would. What a user would check: every address handed out once, the lease keys in etcd,
error 11 and nothing on the host when etcd has no quorum, every lease back after a restart.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.docker.context import Settings
from tests.support import daemon
from tests.support.cli import cli
from tests.support.cnitool import CniCallError, CniTool, bridge_conflist
from tests.support.dockerd import plugin_call, socket_answers
from tests.support.etcd import EtcdCluster, etcd_missing
from tests.support.etcd import etcd_cluster as start_etcd
from tests.support.host import wait_for
from tests.support.paths import VENV_BIN
from tests.support.plugin_client import GATEWAY_OPTS, Plugin
from tests.support.session import register_data_dir, unique_name
from tests.support.subnets import unique_subnet

HOSTS = ("hosta", "hostb", "hostc")


def store(cluster: EtcdCluster, prefix: str, **extra: Any) -> dict[str, Any]:
    return {"type": "etcd", "endpoints": cluster.endpoints, "prefix": prefix, "timeout": 3, **extra}


def ipam_conf(name: str, subnet: ipaddress._BaseNetwork, store_obj: dict[str, Any]) -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": name,
            "ipam": {"type": "pybridge-ipam", "ranges": [[{"subnet": str(subnet)}]], "store": store_obj}}


def ipam_exec(tmp_path: Path, host: str, command: str, conf: dict[str, Any], cid: str) -> dict[str, Any]:
    """One exec of `pybridge-ipam` as host `host` (its own run dir: no fast-path daemon)."""
    run_dir = tmp_path / f"run-{host}"
    run_dir.mkdir(exist_ok=True)
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
           "CNI_NETNS": "/var/run/netns/none", "CNI_IFNAME": "eth0", "CNI_PATH": str(VENV_BIN),
           "PYBRIDGE_HOST_ID": host, "PYBRIDGE_RUN_DIR": str(run_dir)}
    proc = subprocess.run([str(VENV_BIN / "pybridge-ipam")], input=json.dumps(conf).encode(), env=env,
                          capture_output=True, timeout=60)
    out = json.loads(proc.stdout or b"{}")
    out["_exit"] = proc.returncode
    return out


def leases_in(cluster: EtcdCluster, prefix: str, network: str) -> dict[str, dict[str, Any]]:
    base = f"{prefix}/ipam/{network}/lease/"
    return {key[len(base):]: json.loads(value) for key, value in cluster.get_prefix(base).items()}


def add_many(tmp_path: Path, conf: dict[str, Any], count: int, *, before_each=None,
             tag: str = "ctr") -> list[dict[str, Any]]:
    """`count` ADDs (containers <tag>0, <tag>1, ...) spread over the three hosts, 6 at a time."""
    def one(i: int) -> dict[str, Any]:
        if before_each is not None:
            before_each(i)
        out = ipam_exec(tmp_path, HOSTS[i % 3], "ADD", conf, f"{tag}{i}")
        out["_host"], out["_cid"] = HOSTS[i % 3], f"{tag}{i}"
        return out
    with ThreadPoolExecutor(6) as pool:
        return list(pool.map(one, range(count)))


def addresses(results: list[dict[str, Any]]) -> list[str]:
    return [r["ips"][0]["address"].split("/")[0] for r in results if r["_exit"] == 0]


def test_three_hosts_allocating_at_once_never_share_an_address(etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    prefix, net, subnet = "/" + unique_name("pfx"), unique_name("net"), unique_subnet(4, 26)
    conf = ipam_conf(net, subnet, store(etcd_cluster, prefix))
    results = add_many(tmp_path, conf, 45)
    assert [r for r in results if r["_exit"] != 0] == []
    got = addresses(results)
    assert len(got) == len(set(got)) == 45
    leases = leases_in(etcd_cluster, prefix, net)
    assert sorted(leases) == sorted(got)
    for r in results:  # every lease names the host and container that asked for it
        lease = leases[r["ips"][0]["address"].split("/")[0]]
        assert (lease["host"], lease["container_id"], lease["ifname"]) == (r["_host"], r["_cid"], "eth0")
    # The range has 61 leasable addresses: the 16 left are handed out once each, then error 11.
    more = add_many(tmp_path, conf, 20, tag="more")
    assert len(addresses(more)) == 16  # .0, .1 (gateway), .63 never leased: 61 - 45 = 16
    assert {r["code"] for r in more if r["_exit"] != 0} == {11}
    assert len(set(got) | set(addresses(more))) == 61
    # DEL from the owning host frees; every host can reuse it.
    assert ipam_exec(tmp_path, "hosta", "DEL", conf, "ctr0")["_exit"] == 0
    assert results[0]["ips"][0]["address"].split("/")[0] not in leases_in(etcd_cluster, prefix, net)


def test_allocation_goes_on_when_one_member_dies(etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    prefix, net, subnet = "/" + unique_name("pfx"), unique_name("net"), unique_subnet(4, 24)
    conf = ipam_conf(net, subnet, store(etcd_cluster, prefix))
    killed = threading.Event()

    def kill_once(i: int) -> None:
        if i == 10 and not killed.is_set():
            killed.set()
            etcd_cluster.stop(0)

    results = add_many(tmp_path, conf, 30, before_each=kill_once)
    assert killed.is_set() and etcd_cluster.running() == [1, 2]
    assert [r for r in results if r["_exit"] != 0] == []
    got = addresses(results)
    assert len(set(got)) == 30 and sorted(leases_in(etcd_cluster, prefix, net)) == sorted(got)


def test_without_quorum_add_is_error_11_and_leaves_nothing(etcd_cluster: EtcdCluster, tmp_path: Path,
                                                           netns) -> None:
    """The real `pybridge` plugin: no quorum -> error 11, no interface, no lease; after the
    members come back the same ADD works, the container pings its gateway, DEL frees the lease."""
    prefix, net, subnet, bridge, conf, env = pybridge_network(etcd_cluster, tmp_path, timeout=2)
    tool = CniTool(tmp_path / "cache", env=env)
    ns = netns()
    try:
        etcd_cluster.stop(1)
        etcd_cluster.stop(2)
        with pytest.raises(CniCallError) as failed:
            tool.add(conf, ns.path, container_id="ctr1")
        assert failed.value.code == 11, failed.value
        assert ns.link_names() == ["lo"]
        assert _bridge_ports(bridge) == []
        etcd_cluster.start(1)
        etcd_cluster.start(2)
        etcd_cluster.wait_ready()
        assert leases_in(etcd_cluster, prefix, net) == {}
        result = tool.add(conf, ns.path, container_id="ctr1").result
        address = result["ips"][0]["address"].split("/")[0]
        assert ns.ping(str(subnet[1]))
        lease = leases_in(etcd_cluster, prefix, net)[address]
        assert (lease["host"], lease["container_id"]) == ("hosta", "ctr1")
        # DEL while etcd has no quorum: the host's side goes, the lease stays for the retried DEL.
        etcd_cluster.stop(1)
        etcd_cluster.stop(2)
        with pytest.raises(CniCallError) as failed:
            tool.delete(conf, ns.path, container_id="ctr1")
        assert failed.value.code == 11
        assert ns.link_names() == ["lo"] and _bridge_ports(bridge) == []
        etcd_cluster.start(1)
        etcd_cluster.start(2)
        etcd_cluster.wait_ready()
        assert address in leases_in(etcd_cluster, prefix, net)
        tool.delete(conf, ns.path, container_id="ctr1")
        assert leases_in(etcd_cluster, prefix, net) == {}
    finally:
        tool.cleanup()
        subprocess.run(["ip", "link", "delete", bridge], capture_output=True, check=False)


def pybridge_network(cluster: EtcdCluster, tmp_path: Path, **store_extra: Any) -> tuple[Any, ...]:
    """(prefix, network, subnet, bridge, conflist, plugin env as host "hosta") of a `pybridge`
    bridge network whose leases are in etcd."""
    prefix, net, subnet = "/" + unique_name("pfx"), unique_name("net"), unique_subnet(4, 28)
    bridge = unique_name("br")
    conf = bridge_conflist(net, bridge=bridge, subnets=[str(subnet)], data_dir=tmp_path, plugin_type="pybridge",
                           ipam_type="pybridge-ipam", cni_version="1.1.0")
    ipam = conf["plugins"][0]["ipam"]
    del ipam["dataDir"]
    ipam["store"] = store(cluster, prefix, **store_extra)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return prefix, net, subnet, bridge, conf, {"PYBRIDGE_HOST_ID": "hosta", "PYBRIDGE_RUN_DIR": str(run_dir)}


def _bridge_ports(bridge: str) -> list[str]:
    proc = subprocess.run(["ip", "-j", "link", "show", "master", bridge], capture_output=True, text=True)
    return [link["ifname"] for link in json.loads(proc.stdout or "[]")] if proc.returncode == 0 else []


def test_every_lease_survives_a_restart_of_the_whole_cluster(etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    prefix, net, subnet = "/" + unique_name("pfx"), unique_name("net"), unique_subnet(4, 27)
    conf = ipam_conf(net, subnet, store(etcd_cluster, prefix))
    before = leases_in(etcd_cluster, prefix, net) or None
    assert before is None
    got = addresses(add_many(tmp_path, conf, 12))
    before = leases_in(etcd_cluster, prefix, net)
    for index in range(3):
        etcd_cluster.stop(index)
    for index in range(3):
        etcd_cluster.start(index)
    etcd_cluster.wait_ready()
    assert leases_in(etcd_cluster, prefix, net) == before and sorted(before) == sorted(got)
    # and the allocator continues after them, not over them
    again = ipam_exec(tmp_path, "hostb", "ADD", conf, "late")
    assert again["_exit"] == 0 and again["ips"][0]["address"].split("/")[0] not in got


def test_gc_releases_only_the_calling_hosts_stale_leases_and_ls_shows_all(etcd_cluster: EtcdCluster,
                                                                        tmp_path: Path) -> None:
    prefix, net, subnet = "/" + unique_name("pfx"), unique_name("net"), unique_subnet(4, 27)
    conf = ipam_conf(net, subnet, store(etcd_cluster, prefix))
    results = add_many(tmp_path, conf, 6)  # ctr0, ctr3 on hosta; ctr1, ctr4 on hostb; ...
    conf_gc = {**conf, "cni.dev/valid-attachments": [{"containerID": "ctr0", "ifname": "eth0"}]}
    assert ipam_exec(tmp_path, "hosta", "GC", conf_gc, "")["_exit"] == 0
    left = leases_in(etcd_cluster, prefix, net)
    assert sorted(lease["container_id"] for lease in left.values()) == ["ctr0", "ctr1", "ctr2", "ctr4", "ctr5"]
    listed = cli("ipam", "ls", net, "--ipam-store", "etcd", "--etcd-endpoints", ",".join(etcd_cluster.endpoints),
                 "--etcd-prefix", prefix)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:3] == ["NETWORK", "ADDRESS", "HOST"]
    shown = {(line.split()[2], line.split()[3]) for line in lines[1:]}
    assert shown == {(r["_host"], r["_cid"]) for r in results if r["_cid"] != "ctr3"}


def test_migrate_copies_a_file_store_into_etcd_and_refuses_conflicts(etcd_cluster: EtcdCluster,
                                                                     tmp_path: Path) -> None:
    prefix, net, subnet = "/" + unique_name("pfx"), unique_name("net"), unique_subnet(4, 28)
    data_dir = register_data_dir(tmp_path / "leases")
    file_conf = ipam_conf(net, subnet, {"type": "file", "dataDir": str(data_dir)})
    for i in range(3):
        assert ipam_exec(tmp_path, "hosta", "ADD", file_conf, f"old{i}")["_exit"] == 0
    endpoints = ",".join(etcd_cluster.endpoints)
    moved = cli("ipam", "migrate", net, "--from", f"file:{data_dir}", "--to", f"etcd:{endpoints}",
                "--etcd-prefix", prefix, env={"PYBRIDGE_HOST_ID": "hosta"})
    assert moved.returncode == 0, moved.stderr
    leases = leases_in(etcd_cluster, prefix, net)
    assert sorted((lease["container_id"], lease["host"]) for lease in leases.values()) == [
        ("old0", "hosta"), ("old1", "hosta"), ("old2", "hosta")]
    # the migrated leases are owned: DEL through the etcd store frees them, new ADDs avoid them
    etcd_conf = ipam_conf(net, subnet, store(etcd_cluster, prefix))
    new = ipam_exec(tmp_path, "hostb", "ADD", etcd_conf, "new0")
    assert new["ips"][0]["address"].split("/")[0] not in leases
    assert ipam_exec(tmp_path, "hosta", "DEL", etcd_conf, "old1")["_exit"] == 0
    # a second migration conflicts with what is there now: refused, nothing written
    before = leases_in(etcd_cluster, prefix, net)
    again = cli("ipam", "migrate", net, "--from", f"file:{data_dir}", "--to", f"etcd:{endpoints}",
                "--etcd-prefix", prefix, env={"PYBRIDGE_HOST_ID": "hosta"})
    assert again.returncode != 0 and "conflict" in again.stderr
    assert leases_in(etcd_cluster, prefix, net) == before
    for i in range(3):  # the source is left as it was: the operator empties it after the switch
        assert ipam_exec(tmp_path, "hosta", "DEL", file_conf, f"old{i}")["_exit"] == 0


def test_docker_ipam_driver_on_two_hosts_shares_one_pool(etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    from cni_bridge.docker.app import create_app  # lazy: Flask costs ~0.3 s
    prefix, subnet = "/" + unique_name("pfx"), unique_subnet(4, 28)
    drivers = []
    for host in ("dockera", "dockerb"):
        base = tmp_path / host
        base.mkdir()
        settings = Settings(state_dir=base / "state", ipam_data_dir=base / "leases",
                            ipam_store=store(etcd_cluster, prefix, host=host))
        drivers.append(Plugin(create_app(settings).test_client(), settings))
    pools = [d.ok("IpamDriver.RequestPool", {"AddressSpace": "pybridge-global", "Pool": str(subnet),
                                              "Options": {"network": "shared"}})["PoolID"] for d in drivers]
    gateway = drivers[0].ok("IpamDriver.RequestAddress", {"PoolID": pools[0], "Address": str(subnet[1]),
                                                           "Options": GATEWAY_OPTS})
    assert gateway["Address"].startswith(f"{subnet[1]}/")
    got = [drivers[i % 2].ok("IpamDriver.RequestAddress", {"PoolID": pools[i % 2]})["Address"] for i in range(13)]
    assert len(set(got)) == 13 and f"{subnet[1]}/28" not in got  # 14 leasable: gateway + 13
    error = drivers[1].err("IpamDriver.RequestAddress", {"PoolID": pools[1]})
    assert "no free address" in error
    leases = leases_in(etcd_cluster, prefix, "shared")
    assert {lease["host"] for lease in leases.values()} == {"dockera", "dockerb"} and len(leases) == 14
    # host B frees an address host A handed out; A can hand it out again
    first = got[0].split("/")[0]
    drivers[1].ok("IpamDriver.ReleaseAddress", {"PoolID": pools[1], "Address": first})
    assert drivers[0].ok("IpamDriver.RequestAddress", {"PoolID": pools[0]})["Address"].split("/")[0] == first
    for d, pool in zip(drivers, pools):
        d.ok("IpamDriver.ReleasePool", {"PoolID": pool})
    assert leases_in(etcd_cluster, prefix, "shared") == {}


def test_cni_bridge_gc_releases_only_this_hosts_stale_leases(etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    """`cni-bridge gc --apply` on host A, reading a CNI config with an etcd store: A's leases of
    containers that are gone are released, B's (not A's to judge) stay."""
    prefix, net, subnet = "/" + unique_name("pfx"), unique_name("net"), unique_subnet(4, 28)
    conf = ipam_conf(net, subnet, store(etcd_cluster, prefix))
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    (conf_dir / "10-etcd.conflist").write_text(json.dumps(
        {"cniVersion": "1.1.0", "name": net, "plugins": [
            {"type": "pybridge", "bridge": unique_name("br"), "ipam": conf["ipam"]}]}))
    for host, cid in (("hosta", "gone-a"), ("hostb", "gone-b")):
        assert ipam_exec(tmp_path, host, "ADD", conf, cid)["_exit"] == 0
    empty = tmp_path / "no-leases"
    empty.mkdir()
    sources = ["--conf-dir", str(conf_dir), "--data-dir", str(empty), "--cni-cache-dir", str(tmp_path / "cache"),
               "--state-dir", str(tmp_path / "no-docker"), "--grace", "0"]
    done = cli("gc", *sources, "--apply", net, env={"PYBRIDGE_HOST_ID": "hosta"})
    assert done.returncode == 0, done.stdout + done.stderr
    left = leases_in(etcd_cluster, prefix, net)
    assert [(lease["host"], lease["container_id"]) for lease in left.values()] == [("hostb", "gone-b")]
    assert ipam_exec(tmp_path, "hostb", "DEL", conf, "gone-b")["_exit"] == 0


@pytest.mark.parametrize("cleanup", ["DEL", "GC"])
def test_a_crash_right_after_the_etcd_commit_is_cleaned_up_by_del_or_gc(etcd_cluster: EtcdCluster, tmp_path: Path,
                                                                        netns, cleanup: str) -> None:
    """The plugin dies (SIGKILL) just after its allocation transaction: the lease is in etcd, the
    runtime never got a result. The runtime's DEL (or a GC that does not list the container)
    frees it and leaves nothing on the host."""
    prefix, net, subnet, bridge, conf, env = pybridge_network(etcd_cluster, tmp_path)
    tool = CniTool(tmp_path / "cache", env=env)
    crasher = CniTool(tmp_path / "cache", env={**env, "PYBRIDGE_CRASH_AFTER": "ipam-etcd-allocate"})
    ns = netns()
    try:
        call = crasher.add(conf, ns.path, container_id="ctr1", raise_on_error=False).calls[-1]
        assert call.exit_code < 0 and "ipam-etcd-allocate" in call.stderr, call.stderr
        assert [lease["container_id"] for lease in leases_in(etcd_cluster, prefix, net).values()] == ["ctr1"]
        if cleanup == "DEL":
            tool.delete(conf, ns.path, container_id="ctr1")
        else:
            tool.gc(conf, [("bystander", "eth0")])
        assert leases_in(etcd_cluster, prefix, net) == {}
        assert ns.link_names() == ["lo"] and _bridge_ports(bridge) == []
    finally:
        tool.cleanup()
        subprocess.run(["ip", "link", "delete", bridge], capture_output=True, check=False)


def test_the_warm_daemon_keeps_its_etcd_client_across_an_outage(etcd_cluster: EtcdCluster, tmp_path: Path,
                                                                netns) -> None:
    """Through the fast-path daemon (whose host id is its own): leases are the daemon's host's;
    without quorum its ADD is error 11, and once the members are back the same daemon allocates
    again (its kept connections to the killed members are replaced)."""
    prefix, net, subnet, bridge, conf, _ = pybridge_network(etcd_cluster, tmp_path)
    with daemon.fastpath_daemon(tmp_path / "warm", {"PYBRIDGE_HOST_ID": "warmhost"}) as (path, run_dir, _proc):
        tool = CniTool(tmp_path / "cache", env={"PYBRIDGE_FASTPATH_SOCKET": path, "PYBRIDGE_RUN_DIR": run_dir,
                                                "PYBRIDGE_HOST_ID": "notthedaemon"})
        namespaces = [netns(), netns()]
        try:
            tool.add(conf, namespaces[0].path, container_id="ctr1")
            assert [(lease["host"], lease["container_id"]) for lease in leases_in(etcd_cluster, prefix, net).values()] \
                == [("warmhost", "ctr1")]
            etcd_cluster.stop(0)
            etcd_cluster.stop(1)
            with pytest.raises(CniCallError) as failed:
                tool.add(conf, namespaces[1].path, container_id="ctr2")
            assert failed.value.code == 11 and namespaces[1].link_names() == ["lo"]
            etcd_cluster.start(0)
            etcd_cluster.start(1)
            etcd_cluster.wait_ready()
            result = tool.add(conf, namespaces[1].path, container_id="ctr2").result
            assert namespaces[1].ping(str(subnet[1])) and result["ips"][0]["address"].startswith(str(subnet[3]))
            for i, ns in enumerate(namespaces):
                tool.delete(conf, ns.path, container_id=f"ctr{i + 1}")
            assert leases_in(etcd_cluster, prefix, net) == {} and _bridge_ports(bridge) == []
        finally:
            tool.cleanup()
            subprocess.run(["ip", "link", "delete", bridge], capture_output=True, check=False)


def test_status_is_50_while_etcd_has_no_quorum(etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    prefix, net, subnet = "/" + unique_name("pfx"), unique_name("net"), unique_subnet(4, 28)
    conf = ipam_conf(net, subnet, store(etcd_cluster, prefix, timeout=1))
    assert ipam_exec(tmp_path, "hosta", "STATUS", conf, "")["_exit"] == 0
    etcd_cluster.stop(0)
    etcd_cluster.stop(2)
    status = ipam_exec(tmp_path, "hosta", "STATUS", conf, "")
    assert status["_exit"] != 0 and status["code"] == 50, status
    etcd_cluster.start(0)
    etcd_cluster.start(2)
    etcd_cluster.wait_ready()
    assert ipam_exec(tmp_path, "hosta", "STATUS", conf, "")["_exit"] == 0


@pytest.mark.skipif(bool(etcd_missing()) or not shutil.which("openssl"), reason="needs etcd and openssl")
def test_tls_with_client_certificates(tmp_path: Path) -> None:
    """An etcd that requires client certificates: allocation works with cacert/cert/key, and
    without the client certificate the call fails (error 11, etcd refuses the handshake)."""
    with start_etcd(tmp_path / "etcd-tls", members=1, tls=True) as cluster:
        assert cluster.tls is not None and cluster.endpoints[0].startswith("https://")
        prefix, net, subnet = "/" + unique_name("pfx"), unique_name("net"), unique_subnet(4, 28)
        conf = ipam_conf(net, subnet, store(cluster, prefix, **cluster.tls))
        added = ipam_exec(tmp_path, "hosta", "ADD", conf, "ctr1")
        assert added["_exit"] == 0, added
        assert [lease["container_id"] for lease in leases_in(cluster, prefix, net).values()] == ["ctr1"]
        no_cert = ipam_conf(net, subnet, store(cluster, prefix, cacert=cluster.tls["cacert"], timeout=1))
        refused = ipam_exec(tmp_path, "hosta", "ADD", no_cert, "ctr2")
        assert refused["_exit"] != 0 and refused["code"] == 11, refused
        assert ipam_exec(tmp_path, "hosta", "DEL", conf, "ctr1")["_exit"] == 0
        assert leases_in(cluster, prefix, net) == {}


def test_a_large_answer_arrives_whole(etcd_cluster: EtcdCluster) -> None:
    """etcd sends answers above a few KiB chunked: the client's HTTP reader reassembles them."""
    from cni_bridge.ipam.etcd import EtcdClient, op_put
    prefix = "/" + unique_name("big")
    client = EtcdClient(etcd_cluster.endpoints)
    client.txn([], [op_put(f"{prefix}/{i:03}", "x" * 300) for i in range(100)])
    got = client.get(prefix + "/", prefix=True)
    assert [kv.key for kv in got] == [f"{prefix}/{i:03}" for i in range(100)]
    assert {kv.value for kv in got} == {b"x" * 300}


def test_two_served_docker_drivers_share_a_pool_in_etcd(etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    """`cni-bridge serve --ipam-store etcd --etcd-endpoints ...` twice (two hosts: own socket,
    state, PYBRIDGE_HOST_ID), gunicorn workers and all: one range, no address twice, and without
    quorum an {"Err"} instead of an address."""
    prefix, subnet = "/" + unique_name("pfx"), unique_subnet(4, 28)
    procs, sockets = [], []
    try:
        for host in ("servea", "serveb"):
            base = tmp_path / host
            sock = base / "pybridge.sock"
            procs.append(subprocess.Popen(
                [str(VENV_BIN / "cni-bridge"), "serve", "--socket", str(sock), "--state-dir", str(base / "state"),
                 "--ipam-data-dir", str(base / "leases"), "--ipam-store", "etcd",
                 "--etcd-endpoints", ",".join(etcd_cluster.endpoints), "--etcd-prefix", prefix,
                 "--etcd-timeout", "2", "--workers", "2", "--threads", "2", "--log-file", str(tmp_path / f"{host}.log"),
                 "--cni-fastpath", "off"], env={**os.environ, "PYBRIDGE_HOST_ID": host}, start_new_session=True,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            sockets.append(sock)
        for proc, sock in zip(procs, sockets):
            assert wait_for(lambda sock=sock: socket_answers(sock), timeout=30), f"{sock} does not answer"
        body = {"AddressSpace": "pybridge-global", "Pool": str(subnet), "Options": {}}
        pools = [plugin_call(sock, "IpamDriver.RequestPool", body)[1]["PoolID"] for sock in sockets]
        got = []
        for i in range(13):  # a /28 without network, broadcast and gateway
            status, answer = plugin_call(sockets[i % 2], "IpamDriver.RequestAddress", {"PoolID": pools[i % 2]})
            assert status == 200 and "Err" not in answer, answer
            got.append(answer["Address"])
        assert len(set(got)) == 13
        status, answer = plugin_call(sockets[0], "IpamDriver.RequestAddress", {"PoolID": pools[0]})
        assert status == 500 and "no free address" in answer["Err"]
        leases = leases_in(etcd_cluster, prefix, f"docker-{subnet.network_address}-28")
        assert sorted(lease["host"] for lease in leases.values()) == ["servea"] * 7 + ["serveb"] * 6
        etcd_cluster.stop(0)
        etcd_cluster.stop(1)
        status, answer = plugin_call(sockets[1], "IpamDriver.ReleaseAddress",
                                     {"PoolID": pools[1], "Address": got[0].split("/")[0]})
        assert status == 500 and "try again" in answer["Err"]
        etcd_cluster.start(0)
        etcd_cluster.start(1)
        etcd_cluster.wait_ready()
        for sock, pool in zip(sockets, pools):
            assert plugin_call(sock, "IpamDriver.ReleasePool", {"PoolID": pool})[0] == 200
        assert leases_in(etcd_cluster, prefix, f"docker-{subnet.network_address}-28") == {}
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
