"""Allocation cost of the pybridge IPAM store vs. the number of existing leases.

Why: issue 3 requires that ADD stays fast when a /16 holds tens of thousands of leases and when a
range is nearly full (no directory scan per ADD). This measures, per scenario, the median and p95
wall time of one `LeaseStore.allocate()` for a new attachment (search + commit: temp file, fsync,
rename, directory fsync), and the same without fsync (the algorithmic part). Each measured lease
is released again (not timed) so the occupancy stays what the row says.

Existing leases are written straight to disk at random addresses (seeded), so the round-robin
cursor really has to skip taken addresses, and synced to disk before timing starts. There is no
cache (bitmap) yet, so the first ADD pays for the one rebuild scan, reported separately.

With --exec it also times whole exec'd ADDs of `pybridge-ipam` and of the Go `host-local`
(/usr/lib/cni) on the same occupancy, for comparison with the reference plugin.

    .venv/bin/python bench/ipam_alloc.py [--samples 200] [--dir /var/tmp] [--exec]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cni_bridge.ipam.config import parse_ipam_config
from cni_bridge.ipam.lease import Lease, encode_owner, lease_name, owner_name
from cni_bridge.ipam.store import LeaseStore

NETWORK = "bench"
HOST_LOCAL = Path("/usr/lib/cni/host-local")

# (label, subnet, existing leases); the /16 has 65,533 leasable addresses, the /24 253.
SCENARIOS = [
    ("/16, empty", "10.20.0.0/16", 0),
    ("/16, 1k leases", "10.20.0.0/16", 1_000),
    ("/16, 10k leases", "10.20.0.0/16", 10_000),
    ("/16, 50k leases", "10.20.0.0/16", 50_000),
    ("/16, nearly full (65,433 of 65,533)", "10.20.0.0/16", 65_433),
    ("/24, nearly full (250 of 253)", "10.20.0.0/24", 250),
]


def prefill(data_dir: Path, subnet: str, count: int, seed: int = 1) -> None:
    """Write `count` leases (and owner files) at random addresses, pybridge and host-local style."""
    net = ipaddress.ip_network(subnet)
    gateway = net.network_address + 1
    candidates = [a for a in net.hosts() if a != gateway]
    ours, theirs = data_dir / "ours" / NETWORK, data_dir / "host-local" / NETWORK
    ours.mkdir(parents=True)
    theirs.mkdir(parents=True)
    for i, address in enumerate(random.Random(seed).sample(candidates, count)):
        cid = f"prefill{i:06d}"
        lease = Lease(address, net, gateway, cid, "eth0", time.time(), 0)
        (ours / lease_name(address)).write_bytes(lease.encode())
        (ours / owner_name(cid, "eth0")).write_bytes(encode_owner(cid, "eth0", [address]))
        (theirs / str(address)).write_text(f"{cid}\r\neth0")


def time_allocations(data_dir: Path, subnet: str, samples: int, durable: bool) -> list[float]:
    """Seconds per allocate() of a fresh attachment, each released afterwards (untimed)."""
    cfg = parse_ipam_config({"ranges": [[{"subnet": subnet}]], "dataDir": str(data_dir)})
    store = LeaseStore(data_dir, NETWORK, durable=durable)
    times = []
    for i in range(samples):
        cid = f"bench{'d' if durable else 'n'}{i}"
        start = time.perf_counter()
        store.allocate(cid, "eth0", cfg)
        times.append(time.perf_counter() - start)
        store.release(cid, "eth0")
    return times


def first_allocation(data_dir: Path, subnet: str) -> float:
    """The first ADD with no cache: pays for the one directory scan that rebuilds the bitmap."""
    cfg = parse_ipam_config({"ranges": [[{"subnet": subnet}]], "dataDir": str(data_dir)})
    store = LeaseStore(data_dir, NETWORK)
    start = time.perf_counter()
    store.allocate("first", "eth0", cfg)
    elapsed = time.perf_counter() - start
    store.release("first", "eth0")
    return elapsed


def time_exec(plugin: str, data_dir: Path, subnet: str, samples: int) -> list[float]:
    """Wall time of whole exec'd ADDs (each followed by an untimed DEL)."""
    conf = json.dumps({"cniVersion": "1.0.0", "name": NETWORK, "type": "bridge",
                       "ipam": {"type": plugin, "dataDir": str(data_dir), "ranges": [[{"subnet": subnet}]]}})
    exe = shutil.which("pybridge-ipam", path=os.path.dirname(sys.executable)) if plugin == "pybridge-ipam" \
        else str(HOST_LOCAL)
    times = []
    for i in range(samples):
        env = {**os.environ, "CNI_CONTAINERID": f"exec{i}", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0",
               "CNI_PATH": "/usr/lib/cni"}
        start = time.perf_counter()
        subprocess.run([exe], input=conf.encode(), env={**env, "CNI_COMMAND": "ADD"}, check=True,
                       capture_output=True)
        times.append(time.perf_counter() - start)
        subprocess.run([exe], input=conf.encode(), env={**env, "CNI_COMMAND": "DEL"}, check=True,
                       capture_output=True)
    return times


def us(values: list[float], q: float = 0.5) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6:,.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200, help="allocations timed per scenario")
    parser.add_argument("--dir", default=None, help="where to create the stores (default: $TMPDIR)")
    parser.add_argument("--exec", action="store_true", help="also time exec'd pybridge-ipam and host-local ADDs")
    parser.add_argument("--exec-samples", type=int, default=15)
    args = parser.parse_args()

    header = ["scenario", "median µs", "p95 µs", "median µs (no fsync)", "p95 µs (no fsync)",
              "first ADD, cache rebuild µs"]
    if args.exec:
        header += ["exec pybridge-ipam ms", "exec host-local ms"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label, subnet, count in SCENARIOS:
        with tempfile.TemporaryDirectory(dir=args.dir, prefix="ipam-bench-") as tmp:
            root = Path(tmp)
            prefill(root, subnet, count)
            os.sync()  # else the prefill's writeback is billed to the first measured fsyncs
            ours = root / "ours"
            rebuild = first_allocation(ours, subnet)
            durable = time_allocations(ours, subnet, args.samples, durable=True)
            fast = time_allocations(ours, subnet, args.samples, durable=False)
            row = [label, us(durable), us(durable, 0.95), us(fast), us(fast, 0.95), us([rebuild])]
            if args.exec:
                mine = time_exec("pybridge-ipam", ours, subnet, args.exec_samples)
                theirs = time_exec("host-local", root / "host-local", subnet, args.exec_samples) \
                    if HOST_LOCAL.exists() else []
                row += [f"{statistics.median(mine) * 1e3:.1f}",
                        f"{statistics.median(theirs) * 1e3:.1f}" if theirs else "-"]
        print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
