#!/usr/bin/env python3
"""vxlan networks: cross-host against same-host latency and TCP throughput, and ADD time on a
vxlan network against a plain bridge network.

    sudo .venv/bin/python bench/vxlan_bench.py [--adds 20] [--seconds 3]

Two simulated hosts (network namespaces `pbv<pid>h0`, `pbv<pid>h1`, each with its own pybridge
run dir, the plugin exec'd inside with `ip netns exec`) on a switch namespace `pbv<pid>sw`;
containers are namespaces too. Peers are programmed (`cni-bridge vxlan reconcile`). Latency:
median of `ping -i 0.01` round trips; throughput: one iperf3 TCP stream. ADD: median wall time
of exec'd ADDs (one container stays attached on each network, so the bridge and vxlan device
exist already, as on a host where the network is in use). Everything is removed at the end,
also on failure. The numbers depend on the machine's load: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.cnitool import CniTool, bridge_conflist  # noqa: E402

PREFIX = f"pbv{os.getpid() % 100000}"
UNDERLAY = "198.18.254"  # a /24 that exists only inside the bench's namespaces
VNI = 4242


def sh(*argv: str, input: str | None = None, check: bool = True) -> str:
    return subprocess.run(argv, input=input, text=True, capture_output=True, check=check).stdout


def netns_add(name: str) -> str:
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    return name


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.namespaces: list[str] = []
        self.cni: list[CniTool] = []
        self.attached: list[tuple[CniTool, dict, str, str]] = []
        self.servers: list[subprocess.Popen] = []

    def ns(self, name: str) -> str:
        self.namespaces.append(netns_add(f"{PREFIX}{name}"))
        return self.namespaces[-1]

    def setup(self) -> None:
        sw = self.ns("sw")
        sh("ip", "-n", sw, "link", "add", "ul", "type", "bridge")
        sh("ip", "-n", sw, "link", "set", "ul", "up")
        data = self.tmp / "data"
        data.mkdir()
        for i in range(2):
            h = self.ns(f"h{i}")
            run_dir = self.tmp / f"run{i}"
            run_dir.mkdir()
            sh("ip", "link", "add", "ul0", "netns", h, "type", "veth", "peer", "name", f"p{i}", "netns", sw)
            sh("ip", "-n", sw, "link", "set", f"p{i}", "master", "ul", "up")
            sh("ip", "-n", h, "addr", "add", f"{UNDERLAY}.{i + 1}/24", "dev", "ul0")
            sh("ip", "-n", h, "link", "set", "ul0", "up")
            self.cni.append(CniTool(self.tmp / f"cache{i}", data_dir=data, wrapper=["ip", "netns", "exec", h],
                                    env={"PYBRIDGE_RUN_DIR": str(run_dir), "PYBRIDGE_FASTPATH_SOCKET": "off"}))
        self.run_dirs = [self.tmp / "run0", self.tmp / "run1"]

    def conf(self, host: int, name: str, subnet: str, vxlan: bool) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if vxlan:
            extra["vxlan"] = {"vni": VNI, "local": f"{UNDERLAY}.{host + 1}", "dev": "ul0"}
        return bridge_conflist(f"{PREFIX}{name}", bridge=f"{PREFIX}{name}"[:15], subnets=[subnet],
                               data_dir=str(self.cni[host].data_dir), plugin_type="pybridge",
                               ipam_type="pybridge-ipam", cni_version="1.1.0", extra=extra)

    def attach(self, host: int, conf: dict, name: str) -> str:
        ns = self.ns(name)
        result = self.cni[host].add(conf, f"/run/netns/{ns}", container_id=ns).result
        self.attached.append((self.cni[host], conf, ns, ns))
        return result["ips"][0]["address"].split("/")[0]

    def distribute(self) -> None:
        endpoints = []
        for i in range(2):
            out = self.cli(i, "vxlan", "local", str(VNI))
            endpoints += [e for v in json.loads(out) for e in v["endpoints"]]
        for i in range(2):
            self.cli(i, "vxlan", "reconcile", str(VNI), "-", input=json.dumps(endpoints))

    def cli(self, host: int, *args: str, input: str | None = None) -> str:
        return sh("ip", "netns", "exec", self.namespaces[1 + host], "env", f"PYBRIDGE_RUN_DIR={self.run_dirs[host]}",
                  str(Path(sys.executable).with_name("cni-bridge")), *args, input=input)

    def teardown(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()
        for cni, conf, ns, cid in reversed(self.attached):
            cni.delete(conf, f"/run/netns/{ns}", container_id=cid, raise_on_error=False)
        for ns in reversed(self.namespaces):
            for pid in sh("ip", "netns", "pids", ns, check=False).split():
                subprocess.run(["kill", "-9", pid], check=False)
            sh("ip", "netns", "del", ns, check=False)


def ping_ms(ns: str, address: str, count: int = 200) -> float:
    out = sh("ip", "netns", "exec", ns, "ping", "-c", str(count), "-i", "0.01", "-q", address)
    return float(re.search(r"= [\d.]+/([\d.]+)/", out).group(1))  # avg of min/avg/max/mdev


def iperf_gbps(b: Bench, client: str, server: str, address: str, seconds: int) -> float:
    srv = subprocess.Popen(["ip", "netns", "exec", server, "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    b.servers.append(srv)
    for _ in range(50):
        if "5201" in sh("ip", "netns", "exec", server, "ss", "-ltn"):
            break
        time.sleep(0.1)
    out = json.loads(sh("ip", "netns", "exec", client, "iperf3", "-c", address, "-t", str(seconds), "-J"))
    srv.wait(timeout=30)
    return out["end"]["sum_received"]["bits_per_second"] / 1e9


def add_ms(b: Bench, host: int, confs: dict[str, dict], n: int) -> dict[str, float]:
    """Median ADD wall time per network kind, the kinds interleaved (load drifts hit both)."""
    times: dict[str, list[float]] = {label: [] for label in confs}
    for k in range(n):
        for label, conf in confs.items():
            ns = b.ns(f"{label}{k}")
            start = time.perf_counter()
            b.cni[host].add(conf, f"/run/netns/{ns}", container_id=ns)
            times[label].append((time.perf_counter() - start) * 1000)
            b.cni[host].delete(conf, f"/run/netns/{ns}", container_id=ns)
            sh("ip", "netns", "del", ns)
            b.namespaces.remove(ns)
    return {label: statistics.median(t) for label, t in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adds", type=int, default=20, help="ADDs per network kind (default 20)")
    ap.add_argument("--seconds", type=int, default=3, help="iperf3 duration (default 3)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix=PREFIX) as tmp:
        b = Bench(Path(tmp))
        try:
            b.setup()
            vx0, vx1 = b.conf(0, "vx", "10.254.1.0/24", True), b.conf(1, "vx", "10.254.1.0/24", True)
            vx1["plugins"][0]["ipam"]["ranges"][0][0]["rangeStart"] = "10.254.1.128"
            plain = b.conf(0, "pl", "10.254.2.0/24", False)
            b.attach(0, vx0, "ca")
            c_ip = b.attach(0, vx0, "cc")
            b_ip = b.attach(1, vx1, "cb")
            b.attach(0, plain, "cp")
            b.distribute()
            ca, cb, cc = (f"{PREFIX}{n}" for n in ("ca", "cb", "cc"))
            sh("ip", "netns", "exec", ca, "ping", "-c", "3", "-i", "0.2", b_ip)  # warm ARP/FDB
            sh("ip", "netns", "exec", ca, "ping", "-c", "3", "-i", "0.2", c_ip)
            report = {
                "ping_ms_same_host": ping_ms(ca, c_ip), "ping_ms_cross_host": ping_ms(ca, b_ip),
                "tcp_gbps_same_host": iperf_gbps(b, ca, cc, c_ip, args.seconds),
                "tcp_gbps_cross_host": iperf_gbps(b, ca, cb, b_ip, args.seconds),
            }
            adds = add_ms(b, 0, {"ap": plain, "av": vx0}, args.adds)
            report["add_ms_plain"], report["add_ms_vxlan"] = adds["ap"], adds["av"]
            report["add_ratio_vxlan_to_plain"] = report["add_ms_vxlan"] / report["add_ms_plain"]
            print(json.dumps({k: round(v, 3) for k, v in report.items()}, indent=2))
        finally:
            b.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
