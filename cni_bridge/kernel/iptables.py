"""Running iptables / ip6tables (the `-w` wait flag always: another process may hold the
xtables lock)."""

from __future__ import annotations

import shutil
import subprocess


def binary(family: str) -> str | None:
    """The iptables executable for nft family "ip" or "ip6"; None when not installed."""
    return shutil.which("iptables" if family == "ip" else "ip6tables")


def run(path: str, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([path, "-w", *args], capture_output=True, text=True)
