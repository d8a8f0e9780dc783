"""A lean CNI exec helper for timing: one plugin exec, stdin in, stdout/exit code/elapsed out.

Why not tests/support/cnitool.py: it implements libcni's caching and chaining, which costs time
that is not the plugin's. Here both plugins are exec'd exactly the same way, so the difference
between the two timings is the plugins' own.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """user+system seconds of a running process (clock-tick resolution; sum over many calls)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


@dataclass
class Call:
    command: str
    container_id: str
    rc: int
    stdout: bytes
    stderr: bytes
    seconds: float
    cpu: float = 0.0

    @property
    def ms(self) -> float:
        return self.seconds * 1000

    def result(self) -> dict[str, Any]:
        return json.loads(self.stdout) if self.stdout.strip() else {}

    def addresses(self) -> list[str]:
        return [ip["address"] for ip in self.result().get("ips", [])]

    def check(self) -> "Call":
        if self.rc != 0:
            raise RuntimeError(f"{self.command} {self.container_id} failed (exit {self.rc}): "
                               f"{self.stdout.decode(errors='replace')[:400]} "
                               f"{self.stderr.decode(errors='replace')[:400]}")
        return self


@dataclass
class Plugin:
    """One plugin flavour on one network: binary, network config, interface name in containers."""
    label: str
    binary: str
    config: dict[str, Any]
    ifname: str = "eth0"
    cni_path: str = ""
    env: dict[str, str] = field(default_factory=dict)
    daemon_pid: int | None = None

    @property
    def stdin(self) -> bytes:
        return json.dumps(self.config).encode()

    def environ(self, command: str, container_id: str, netns: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(self.env)
        env.update({"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
                    "CNI_IFNAME": self.ifname, "CNI_PATH": self.cni_path})
        return env

    def start(self, command: str, container_id: str, netns: str) -> subprocess.Popen:
        """Spawn without waiting (parallel runs); pair with `finish`."""
        proc = subprocess.Popen([self.binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=self.environ(command, container_id, netns))
        proc._pbb = (command, container_id, time.perf_counter())  # type: ignore[attr-defined]
        assert proc.stdin is not None
        proc.stdin.write(self.stdin)  # a config is far below the pipe buffer: never blocks
        proc.stdin.close()
        proc.stdin = None  # so that communicate() only reads
        return proc

    def finish(self, proc: subprocess.Popen) -> Call:
        """Wait for a spawned call; its `seconds` are only meaningful for the last one to end."""
        out, err = proc.communicate()
        command, container_id, started = proc._pbb  # type: ignore[attr-defined]
        return Call(command, container_id, proc.returncode, out, err, time.perf_counter() - started)

    def run(self, command: str, container_id: str, netns: str) -> Call:
        """One exec. `cpu` (sequential callers only) is the user+system time of the plugin and
        the processes it waited for (Go's host-local), plus the daemon's when `daemon_pid` is set."""
        env = self.environ(command, container_id, netns)
        stdin = self.stdin
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        daemon_before = process_cpu(self.daemon_pid) if self.daemon_pid else 0.0
        started = time.perf_counter()
        proc = subprocess.run([self.binary], input=stdin, capture_output=True, env=env)
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if self.daemon_pid:
            cpu += process_cpu(self.daemon_pid) - daemon_before
        call = Call(command, container_id, proc.returncode, proc.stdout, proc.stderr, elapsed)
        call.cpu = cpu
        return call

    def add(self, container_id: str, netns: str) -> Call:
        return self.run("ADD", container_id, netns)

    def delete(self, container_id: str, netns: str) -> Call:
        return self.run("DEL", container_id, netns)
