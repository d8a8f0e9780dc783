"""Docker part of the benchmark: `docker run` until the container's first successful ping of its
gateway, on a pybridge network vs. a network of Docker's built-in `bridge` driver.

Reuses tests/support/dockerd.py: a private dockerd in its own network and mount namespaces (the
host's packet filter and an installed pybridge driver are left alone) and `cni-bridge serve` next
to it. Skips, with the reason, when that cannot run here (no dockerd, ...).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def _first_ping(engine, network: str, gateway: str, image: str) -> float:
    """Seconds from `docker run` to the container printing its first successful ping."""
    env = {**os.environ, "DOCKER_HOST": engine.host}
    from tests.support.dockerd import DOCKER_CLI
    script = f"until ping -c1 -W1 {gateway} >/dev/null 2>&1; do :; done; echo pong"
    started = time.perf_counter()
    proc = subprocess.Popen([DOCKER_CLI, "run", "--rm", "--network", network, image, "sh", "-c", script],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - started
    _, err = proc.communicate(timeout=120)
    if line.strip() != "pong":
        raise RuntimeError(f"docker run on {network} failed: {err.strip()[:300]}")
    return elapsed


def measure(run_id: str, quick: bool) -> dict[str, Any]:
    try:
        from tests.support import dockerd
    except Exception as exc:  # noqa: BLE001 - the reason goes into the report
        return {"skipped": f"tests/support/dockerd.py unusable: {exc}"}
    if not dockerd.DOCKERD.exists():
        return {"skipped": "dockerd is not installed (apt-get install docker.io)"}
    runs = 3 if quick else 10
    scratch = Path(tempfile.mkdtemp(prefix=f"pbb{run_id}-docker-"))
    result: dict[str, Any] = {"runs": runs}
    (scratch / "engine").mkdir()
    try:
        with dockerd.docker_engine(scratch / "engine") as engine, \
                dockerd.pybridge_driver(engine, scratch / "driver") as driver:
            image = dockerd.ensure_image(engine)
            nets = {}
            base = ipaddress.ip_network("10.62.0.0/16").subnets(new_prefix=24)
            for kind, args in (("builtin", ["-d", "bridge"]),
                               ("pybridge", ["-d", "pybridge", "--ipam-driver", "pybridge"])):
                subnet = next(base)
                gateway = str(subnet.network_address + 1)
                name = f"pbb{run_id}{kind[:3]}"
                engine.docker("network", "create", *args, "--subnet", str(subnet), "--gateway", gateway, name)
                nets[kind] = (name, gateway)
            try:
                samples: dict[str, list[float]] = {"builtin": [], "pybridge": []}
                for i in range(runs + 1):  # the first round warms image and driver caches
                    for kind in (("builtin", "pybridge") if i % 2 == 0 else ("pybridge", "builtin")):
                        secs = _first_ping(engine, nets[kind][0], nets[kind][1], image)
                        if i:
                            samples[kind].append(secs * 1000)
                result["samples_ms"] = samples
                result["builtin_ms"] = statistics.median(samples["builtin"])
                result["pybridge_ms"] = statistics.median(samples["pybridge"])
                if driver.proc is not None:
                    pids = _tree(driver.proc.pid)
                    result["rss_mib"] = sum(_rss_kib(p) for p in pids) / 1024
                    result["processes"] = len(pids)
            finally:
                for name, _ in nets.values():
                    engine.docker("network", "rm", name, check=False)
    except Exception as exc:  # noqa: BLE001 - a broken Docker setup must not lose the CNI results
        result = {"skipped": f"{exc.__class__.__name__}: {str(exc).strip()[:300]}"}
    finally:
        subprocess.run(["rm", "-rf", str(scratch)], check=False)
    return result
