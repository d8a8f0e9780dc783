"""The dnsmasq process of one network: its command line, start, reload, stop, and finding it.

Why dnsmasq: it is what Neutron's DHCP agent runs per network, Debian ships it alone
(`dnsmasq-base`, no system service), and it re-reads a dhcp-hostsfile and dhcp-optsfile on
SIGHUP without dropping its leases, so an attachment coming or going never restarts the server.

The process is found by its command line (`--pid-file=<the network's directory>/dnsmasq.pid`),
not only by the pid file: a pid file can be stale after a crash or name a recycled pid, and the
command line is also how gc recognises a server whose directory is gone.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Iterator

from cni_bridge.dhcp.files import INNER_IFNAME, root
from cni_bridge.errors import INTERNAL, PluginError
from cni_bridge.kernel import netns as kernel_netns

DEFAULT_BINARY = "/usr/sbin/dnsmasq"
LEASE_TIME = "12h"
START_TIMEOUT = 10.0   # dnsmasq reports its start-up errors through its exit status
STOP_TIMEOUT = 5.0     # after SIGTERM, before SIGKILL


def binary() -> str:
    """$PYBRIDGE_DNSMASQ, else /usr/sbin/dnsmasq (Debian's dnsmasq-base), else one on PATH."""
    explicit = os.environ.get("PYBRIDGE_DNSMASQ")
    if explicit:
        return explicit
    if os.access(DEFAULT_BINARY, os.X_OK):
        return DEFAULT_BINARY
    found = shutil.which("dnsmasq")
    if found is None:
        raise PluginError(INTERNAL, "dhcp: dnsmasq is not installed",
                          "install dnsmasq-base (Debian/Ubuntu) or set PYBRIDGE_DNSMASQ")
    return found


def pid_marker(directory: Path) -> str:
    return f"--pid-file={directory / 'dnsmasq.pid'}"


def argv(directory: Path, subnet: str) -> list[str]:
    """DHCP only (port=0: no DNS server), static entries only (`static` range: a MAC that is not
    in the hosts file gets no address, and `dhcp-ignore` makes it get no answer at all), nothing
    read from /etc (no /etc/dnsmasq.conf, /etc/hosts, /etc/ethers). It stays root: its files
    are in the root-only run directory, and its namespace holds nothing but its own veth end."""
    network = ipaddress.ip_network(subnet)
    return [binary(), "--conf-file=/dev/null", "--port=0", "--no-hosts", "--no-resolv",
            f"--interface={INNER_IFNAME}", "--except-interface=lo", "--bind-interfaces",
            f"--dhcp-range={network.network_address},static,{network.netmask},{LEASE_TIME}",
            "--dhcp-ignore=tag:!known", "--dhcp-authoritative", "--log-dhcp",
            f"--dhcp-hostsfile={directory / 'hosts'}", f"--dhcp-optsfile={directory / 'opts'}",
            f"--dhcp-leasefile={directory / 'leases'}", f"--log-facility={directory / 'dnsmasq.log'}",
            "--user=root", pid_marker(directory)]


def _cmdlines() -> Iterator[tuple[int, list[bytes]]]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    yield int(entry), f.read().split(b"\0")
            except OSError:
                continue


def pids(directory: Path) -> list[int]:
    """dnsmasq processes serving `directory` (normally one), by their command line."""
    marker = pid_marker(directory).encode()
    return [pid for pid, args in _cmdlines() if marker in args]


def all_servers() -> dict[int, str]:
    """Every pybridge dnsmasq on the host: pid -> its directory (for status and gc)."""
    prefix = f"--pid-file={root()}/".encode()
    return {pid: os.path.dirname(arg[len(b"--pid-file="):].decode())
            for pid, args in _cmdlines() for arg in args
            if arg.startswith(prefix) and arg.endswith(b"/dnsmasq.pid")}


def start(netns: str, directory: Path, subnet: str) -> int:
    """Start dnsmasq inside `netns`; it forks into the background (its own session: it outlives
    the plugin or driver that started it). Returns its pid."""
    try:
        proc = kernel_netns.run_in_named(netns, argv(directory, subnet), START_TIMEOUT)
    except OSError as exc:
        raise PluginError(INTERNAL, f"dhcp: cannot start dnsmasq: {exc}") from None
    if proc.returncode != 0:
        raise PluginError(INTERNAL, f"dhcp: dnsmasq did not start (exit {proc.returncode})",
                          (proc.stderr or proc.stdout).strip()[:2000])
    running = pids(directory)
    if not running:
        raise PluginError(INTERNAL, "dhcp: dnsmasq exited right after its start",
                          f"see {directory / 'dnsmasq.log'}")
    return running[0]


def reload(pid: int) -> None:
    """SIGHUP: dnsmasq re-reads the hosts and options files; leases and the process stay."""
    os.kill(pid, signal.SIGHUP)


def stop(directory: Path) -> list[int]:
    """SIGTERM every dnsmasq of `directory`, SIGKILL what is still there after STOP_TIMEOUT."""
    victims = pids(directory)
    for pid in victims:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and any(_alive(pid) for pid in victims):
        time.sleep(0.02)
    for pid in victims:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
    return victims


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    """Running (a zombie is not: dnsmasq's parent is init, which reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
