#!/usr/bin/env python3
"""pybridge vs the Go reference plugins (`bridge` + `host-local`, ipMasq on), side by side.

    sudo .venv/bin/python bench/run.py --out bench/results            # full run, < 20 min
    sudo .venv/bin/python bench/run.py --out bench/results --quick    # < 3 min

Writes <out>/results.md (medians and ratios pybridge / Go), <out>/results.json (every sample)
and <out>/latency_vs_attached.png, and the table of ratios with date, load and method to
bench/RESULTS.md (--summary), the file the documentation links to. Containers are network namespaces (`ip netns add`); every
name starts with `pbb<run id>`, all traffic stays inside them, and everything is removed at the
end, also on failure or Ctrl-C. pybridge runs as a user would install it: lean launchers
(`python -m cni_bridge.fastpath.launcher`) in front of the fast-path daemon
(`python -m cni_bridge.fastpath.server`), both started here on a private socket and run dir.

Order: ADD/DEL latency on empty networks (both plugins' calls interleaved); 32 parallel ADDs;
scaling: pybridge's ladder 0/250/500/1000 alone on the host, its containers detached, Go's
ladder alone, then pybridge's attached again next to Go's (a stress point, reported); Docker
`docker run` to first ping against the built-in bridge driver; the daemon's memory and idle CPU.
(the plugins `pip install` writes against the launchers: bench/entry_points.py.)
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cniexec import Call, Plugin  # noqa: E402

GO_DIR = Path("/usr/lib/cni")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, input=input)


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


class Host:
    """Everything this run creates on the host, so that `cleanup` can remove it all."""

    def __init__(self, run_id: str, workdir: Path) -> None:
        self.run_id = run_id
        self.workdir = workdir
        self.namespaces: list[str] = []
        self.bridges: list[str] = []
        self.networks: list[str] = []   # pybridge network names (nft tables, FORWARD rules)
        self.go_networks: list[str] = []  # Go network names (iptables nat chains)
        self.processes: list[subprocess.Popen] = []

    def netns(self, names: list[str]) -> list[str]:
        """Create namespaces in batches (one `ip -batch` exec per 500)."""
        for i in range(0, len(names), 500):
            chunk = names[i:i + 500]
            self.namespaces += chunk
            sh("ip", "-batch", "-", input="".join(f"netns add {n}\n" for n in chunk))
        return [f"/run/netns/{n}" for n in names]

    def cleanup(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if self.namespaces:
            mine = [n for n in self.namespaces if n.startswith(f"pbb{self.run_id}")]
            for i in range(0, len(mine), 500):
                sh("ip", "-batch", "-", check=False, input="".join(f"netns del {n}\n" for n in mine[i:i + 500]))
        remove_go_iptables(self.go_networks)
        remove_pybridge_firewall(self.networks)
        for bridge in self.bridges:
            sh("ip", "link", "del", bridge, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


def remove_go_iptables(networks: list[str]) -> None:
    """The Go bridge plugin leaves one nat chain + POSTROUTING rule per container; remove ours
    in one iptables-restore (a DEL per filler container would take minutes)."""
    if not networks or shutil.which("iptables-save") is None:
        return
    text = sh("iptables", "-t", "nat", "-S", check=False).stdout
    tags = [f'name: \\"{n}\\"' for n in networks]
    lines, chains = [], set()
    for rule in text.splitlines():
        if not (rule.startswith("-A ") and any(t in rule for t in tags)):
            continue
        if rule.startswith("-A POSTROUTING"):
            lines.append("-D" + rule[2:])
            m = re.search(r"-j (CNI-[0-9a-f]+)", rule)
            if m:
                chains.add(m.group(1))
        elif rule.startswith("-A CNI-"):  # a chain whose jump a failed parallel DEL already removed
            chains.add(rule.split()[1])
    if not lines and not chains:
        return
    script = ["*nat", *lines, *(f"-F {c}" for c in sorted(chains)), *(f"-X {c}" for c in sorted(chains)), "COMMIT", ""]
    sh("iptables-restore", "--noflush", check=False, input="\n".join(script))


def remove_pybridge_firewall(networks: list[str]) -> None:
    if not networks:
        return
    from cni_bridge import firewall
    for name in networks:
        firewall.delete_table(name, None)
        for binary in ("iptables", "ip6tables"):
            if shutil.which(binary) is None:
                continue
            text = sh(binary, "-t", "filter", "-S", "FORWARD", check=False).stdout
            for rule in text.splitlines():
                if f"pybridge:{name}" in rule and rule.startswith("-A FORWARD"):
                    sh(binary, "-t", "filter", "-D", *split_rule(rule[3:]), check=False)


def split_rule(rule: str) -> list[str]:
    import shlex
    return shlex.split(rule)


def free_subnets(count: int) -> list[ipaddress.IPv4Network]:
    """/16s in 10.32.0.0/11 that no route on the host touches (outside the test suite's 10.128.0.0/9)."""
    routes = sh("ip", "-4", "route", "show", "table", "all", check=False).stdout
    used = []
    for word in re.findall(r"\b(\d+\.\d+\.\d+\.\d+(?:/\d+)?)\b", routes):
        try:
            used.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            pass
    out = []
    for net in ipaddress.ip_network("10.32.0.0/11").subnets(new_prefix=16):
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            out.append(net)
        if len(out) == count:
            return out
    raise SystemExit("no free 10.32.0.0/11 subnets for the benchmark networks")


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = secrets.token_hex(2)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"pbb{self.run_id}-"))
        self.host = Host(self.run_id, self.workdir)
        self.bin = self.workdir / "bin"
        self.run_dir = self.workdir / "run"
        self.socket = self.run_dir / "cni.sock"
        self.results: dict[str, Any] = {"notes": []}
        self.subnets = free_subnets(8)
        self._subnet = 0
        self.daemon: subprocess.Popen | None = None

    # --- set-up ----------------------------------------------------------------------------
    def install(self) -> None:
        from cni_bridge.fastpath.launcher import write_launchers
        self.bin.mkdir(parents=True)
        self.run_dir.mkdir(parents=True)
        write_launchers(str(self.bin), sys.executable)
        for name in ("bridge", "host-local"):
            os.symlink(GO_DIR / name, self.bin / name)

    def start_daemon(self) -> None:
        env = dict(os.environ, PYBRIDGE_RUN_DIR=str(self.run_dir))
        self.daemon_log = self.workdir / "daemon.log"
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "cni_bridge.fastpath.server", "--socket", str(self.socket),
             "--log-level", "INFO"],  # one line per request with its time inside the daemon
            env=env, stdout=subprocess.PIPE, stderr=open(self.daemon_log, "w"), text=True)
        self.host.processes.append(self.daemon)
        assert self.daemon.stdout is not None
        line = self.daemon.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError("the fast-path daemon did not start: " + (self.workdir / "daemon.log").read_text())

    def _network(self, tag: str, main: str, ipam: str, registry: list[str]) -> dict[str, Any]:
        """Same config for both plugins (ipMasq on), on a fresh /16 and a fresh bridge."""
        subnet = self.subnets[self._subnet]
        self._subnet += 1
        name = f"pbb{self.run_id}{tag}"
        registry.append(name)
        self.host.bridges.append(name[:15])
        return {"cniVersion": "1.0.0", "name": name, "type": main, "bridge": name[:15],
                "isGateway": True, "ipMasq": True,
                "ipam": {"type": ipam, "ranges": [[{"subnet": str(subnet)}]], "dataDir": str(self.workdir / ipam)}}

    def go_plugin(self, tag: str, suffix: str = "") -> Plugin:
        config = self._network("g" + tag, "bridge", "host-local", self.host.go_networks)
        return Plugin("Go bridge+host-local" + suffix, str(self.bin / "bridge"), config, "eth0", str(self.bin))

    def py_plugin(self, tag: str, fast_path: bool = True, suffix: str = "") -> Plugin:
        config = self._network("p" + tag, "pybridge", "pybridge-ipam", self.host.networks)
        env = {"PYBRIDGE_RUN_DIR": str(self.run_dir),
               "PYBRIDGE_FASTPATH_SOCKET": str(self.socket) if fast_path else "off"}
        label = ("pybridge" if fast_path else "pybridge (no daemon)") + suffix
        return Plugin(label, str(self.bin / "pybridge"), config, "eth1", str(self.bin), env,
                      daemon_pid=self.daemon.pid if fast_path and self.daemon else None)

    # --- measurements ----------------------------------------------------------------------
    def cycles(self, plugins: list[Plugin], netns: dict[str, str], runs: int, tag: str,
               warmup: int = 2) -> dict[str, dict[str, list[float]]]:
        """ADD then DEL of a fresh container id, `runs` times per plugin, interleaved (the order
        alternates every round so that neither plugin always runs on a warmer cache)."""
        out = {p.label: {"ADD": [], "DEL": [], "ADD_cpu": [], "DEL_cpu": []} for p in plugins}
        for i in range(warmup + runs):
            order = plugins if i % 2 == 0 else list(reversed(plugins))
            for p in order:
                cid = f"pbb{self.run_id}-{tag}-{i}"
                a = p.add(cid, netns[p.label]).check()
                d = p.delete(cid, netns[p.label]).check()
                if i >= warmup:
                    out[p.label]["ADD"].append(a.ms)
                    out[p.label]["DEL"].append(d.ms)
                    out[p.label]["ADD_cpu"].append(a.cpu * 1000)
                    out[p.label]["DEL_cpu"].append(d.cpu * 1000)
        return out

    def fill(self, plugin: Plugin, namespaces: list[str], start: int, stop: int) -> float:
        """Attach containers start..stop-1 (4 at a time, like a busy node); returns seconds."""
        t = time.perf_counter()

        def one(i: int) -> Call:
            return plugin.add(f"pbb{self.run_id}-fill-{i}", namespaces[i]).check()

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, range(start, stop)))
        return time.perf_counter() - t

    def ladder(self, plugin: Plugin, empty: Plugin, *, checkpoints: list[int], fillers: list[str],
               probe: dict[str, str], scale_runs: int, settle: float, budget: float | None) -> int:
        """Attach `plugin`'s containers up to each checkpoint and time ADD+DEL cycles on its full
        and on its empty network, interleaved. Stops early once attaching has taken `budget`
        seconds (the Go plugin at 1,000 containers). Returns how many are attached at the end."""
        attached, spent = 0, 0.0
        for cp in checkpoints:
            if attached < cp:
                log(f"scaling: attaching {attached}..{cp} to {plugin.label}")
                secs = self.fill(plugin, fillers, attached, cp)
                spent += secs
                attached = cp
                self.results.setdefault("fill_seconds", {}).setdefault(plugin.label, {})[cp] = secs
                time.sleep(settle)  # a node with N containers is not in the middle of attaching them
            log(f"scaling: {scale_runs} cycles of {plugin.label} at {cp} attached")
            self.results.setdefault("load_at", {}).setdefault(plugin.label, {})[cp] = os.getloadavg()[0]
            log_start = self.daemon_log.stat().st_size
            res = self.cycles([plugin, empty], probe, scale_runs, f"s{cp}", warmup=2)
            for label, samples in res.items():
                self.results["scaling"][label][cp] = samples
            if plugin.daemon_pid:
                self.results["daemon_ms"][cp] = daemon_times(
                    self.daemon_log, log_start, {plugin.config["name"]: plugin.label, empty.config["name"]: empty.label})
            if budget is not None and spent > budget and cp != checkpoints[-1]:
                self.results["notes"].append(
                    f"{plugin.label} was measured up to {cp} attached containers only: attaching them took "
                    f"{spent:.0f} s (budget {budget:.0f} s, --go-fill-budget).")
                break
        return attached

    def detach(self, plugin: Plugin, namespaces: list[str], count: int) -> None:
        """DEL the filler containers 0..count-1 (4 at a time)."""
        def one(i: int) -> Call:
            return plugin.delete(f"pbb{self.run_id}-fill-{i}", namespaces[i]).check()

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, range(count)))

    def parallel(self, plugin: Plugin, namespaces: list[str], tag: str) -> dict[str, Any]:
        """N ADDs started at once on one network; then N DELs at once."""
        n = len(namespaces)
        cids = [f"pbb{self.run_id}-{tag}-{i}" for i in range(n)]
        t = time.perf_counter()
        procs = [plugin.start("ADD", cid, ns) for cid, ns in zip(cids, namespaces)]
        adds = [plugin.finish(p) for p in procs]
        add_wall = time.perf_counter() - t
        failures = [c for c in adds if c.rc != 0]
        addrs = [a.split("/")[0] for c in adds if c.rc == 0 for a in c.addresses()]
        t = time.perf_counter()
        procs = [plugin.start("DEL", cid, ns) for cid, ns in zip(cids, namespaces)]
        dels = [plugin.finish(p) for p in procs]
        del_wall = time.perf_counter() - t
        return {"add_wall_ms": add_wall * 1000, "del_wall_ms": del_wall * 1000,
                "failures": len(failures) + sum(1 for c in dels if c.rc != 0),
                "failure_text": [c.stdout.decode(errors="replace")[:300] for c in failures[:3]],
                "duplicates": len(addrs) - len(set(addrs)), "addresses": len(addrs)}

    # --- the whole run ---------------------------------------------------------------------
    def execute(self) -> None:
        a = self.args
        self.install()
        self.start_daemon()
        R = 8 if a.quick else 30
        checkpoints = [0, 50, 100] if a.quick else [0, 250, 500, 1000]
        checkpoints = [c for c in checkpoints if c <= a.attached] or [0]
        if a.attached not in checkpoints:
            checkpoints.append(a.attached)
        scale_runs = 6 if a.quick else 15
        settle = 3.0 if a.quick else 10.0
        self.results["config"] = {"quick": a.quick, "runs": R, "checkpoints": checkpoints,
                                  "scale_runs": scale_runs, "parallel": a.parallel,
                                  "load_before": os.getloadavg(), "cpus": os.cpu_count(),
                                  "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                  "kernel": platform.release(), "python": platform.python_version()}

        # 1. ADD / DEL latency on an empty network, plus the in-process path for reference.
        go, py = self.go_plugin("a"), self.py_plugin("a")
        ns = self.host.netns([f"pbb{self.run_id}pr{i}" for i in range(3)])
        probe = {go.label: ns[0], py.label: ns[1]}
        log(f"latency: {R} ADD+DEL cycles each, interleaved")
        self.results["latency"] = self.cycles([go, py], probe, R, "lat")
        nodaemon = self.py_plugin("n", fast_path=False)
        log(f"latency without the daemon (in-process fallback): {max(3, R // 3)} cycles")
        self.results["latency_nodaemon"] = self.cycles([nodaemon], {nodaemon.label: ns[2]}, max(3, R // 3), "nod", 1)

        # 2. N parallel ADDs on one (fresh) network, before the host fills up with containers.
        par_runs = 2 if a.quick else 5
        pgo, ppy = self.go_plugin("x"), self.py_plugin("x")
        pns = self.host.netns([f"pbb{self.run_id}x{i}" for i in range(a.parallel)])
        log(f"parallel: {a.parallel} ADDs at once, {par_runs} rounds each")
        self.results["parallel"] = {pgo.label: [], ppy.label: []}
        for i in range(par_runs):
            for p in ([pgo, ppy] if i % 2 == 0 else [ppy, pgo]):
                self.results["parallel"][p.label].append(self.parallel(p, pns, f"par{i}"))

        # 3. Scaling: ADD latency while N containers are attached to the network. Each plugin
        # climbs its ladder alone on the host (a node runs one plugin per network: the other
        # plugin's containers and calls would add their own kernel work to the timings), and
        # cycles on a second, always empty network of its own in the same interleaved rounds:
        # "with 0 attached" measured in the same minutes as "with N", so that the growth is not
        # the load of the machine drifting between the checkpoints. Then both plugins' containers
        # together, as a stress point (reported, no target).
        ego, epy = self.go_plugin("e", suffix=EMPTY), self.py_plugin("e", suffix=EMPTY)
        ens = self.host.netns([f"pbb{self.run_id}pe{i}" for i in range(2)])
        probe.update({ego.label: ens[0], epy.label: ens[1]})
        self.results["scaling"] = {go.label: {}, py.label: {}, ego.label: {}, epy.label: {}}
        self.results["daemon_ms"] = {}
        fillers = self.host.netns([f"pbb{self.run_id}f{i}" for i in range(checkpoints[-1])])
        ladder = dict(checkpoints=checkpoints, fillers=fillers, probe=probe, scale_runs=scale_runs, settle=settle)
        top_py = self.ladder(py, epy, budget=None, **ladder)
        log(f"scaling: detaching pybridge's {top_py} containers")
        self.detach(py, fillers, top_py)
        top_go = self.ladder(go, ego, budget=a.go_fill_budget, **ladder)
        self.results["go_capped_at"] = top_go if top_go < checkpoints[-1] else None
        log(f"scaling: attaching pybridge's {top_py} again, next to Go's {top_go}: both measured")
        self.fill(py, fillers, 0, top_py)
        time.sleep(settle)
        log_start = self.daemon_log.stat().st_size
        self.results["shared"] = {"go_attached": top_go, "py_attached": top_py, "load": os.getloadavg()[0],
                                  "samples": self.cycles([go, py, ego, epy], probe, scale_runs, "sh", warmup=2),
                                  "daemon_ms": daemon_times(self.daemon_log, log_start, {py.config["name"]: py.label})}
        self.results["notes"].append(
            f"Scaling points are measured {settle:.0f} s after the attach burst that reached them (the "
            "kernel's asynchronous work for hundreds of new interfaces would otherwise be timed too).")

        # 4. Docker (skips with a reason when it cannot run here).
        if a.skip_docker:
            self.results["docker"] = {"skipped": "--skip-docker"}
        else:
            from bench import docker_bench
            log("docker: docker run -> first ping")
            self.results["docker"] = docker_bench.measure(self.run_id, quick=a.quick)

        # 5. The daemon: resident memory and idle CPU.
        self.results["daemon"] = daemon_usage(self.daemon.pid, 2.0 if a.quick else 5.0)


EMPTY = " (empty network)"
_REQUEST_LOG = re.compile(r"pybridge (ADD|DEL) net=(\S+) .*? ([0-9.]+)ms ")


def daemon_times(path: Path, start: int, networks: dict[str, str],
                 skip: int = 2) -> dict[str, dict[str, list[float]]]:
    """Time inside the daemon (handler.handle) per request logged after byte `start`, by plugin
    label, without the first `skip` (warm-up) of each: tells the plugin's own work apart from
    exec, scheduling and the client."""
    out: dict[str, dict[str, list[float]]] = {label: {"ADD": [], "DEL": []} for label in networks.values()}
    with open(path, errors="replace") as f:
        f.seek(start)
        for line in f:
            m = _REQUEST_LOG.search(line)
            if m and m.group(2) in networks:
                out[networks[m.group(2)]][m.group(1)].append(float(m.group(3)))
    return {label: {cmd: xs[skip:] for cmd, xs in d.items()} for label, d in out.items()}


def daemon_usage(pid: int, seconds: float) -> dict[str, Any]:
    def cpu() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    before = cpu()
    time.sleep(seconds)
    return {"rss_mib": rss / 1024, "idle_cpu_percent": (cpu() - before) / seconds * 100, "idle_seconds": seconds}


# --- report --------------------------------------------------------------------------------
def fmt(x: float | None, unit: str = "ms") -> str:
    return "—" if x is None else f"{x:.1f} {unit}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def verdict(value: float | None, limit: float) -> str:
    return "—" if value is None else ("PASS" if value <= limit else "FAIL")


def summary_rows(results: dict[str, Any]) -> list[tuple]:
    """One row per measured ratio: (measurement, Go, pybridge, ratio or None, target, verdict)."""
    go, py = "Go bridge+host-local", "pybridge"
    lat = results["latency"]
    rows = []
    g_add, p_add = median(lat[go]["ADD"]), median(lat[py]["ADD"])
    g_del, p_del = median(lat[go]["DEL"]), median(lat[py]["DEL"])
    r = ratio(p_add, g_add)
    rows.append(("ADD, empty network", fmt(g_add), fmt(p_add), r, "≤ 0.8", verdict(r, 0.8)))
    r = ratio(p_del, g_del)
    rows.append(("DEL", fmt(g_del), fmt(p_del), r, "≤ 0.8", verdict(r, 0.8)))
    def mean(xs: list[float]) -> float | None:
        return statistics.fmean(xs) if xs else None
    for cmd in ("ADD", "DEL"):
        g, p = mean(lat[go].get(f"{cmd}_cpu", [])), mean(lat[py].get(f"{cmd}_cpu", []))
        rows.append((f"{cmd}: CPU time per call (mean; plugin + children + daemon)", fmt(g), fmt(p),
                     ratio(p, g), "(info: load-independent)", ""))
    sc = results["scaling"]
    cps = sorted(int(c) for c in sc[py])
    top = cps[-1]
    g_cps = sorted(int(c) for c in sc[go])
    g_top = g_cps[-1]
    p0, pt = median(_cp(sc[py], 0)["ADD"]), median(_cp(sc[py], top)["ADD"])
    g0, gt = median(_cp(sc[go], 0)["ADD"]), median(_cp(sc[go], g_top)["ADD"])
    growth_p, growth_g = ratio(pt, p0), ratio(gt, g0)
    rows.append((f"ADD with {top} attached / with 0 (growth; each plugin alone on the host)",
                 f"{fmt(gt)} / {fmt(g0)} = ×{growth_g:.2f}" + (f" (at {g_top})" if g_top != top else ""),
                 f"{fmt(pt)} / {fmt(p0)} = ×{growth_p:.2f}", None, "pybridge ≤ ×1.1", verdict(growth_p, 1.1)))
    rows += growth_detail(results, top, g_top)
    rows += shared_rows(results, g0, p0)
    par = results["parallel"]
    g_wall = median([x["add_wall_ms"] for x in par[go]])
    p_wall = median([x["add_wall_ms"] for x in par[py]])
    p_fail = sum(x["failures"] for x in par[py])
    p_dup = sum(x["duplicates"] for x in par[py])
    g_fail = sum(x["failures"] for x in par[go])
    n = results["config"]["parallel"]
    r = ratio(p_wall, g_wall)
    ok = "PASS" if (r is not None and r <= 1.0 and p_fail == 0 and p_dup == 0) else "FAIL"
    rows.append((f"{n} parallel ADDs, wall time", f"{fmt(g_wall)} ({g_fail} failed)",
                 f"{fmt(p_wall)} ({p_fail} failed, {p_dup} duplicate addresses)", r, "≤ 1.0, all ok", ok))
    g_pdel = median([x["del_wall_ms"] for x in par[go]])
    p_pdel = median([x["del_wall_ms"] for x in par[py]])
    rows.append((f"{n} parallel DELs, wall time", fmt(g_pdel), fmt(p_pdel), ratio(p_pdel, g_pdel), "(info)", ""))
    dk = results.get("docker", {})
    if "skipped" in dk:
        rows.append(("Docker: `docker run` to first ping", "—", "—", None, "≤ 1.2 × built-in bridge",
                     "SKIPPED: " + dk["skipped"]))
    else:
        r = ratio(dk.get("pybridge_ms"), dk.get("builtin_ms"))
        rows.append(("Docker: `docker run` to first ping", f"built-in bridge {fmt(dk.get('builtin_ms'))}",
                     fmt(dk.get("pybridge_ms")), r, "≤ 1.2", verdict(r, 1.2)))
    return rows


def table(rows: list[tuple]) -> list[str]:
    lines = ["| measurement | Go reference | pybridge | ratio | target | result |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, g, p, r, target, res in rows:
        lines.append(f"| {name} | {g} | {p} | {'—' if r is None else f'{r:.2f}'} | {target} | {res} |")
    return lines


def run_date(results: dict[str, Any]) -> str:
    return results["config"].get("started") or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def report(results: dict[str, Any], out: Path) -> str:
    go, py = "Go bridge+host-local", "pybridge"
    rows = summary_rows(results)
    sc = results["scaling"]
    cps = sorted(int(c) for c in sc[py])
    dk = results.get("docker", {})
    d = results["daemon"]
    nd = results.get("latency_nodaemon", {}).get("pybridge (no daemon)", {})

    lines = ["# pybridge benchmark", "",
             f"Run {run_date(results)}, kernel {results['config']['kernel']}, "
             f"{results['config']['cpus']} CPUs, Python {results['config']['python']}, load average before "
             f"the run {results['config']['load_before'][0]:.2f}; "
             f"{'quick' if results['config']['quick'] else 'full'} run, {results['config']['runs']} "
             "interleaved ADD+DEL cycles per plugin for the latency rows. Medians; ratio = pybridge / Go.",
             "", *table(rows)]
    lines += ["", "| pybridge daemon | value |", "| --- | --- |",
              f"| resident memory (fast-path daemon) | {d['rss_mib']:.1f} MiB |",
              f"| idle CPU over {d['idle_seconds']:.0f} s | {d['idle_cpu_percent']:.2f} % |",
              f"| ADD / DEL without the daemon (in-process fallback) | {fmt(median(nd.get('ADD', [])))} / "
              f"{fmt(median(nd.get('DEL', [])))} |"]
    if "rss_mib" in dk:
        lines.append(f"| Docker driver (`cni-bridge serve`) resident memory | {dk['rss_mib']:.1f} MiB |")
    lines += ["", "ADD latency (median, ms) by containers attached:", "",
              "| attached | " + " | ".join(str(c) for c in cps) + " |",
              "| --- |" + " --- |" * len(cps)]
    for label in (go, go + EMPTY, py, py + EMPTY):
        if label not in sc:
            continue
        lines.append(f"| {label} | " + " | ".join(
            fmt(median(_cp(sc[label], c)["ADD"]), "") if _has(sc[label], c) else "—" for c in cps) + " |")
    shared = results.get("shared")
    if shared:
        both = ", ".join(f"{label} {fmt(median(shared['samples'][label]['ADD']))}"
                         for label in (go, go + EMPTY, py, py + EMPTY))
        lines += ["", f"Both plugins' containers on the host (Go {shared['go_attached']}, pybridge "
                  f"{shared['py_attached']}, in the same namespaces), ADD median: {both}."]
    for label, loads in results.get("load_at", {}).items():
        lines += ["", f"Load average (1 min) when each scaling point of {label} started: " + ", ".join(
            f"{c}: {load:.1f}" for c, load in loads.items()) + "."]
    if results.get("notes"):
        lines += ["", *("- " + n for n in results["notes"])]
    lines += ["", "![latency vs attached](latency_vs_attached.png)", ""]
    text = "\n".join(lines)
    (out / "results.md").write_text(text)
    return text


SUMMARY_MARKER = "<!-- bench/run.py rewrites everything above this line and keeps what follows it -->"


def summary(results: dict[str, Any]) -> str:
    """The ratio table with what a reader needs to weigh it: when, on what host, under what load,
    measured how. Short on purpose: the full report is <out>/results.md."""
    cfg = results["config"]
    loads = [load for per_point in results.get("load_at", {}).values() for load in per_point.values()]
    during = f", {min(loads):.1f}–{max(loads):.1f} at the scaling points" if loads else ""
    kind = "quick" if cfg["quick"] else "full"
    return "\n".join([
        "# Benchmark results", "",
        "Written by `bench/run.py` at every run; the method is described in "
        "[docs/performance.md](../docs/performance.md#method).", "",
        f"- Run: {run_date(results)}, {kind} run (`bench/run.py{' --quick' if cfg['quick'] else ''}`): "
        f"{cfg['runs']} interleaved ADD+DEL cycles per plugin, scaling points "
        f"{', '.join(str(c) for c in cfg['checkpoints'])} attached, {cfg['parallel']} parallel ADDs.",
        f"- Host: {cfg['cpus']} CPUs, kernel {cfg['kernel']}, Python {cfg['python']}; load average "
        f"{cfg['load_before'][0]:.1f} before the run{during}.",
        "- Medians; ratio = pybridge / Go reference (`bridge` + `host-local`, ipMasq on).", "",
        *table(summary_rows(results)), ""])


def write_summary(results: dict[str, Any], path: Path) -> None:
    """Rewrite `path` with this run's summary, keeping whatever follows SUMMARY_MARKER (results
    of the other benchmarks, which this run did not measure)."""
    kept = "\n"
    if path.exists():
        old = path.read_text()
        if SUMMARY_MARKER in old:
            kept = old[old.index(SUMMARY_MARKER) + len(SUMMARY_MARKER):]
    path.write_text(summary(results) + "\n" + SUMMARY_MARKER + kept)


def growth_detail(results: dict[str, Any], top: int, g_top: int) -> list[tuple]:
    """The growth row again, three ways that load on a shared machine moves less: against an empty
    network measured in the same interleaved rounds, in CPU time, and inside the daemon."""
    go, py = "Go bridge+host-local", "pybridge"
    sc, rows = results["scaling"], []
    if go + EMPTY in sc and _has(sc[py + EMPTY], top):
        pt, pe = median(_cp(sc[py], top)["ADD"]), median(_cp(sc[py + EMPTY], top)["ADD"])
        g = "—"
        if _has(sc[go + EMPTY], g_top):
            gt, ge = median(_cp(sc[go], g_top)["ADD"]), median(_cp(sc[go + EMPTY], g_top)["ADD"])
            g = f"{fmt(gt)} / {fmt(ge)} = ×{ratio(gt, ge):.2f}" + (f" (at {g_top})" if g_top != top else "")
        rows.append((f"ADD with {top} attached / empty network, same rounds", g,
                     f"{fmt(pt)} / {fmt(pe)} = ×{ratio(pt, pe):.2f}", None, "pybridge ≤ ×1.1",
                     verdict(ratio(pt, pe), 1.1)))

    def cpu(label: str, c: int) -> float | None:
        xs = _cp(sc[label], c).get("ADD_cpu", []) if _has(sc[label], c) else []
        return statistics.fmean(xs) if xs else None
    gc = ratio(cpu(go, g_top), cpu(go, 0))
    pc = ratio(cpu(py, top), cpu(py, 0))
    rows.append((f"ADD CPU time (mean) with {top} attached / with 0",
                 f"{fmt(cpu(go, g_top))} / {fmt(cpu(go, 0))} = ×{gc:.2f}" if gc else "—",
                 f"{fmt(cpu(py, top))} / {fmt(cpu(py, 0))} = ×{pc:.2f}" if pc else "—", None,
                 "(info: load-independent)", ""))
    dm = results.get("daemon_ms", {})
    if _has(dm, 0) and _has(dm, top):
        d0, dt = median(_cp(dm, 0)[py]["ADD"]), median(_cp(dm, top)[py]["ADD"])
        if d0 and dt:
            rows.append((f"pybridge ADD inside the daemon, {top} attached / 0", "—",
                         f"{fmt(dt)} / {fmt(d0)} = ×{ratio(dt, d0):.2f}", None, "(info)", ""))
    return rows


def shared_rows(results: dict[str, Any], g0: float | None, p0: float | None) -> list[tuple]:
    """Both plugins' containers on the host at once, every plugin's calls interleaved: each
    plugin's ADD then also pays for the other's interfaces and asynchronous kernel work (the
    Go containers' IPv6 addresses, routes and multicast). Reported; the target is per plugin."""
    go, py = "Go bridge+host-local", "pybridge"
    shared = results.get("shared")
    if not shared:
        return []
    s = shared["samples"]
    gs, ps = median(s[go]["ADD"]), median(s[py]["ADD"])
    ge, pe = median(s[go + EMPTY]["ADD"]), median(s[py + EMPTY]["ADD"])
    where = f"Go {shared['go_attached']} + pybridge {shared['py_attached']}"
    rows = [(f"ADD with both plugins' containers on the host ({where}) / with 0",
             f"{fmt(gs)} / {fmt(g0)} = ×{ratio(gs, g0):.2f}", f"{fmt(ps)} / {fmt(p0)} = ×{ratio(ps, p0):.2f}",
             None, "(stress, info)", ""),
             ("… / empty network of the same plugin, same rounds", f"{fmt(gs)} / {fmt(ge)} = ×{ratio(gs, ge):.2f}",
              f"{fmt(ps)} / {fmt(pe)} = ×{ratio(ps, pe):.2f}", None, "(stress, info)", "")]
    dm = results.get("daemon_ms", {})
    if shared.get("daemon_ms", {}).get(py) and _has(dm, 0):
        d0, ds = median(_cp(dm, 0)[py]["ADD"]), median(shared["daemon_ms"][py]["ADD"])
        if d0 and ds:
            rows.append(("… pybridge ADD inside the daemon", "—", f"{fmt(ds)} / {fmt(d0)} = ×{ratio(ds, d0):.2f}",
                         None, "(stress, info)", ""))
    return rows


def _cp(d: dict, c: int) -> dict:
    return d[c] if c in d else d[str(c)]


def _has(d: dict, c: int) -> bool:
    return c in d or str(c) in d


def plot(results: dict[str, Any], out: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # the `bench` extra is not installed: the numbers matter, not the picture
        log("matplotlib not installed (pip install -e '.[bench]'): no latency_vs_attached.png")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 4.2))
    for label, style in (("Go bridge+host-local", "o-"), ("pybridge", "s-")):
        data = results["scaling"][label]
        xs = sorted(int(c) for c in data)
        ax.plot(xs, [median(_cp(data, c)["ADD"]) for c in xs], style, label=f"{label} ADD")
        ax.plot(xs, [median(_cp(data, c)["DEL"]) for c in xs], style.replace("-", "--"), alpha=0.6,
                label=f"{label} DEL")
    shared = results.get("shared")
    if shared:
        for label, style, n in (("Go bridge+host-local", "o", shared["go_attached"]),
                                ("pybridge", "s", shared["py_attached"])):
            ax.plot([n], [median(shared["samples"][label]["ADD"])], style, mfc="none", markersize=9,
                    label=f"{label} ADD, both plugins' containers on the host")
    ax.set_xlabel("containers attached to the network (each plugin alone on the host)")
    ax.set_ylabel("median latency per call (ms)")
    ax.set_title("CNI ADD / DEL latency vs. containers attached (ipMasq on)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over the data
    fig.tight_layout()
    fig.savefig(out / "latency_vs_attached.png", dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="output directory")
    ap.add_argument("--quick", action="store_true", help="fewer runs and 100 attached: < 3 minutes")
    ap.add_argument("--attached", type=int, default=None, help="containers attached at the last scaling "
                    "point (default 1000, --quick 100)")
    ap.add_argument("--parallel", type=int, default=32, help="parallel ADDs (default 32)")
    ap.add_argument("--go-fill-budget", type=float, default=420.0,
                    help="stop growing the Go network once attaching has taken this many seconds")
    ap.add_argument("--skip-docker", action="store_true")
    ap.add_argument("--summary", default=str(ROOT / "bench" / "RESULTS.md"),
                    help="where the table of ratios goes (default bench/RESULTS.md; '-' for none)")
    args = ap.parse_args(argv)
    if args.attached is None:
        args.attached = 100 if args.quick else 1000
    if os.geteuid() != 0:
        print("bench/run.py needs root (namespaces, bridges, nftables)", file=sys.stderr)
        return 2
    for name in ("bridge", "host-local"):
        if not (GO_DIR / name).exists():
            print(f"{GO_DIR / name} missing: apt-get install containernetworking-plugins", file=sys.stderr)
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Run(args)
    started = time.monotonic()
    try:
        run.execute()
    finally:
        log("cleaning up")
        run.host.cleanup()
    run.results["elapsed_seconds"] = time.monotonic() - started
    (out / "results.json").write_text(json.dumps(run.results, indent=1, default=str))
    plot(run.results, out)
    print(report(run.results, out))
    if args.summary != "-":
        write_summary(run.results, Path(args.summary))
    log(f"done in {run.results['elapsed_seconds']:.0f} s; wrote {out}/results.md, results.json, "
        f"latency_vs_attached.png" + ("" if args.summary == "-" else f", {args.summary}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
