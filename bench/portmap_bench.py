#!/usr/bin/env python3
"""ADD/DEL with one published port against ADD/DEL without, pybridge and Go side by side.

    sudo .venv/bin/python bench/portmap_bench.py [--runs 30] [--published 1000]

pybridge publishes natively (`capabilities.portMappings`, runtimeConfig.portMappings, through
the fast-path daemon as installed); Go is `bridge` + `host-local` with the `portmap` plugin
chained after it (prevResult handed on, DEL in reverse, as libcni does). Calls of all four
flavours are interleaved. Then the same pybridge ADD/DEL with `--published` other ports already
published on the host (the shared table's maps hold them: the ADD must stay flat).
Then the same once more with another container (no port) attached to each pybridge network for
the whole phase (a network that keeps a member keeps its entries in the ports table: the usual
case). Everything is named pbb<run id>, torn down at the end (bench/run.py's Host), also on failure.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cniexec import Call, Plugin  # noqa: E402
from bench.run import GO_DIR, Run, daemon_times, log  # noqa: E402

HOST_PORT = 47001
PORTMAP = [{"hostPort": HOST_PORT, "containerPort": 80, "protocol": "tcp"}]


class GoChain:
    """`bridge` then `portmap`, each exec'd like cniexec.Plugin; times are the sum."""

    def __init__(self, bridge: Plugin, portmap_binary: str) -> None:
        self.bridge = bridge
        self.label = "Go bridge+host-local+portmap"
        self.portmap = Plugin(self.label, portmap_binary, {}, bridge.ifname, bridge.cni_path)
        self.results: dict[str, Any] = {}

    def _portmap_config(self, prev: dict[str, Any]) -> dict[str, Any]:
        return {"cniVersion": self.bridge.config["cniVersion"], "name": self.bridge.config["name"],
                "type": "portmap", "capabilities": {"portMappings": True},
                "runtimeConfig": {"portMappings": PORTMAP}, "prevResult": prev}

    def add(self, cid: str, netns: str) -> Call:
        first = self.bridge.add(cid, netns).check()
        self.results[cid] = first.result()
        self.portmap.config = self._portmap_config(self.results[cid])
        second = self.portmap.add(cid, netns).check()
        second.seconds += first.seconds
        return second

    def delete(self, cid: str, netns: str) -> Call:
        self.portmap.config = self._portmap_config(self.results.pop(cid))
        first = self.portmap.delete(cid, netns).check()
        second = self.bridge.delete(cid, netns).check()
        second.seconds += first.seconds
        return second


def publish_many(run_id: str, count: int) -> str:
    """`count` other published ports on the host, owned by one bench owner (one transaction)."""
    from cni_bridge.firewall import portmap
    owner = f"pbb{run_id}fill/none"
    target = ipaddress.ip_address("10.255.255.254")
    maps = [portmap.PortMapping("tcp", 30000 + i, target, 80) for i in range(count)]
    portmap.publish(owner, None, [], maps)
    return owner


def spread(samples: list[float]) -> str:
    q1, median, q3 = statistics.quantiles(samples, n=4)
    return f"{median:.1f} ms [{q1:.1f}-{q3:.1f}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--published", type=int, default=1000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    run = Run(argparse.Namespace())
    owner = None
    try:
        run.install()
        os.symlink(GO_DIR / "portmap", run.bin / "portmap")
        run.start_daemon()
        py_plain = run.py_plugin("a", suffix=" (no port)")
        py_port = run.py_plugin("b", suffix=" (1 port)")
        py_port.config["capabilities"] = {"portMappings": True}
        py_port.config["runtimeConfig"] = {"portMappings": PORTMAP}
        go_plain = run.go_plugin("a", suffix=" (no port)")
        go_port = GoChain(run.go_plugin("b"), str(run.bin / "portmap"))
        flavours = [py_plain, py_port, go_plain, go_port]
        names = [f"pbb{run.run_id}n{i}" for i in range(len(flavours))]
        paths = run.host.netns(names)
        netns = {f.label: p for f, p in zip(flavours, paths)}
        labels = {py_plain.config["name"]: py_plain.label, py_port.config["name"]: py_port.label}
        log(f"{args.runs} interleaved ADD/DEL cycles per flavour")
        start = run.daemon_log.stat().st_size
        results = {"empty": run.cycles(flavours, netns, args.runs, "e", warmup=3)}
        inside = {"empty": daemon_times(run.daemon_log, start, labels, skip=3)}
        log(f"publishing {args.published} other ports, then pybridge again")
        started = time.perf_counter()
        owner = publish_many(run.run_id, args.published)
        results["fill_seconds"] = time.perf_counter() - started
        start = run.daemon_log.stat().st_size
        results["published"] = run.cycles([py_plain, py_port], netns, args.runs, "f", warmup=3)
        inside["published"] = daemon_times(run.daemon_log, start, labels, skip=3)
        log("one more container (no port) stays on each pybridge network, then pybridge again")
        keepers = [replace(p, config={k: v for k, v in p.config.items() if k != "runtimeConfig"})
                   for p in (py_plain, py_port)]
        for keeper, path in zip(keepers, run.host.netns([f"pbb{run.run_id}k{i}" for i in range(2)])):
            keeper.add(f"pbb{run.run_id}-keeper", path).check()
        start = run.daemon_log.stat().st_size
        results["kept"] = run.cycles([py_plain, py_port], netns, args.runs, "k", warmup=3)
        inside["kept"] = daemon_times(run.daemon_log, start, labels, skip=3)
        for keeper, path in zip(keepers, [f"/run/netns/pbb{run.run_id}k{i}" for i in range(2)]):
            keeper.delete(f"pbb{run.run_id}-keeper", path).check()
    finally:
        from cni_bridge.firewall import portmap
        if owner:
            portmap.unpublish(owner)
        for plugin in (py_plain, py_port) if "py_port" in locals() else ():
            portmap.drop_network(plugin.config["name"], plugin.config["bridge"])  # after a failure
        run.host.cleanup()
    med = {k: {label: {c: statistics.median(v[c]) for c in ("ADD", "DEL")} for label, v in r.items()}
           for k, r in results.items() if isinstance(r, dict)}
    print(json.dumps(med, indent=1))
    e, f = med["empty"], med["published"]
    rows = [("pybridge", py_plain.label, py_port.label, e), ("Go", go_plain.label, go_port.label, e),
            (f"pybridge, {args.published} ports published", py_plain.label, py_port.label, f),
            ("pybridge, + another container on the network", py_plain.label, py_port.label, med["kept"])]
    print("\n| flavour | ADD no port | ADD 1 port | ratio | DEL no port | DEL 1 port | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, plain, port, m in rows:
        print(f"| {name} | {m[plain]['ADD']:.1f} ms | {m[port]['ADD']:.1f} ms | {m[port]['ADD'] / m[plain]['ADD']:.2f} "
              f"| {m[plain]['DEL']:.1f} ms | {m[port]['DEL']:.1f} ms | {m[port]['DEL'] / m[plain]['DEL']:.2f} |")
    print(f"\npybridge ADD with 1 port, {args.published} published vs none: "
          f"{f[py_port.label]['ADD'] / e[py_port.label]['ADD']:.2f}x; "
          f"pybridge / Go with a port: ADD {e[py_port.label]['ADD'] / e[go_port.label]['ADD']:.2f}, "
          f"DEL {e[py_port.label]['DEL'] / e[go_port.label]['DEL']:.2f}")
    print("\nspread (quartiles) and the time inside the fast-path daemon (handler.handle), medians:")
    for phase in ("empty", "published", "kept"):
        for label in (py_plain.label, py_port.label):
            print(f"  {phase:9} {label:22} " + "; ".join(
                f"{c} {spread(results[phase][label][c])}, inside {statistics.median(inside[phase][label][c]):.2f} ms"
                for c in ("ADD", "DEL")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
