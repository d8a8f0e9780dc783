"""What a user checks about bandwidth shaping: the qdiscs `tc` shows, the ifb devices on the host,
and the rate a real TCP transfer (iperf3) reaches between two namespaces.

Why iperf3 and the median of a few runs: the rate check is the one the feature promises (within
±20 % of the configured rate), and a 2-core machine busy with other tests can slow one run down;
a run that is too fast would mean no shaping, which noise cannot produce.
"""

from __future__ import annotations

import json
import statistics
import subprocess
from typing import Any

from tests.support.host import run
from tests.support.netns import Netns

IPERF3 = "/usr/bin/iperf3"


def qdiscs(dev: str) -> list[dict[str, Any]]:
    """`tc -j qdisc show dev DEV` ([] when the device is gone)."""
    proc = run(["tc", "-j", "qdisc", "show", "dev", dev], check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    return json.loads(proc.stdout)


def tbf_rate(dev: str) -> int | None:
    """The rate (bits/s) of the tbf at the device's root, None without one (`tc -j` gives
    bytes/s)."""
    for q in qdiscs(dev):
        if q.get("kind") == "tbf" and q.get("root"):
            return int(q["options"]["rate"]) * 8
    return None


def ingress_redirect(dev: str) -> str:
    """`tc filter show dev DEV ingress` (the u32 filter and its mirred action)."""
    return run(["tc", "filter", "show", "dev", dev, "ingress"], check=False).stdout


def ifb_devices() -> list[str]:
    """Names of the ifb devices in the host namespace."""
    proc = run(["ip", "-j", "link", "show", "type", "ifb"], check=False)
    return sorted(link["ifname"] for link in json.loads(proc.stdout or "[]"))


def tcp_rate(client: Netns, server: Netns, server_ip: str, *, reverse: bool = False,
             seconds: int = 4, runs: int = 3) -> float:
    """Median receiver-side rate (bits/s) of `runs` iperf3 TCP transfers: `client` sends to
    `server` (with `reverse`, `server` sends to `client`). The first second is omitted (slow
    start, the bucket's initial burst)."""
    rates = []
    for _ in range(runs):
        proc = server.popen(IPERF3, "-s", "-1", "-B", server_ip, "--forceflush")
        try:
            lines = [proc.stdout.readline() for _ in range(2)]  # a rule, then "Server listening"
            assert "Server listening" in lines[-1], (lines, proc.stderr.read())
            args = [IPERF3, "-c", server_ip, "-t", str(seconds), "-O", "1", "-J"] + (["-R"] if reverse else [])
            out = client.run(*args, timeout=seconds + 30).stdout
        finally:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        rates.append(float(json.loads(out)["end"]["sum_received"]["bits_per_second"]))
    return statistics.median(rates)
