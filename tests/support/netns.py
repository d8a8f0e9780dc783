"""Named network namespaces (/run/netns/<name>) that a test owns: run commands and servers in
them, ping from them, read their links and addresses, delete them with what runs inside.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from typing import Any

from tests.support.host import NETNS_DIR, ip_json, run
from tests.support.session import unique_name

__all__ = ["Netns", "create_netns", "kill_netns_pids"]

_PING = shutil.which("ping")


@dataclasses.dataclass
class Netns:
    """A named network namespace (/run/netns/<name>) that a test owns."""

    name: str
    procs: list[subprocess.Popen] = dataclasses.field(default_factory=list, repr=False)

    @property
    def path(self) -> str:
        return str(NETNS_DIR / self.name)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def run(
        self,
        *argv: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace (`ip netns exec`, argument list, no shell)."""
        return run(["ip", "netns", "exec", self.name, *argv], check=check, input=input, timeout=timeout)

    def popen(self, *argv: str, **kwargs: Any) -> subprocess.Popen:
        """Start a background process in the namespace (servers, tcpdump); killed on delete."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        p = subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kwargs)
        self.procs.append(p)
        return p

    def ip(self, *args: str, check: bool = True) -> str:
        """`ip -n <ns> ARGS` (no exec into the namespace: faster than run('ip', ...))."""
        return run(["ip", "-n", self.name, *args], check=check).stdout

    def ip_json(self, *args: str) -> list[dict[str, Any]]:
        return ip_json(*args, netns=self.name)

    def ping(
        self,
        addr: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
        count: int = 1,
        timeout: float = 2.0,
        *,
        interval: float = 0.2,
        min_replies: int = 1,
    ) -> bool:
        """True if `addr` answers from inside this namespace before `timeout` runs out.

        Sends `count` echo requests per attempt and retries (about once a second) until at
        least `min_replies` came back in one attempt or `timeout` (plus count * interval) has
        passed; so a first packet dropped while a neighbour entry is re-resolved does not make a
        reachable address look unreachable. Uses iputils `ping` if installed, else busybox's.
        """
        wait = 1  # per attempt, seconds (both tools take whole seconds)
        per_attempt = wait + (int((count - 1) * interval + 0.999) if count > 1 else 0)
        tool = [_PING] if _PING else ["busybox", "ping"]
        argv = [*tool, "-c", str(count), "-W", str(wait), "-w", str(per_attempt)]
        if count > 1:
            argv += ["-i", str(interval)]
        give_up = time.monotonic() + max(timeout, wait) + count * interval
        while True:
            proc = self.run(*argv, str(addr), check=False, timeout=per_attempt + 10)
            # Not the exit status: with -c and -w both tools fail unless *every* reply came back.
            m = re.search(r"(\d+) (?:packets )?received", proc.stdout)
            if m and int(m.group(1)) >= min_replies:
                return True
            if time.monotonic() + 0.1 + wait > give_up:  # no room for another full attempt
                return False
            time.sleep(0.1)

    def addresses(self, ifname: str | None = None, *, family: int | None = None) -> list[str]:
        """'addr/prefixlen' strings of global-scope addresses (all links, or one)."""
        args = ["addr", "show"] + (["dev", ifname] if ifname else [])
        out = []
        for link in self.ip_json(*args):
            for a in link.get("addr_info", []):
                if a.get("scope") != "global":
                    continue
                if family == 4 and a.get("family") != "inet" or family == 6 and a.get("family") != "inet6":
                    continue
                out.append(f"{a['local']}/{a['prefixlen']}")
        return out

    def link_names(self) -> list[str]:
        return [link["ifname"] for link in self.ip_json("link", "show")]

    def pids(self) -> list[int]:
        proc = run(["ip", "netns", "pids", self.name], check=False)
        return [int(p) for p in proc.stdout.split() if p.isdigit()]

    def delete(self) -> None:
        """Kill what the test started in it, then remove the namespace (idempotent)."""
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.communicate(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
        self.procs.clear()
        if not self.exists():
            return
        kill_netns_pids(self.name)
        run(["ip", "netns", "delete", self.name], check=False)
        if self.exists():
            raise RuntimeError(f"network namespace {self.name} could not be removed")


def kill_netns_pids(name: str) -> None:
    """A namespace (and the veths in it) outlives `ip netns del` while a process is in it."""
    proc = run(["ip", "netns", "pids", name], check=False)
    for pid in (int(p) for p in proc.stdout.split() if p.isdigit()):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def create_netns(name: str | None = None) -> Netns:
    """A fresh namespace with `lo` up; the name defaults to a unique one."""
    ns = Netns(name or unique_name("ns"))
    run(["ip", "netns", "add", ns.name])
    try:
        run(["ip", "-n", ns.name, "link", "set", "lo", "up"])
    except Exception:
        run(["ip", "netns", "delete", ns.name], check=False)
        raise
    return ns

