#!/usr/bin/env python3
"""pybridge ADD with the etcd lease store against the file store, in one run, and parallel ADDs
from three simulated hosts against one etcd cluster.

    sudo .venv/bin/python bench/etcd_store.py [--runs 40] [--parallel 32]

A private 3-member etcd cluster (tests/support/etcd.py) on loopback ports; pybridge as a user
runs it (lean launchers in front of a fast-path daemon). Part 1: interleaved ADD+DEL cycles of
one network on the file store and the same network on the etcd store (same daemon); prints the
medians and the ratio etcd / file (target <= 1.5). Part 2: three "hosts" (three daemons, each with
its own run dir and PYBRIDGE_HOST_ID) on one network whose leases are in etcd; `--parallel` ADDs
started at once, spread over the three; reports failures and duplicate addresses (target 0 / 0),
then DELs them all. Every name starts with `pbb<run id>`; everything is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cniexec import Plugin  # noqa: E402
from bench.run import Host, free_subnets, log, median  # noqa: E402
from tests.support.etcd import etcd_cluster  # noqa: E402

HOSTS = ("benchhosta", "benchhostb", "benchhostc")


def start_daemon(host: Host, run_dir: Path, host_id: str) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYBRIDGE_RUN_DIR=str(run_dir), PYBRIDGE_HOST_ID=host_id)
    proc = subprocess.Popen([sys.executable, "-m", "cni_bridge.fastpath.server", "--socket",
                             str(run_dir / "cni.sock"), "--log-level", "INFO"], env=env, stdout=subprocess.PIPE,
                            stderr=open(run_dir / "daemon.log", "w"), text=True)
    host.processes.append(proc)
    assert proc.stdout is not None
    if not proc.stdout.readline().startswith("ready"):
        raise RuntimeError("the fast-path daemon did not start: " + (run_dir / "daemon.log").read_text())
    return proc


def network(host: Host, run_id: str, tag: str, subnet: Any, store: dict[str, Any]) -> dict[str, Any]:
    name = f"pbb{run_id}{tag}"
    host.networks.append(name)
    host.bridges.append(name[:15])
    return {"cniVersion": "1.0.0", "name": name, "type": "pybridge", "bridge": name[:15], "isGateway": True,
            "ipMasq": False, "ipam": {"type": "pybridge-ipam", "ranges": [[{"subnet": str(subnet)}]], "store": store}}


def plugin(label: str, bin_dir: Path, config: dict[str, Any], run_dir: Path, host_id: str,
           daemon: subprocess.Popen) -> Plugin:
    env = {"PYBRIDGE_RUN_DIR": str(run_dir), "PYBRIDGE_FASTPATH_SOCKET": str(run_dir / "cni.sock"),
           "PYBRIDGE_HOST_ID": host_id}
    return Plugin(label, str(bin_dir / "pybridge"), config, "eth1", str(bin_dir), env, daemon_pid=daemon.pid)


def cycles(plugins: list[Plugin], netns: str, runs: int, run_id: str, warmup: int = 3) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {p.label: [] for p in plugins}
    for i in range(warmup + runs):
        for p in plugins if i % 2 == 0 else list(reversed(plugins)):
            cid = f"pbb{run_id}-{p.label}-{i}"
            add = p.add(cid, netns).check()
            p.delete(cid, netns).check()
            if i >= warmup:
                out[p.label].append(add.ms)
    return out


def parallel(plugins: list[Plugin], namespaces: list[str], run_id: str) -> dict[str, Any]:
    cids = [f"pbb{run_id}-par-{i}" for i in range(len(namespaces))]
    started = time.perf_counter()
    procs = [(plugins[i % len(plugins)], plugins[i % len(plugins)].start("ADD", cid, ns))
             for i, (cid, ns) in enumerate(zip(cids, namespaces))]
    adds = [p.finish(proc) for p, proc in procs]
    wall = time.perf_counter() - started
    addresses = [a.split("/")[0] for c in adds if c.rc == 0 for a in c.addresses()]
    procs = [(plugins[i % len(plugins)], plugins[i % len(plugins)].start("DEL", cid, ns))
             for i, (cid, ns) in enumerate(zip(cids, namespaces))]
    dels = [p.finish(proc) for p, proc in procs]
    return {"add_wall_ms": wall * 1000, "failures": sum(c.rc != 0 for c in adds),
            "del_failures": sum(c.rc != 0 for c in dels), "duplicates": len(addresses) - len(set(addresses)),
            "addresses": len(addresses),
            "failure_text": [c.stdout.decode(errors="replace")[:300] for c in adds if c.rc != 0][:3]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="measured ADD+DEL cycles per store (default 40)")
    parser.add_argument("--parallel", type=int, default=32, help="parallel ADDs from 3 hosts (default 32)")
    parser.add_argument("--json", type=Path, default=None, help="also write the samples here")
    args = parser.parse_args(argv)
    from cni_bridge.fastpath.launcher import write_launchers

    run_id = secrets.token_hex(2)
    workdir = Path(tempfile.mkdtemp(prefix=f"pbb{run_id}-"))
    host = Host(run_id, workdir)
    results: dict[str, Any] = {"load": os.getloadavg()}
    try:
        with etcd_cluster(workdir / "etcd", members=3) as cluster:
            bin_dir = workdir / "bin"
            bin_dir.mkdir()
            write_launchers(str(bin_dir), sys.executable)
            etcd = {"type": "etcd", "endpoints": cluster.endpoints, "prefix": f"/pbb{run_id}"}
            subnets = free_subnets(3)
            daemons = [start_daemon(host, workdir / f"run-{h}", h) for h in HOSTS]
            netns = host.netns([f"pbb{run_id}ns{i}" for i in range(max(1, args.parallel))])
            file_net = network(host, run_id, "f", subnets[0], {"type": "file", "dataDir": str(workdir / "leases")})
            etcd_net = network(host, run_id, "e", subnets[1], etcd)
            a = workdir / f"run-{HOSTS[0]}"
            flavours = [plugin("file", bin_dir, file_net, a, HOSTS[0], daemons[0]),
                        plugin("etcd", bin_dir, etcd_net, a, HOSTS[0], daemons[0])]
            log(f"ADD+DEL cycles, {args.runs} per store, interleaved")
            samples = cycles(flavours, netns[0], args.runs, run_id)
            results["add_ms"] = {label: median(xs) for label, xs in samples.items()}
            results["ratio"] = results["add_ms"]["etcd"] / results["add_ms"]["file"]
            results["samples"] = samples
            log(f"{args.parallel} parallel ADDs from {len(HOSTS)} hosts")
            shared = network(host, run_id, "p", subnets[2], etcd)
            hosts = [plugin(h, bin_dir, shared, workdir / f"run-{h}", h, d) for h, d in zip(HOSTS, daemons)]
            results["parallel"] = parallel(hosts, netns, run_id)
            results["leases_left"] = len(cluster.get_prefix(f"/pbb{run_id}/ipam/"))
            results["daemon_log_lines"] = sum(len((workdir / f"run-{h}" / "daemon.log").read_text().splitlines())
                                              for h in HOSTS)
    finally:
        host.cleanup()
    add, par = results["add_ms"], results["parallel"]
    print(f"\nload average at start: {' '.join(f'{x:.2f}' for x in results['load'])}; "
          f"daemon log lines: {results['daemon_log_lines']}; lease keys left: {results['leases_left']}")
    print("| measurement | file store | etcd store | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| ADD, median of {args.runs} (fast-path daemon) | {add['file']:.1f} ms | {add['etcd']:.1f} ms "
          f"| {results['ratio']:.2f} | ≤ 1.5 |")
    print(f"| {args.parallel} parallel ADDs from {len(HOSTS)} hosts, one cluster | — | "
          f"{par['add_wall_ms']:.0f} ms wall, {par['failures']} failed, {par['duplicates']} duplicates "
          f"({par['addresses']} addresses) | — | 0 / 0 |")
    if par["failure_text"]:
        print("failures:", *par["failure_text"], sep="\n  ")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    ok = par["failures"] == 0 and par["duplicates"] == 0 and par["del_failures"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
