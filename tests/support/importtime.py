"""Which modules a Python process imported, from its `-X importtime` report on stderr."""

from __future__ import annotations

import re
import subprocess
import sys

_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)", re.M)


def modules(stderr: str | bytes) -> set[str]:
    """The module names an `-X importtime` report lists."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    return set(_LINE.findall(text))


def at_start(*flags: str) -> set[str]:
    """What this interpreter imports with `flags` before running anything."""
    proc = subprocess.run([sys.executable, *flags, "-X", "importtime", "-c", "pass"], capture_output=True, text=True)
    return modules(proc.stderr)
