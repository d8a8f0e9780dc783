"""plugin-spec/make-base-image.sh runs again and again (issue 14, item 3): the first run makes the
rootfs cache, the next ones re-import it, and neither leaves its temporary rootfs behind.

Why stubs: the real debootstrap takes minutes and the real import needs a dockerd; what broke
was the script's own control flow (a RETURN trap that fired again in the caller, where its
local `dir` was unset: "dir: unbound variable" under `set -u`, after the cache was written).
Stub `debootstrap` and `docker` on PATH record their calls; the script itself runs as it is.
tests/runtime/test_dockerfile.py runs it against a real dockerd.
"""

from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path

from tests.support.paths import REPO

MAKE_BASE = REPO / "plugin-spec" / "make-base-image.sh"

DEBOOTSTRAP = """#!/bin/sh
# debootstrap [options] SUITE TARGET [MIRROR]: a tiny rootfs instead of a Debian one
echo "debootstrap $*" >> "$STUB_LOG"
for target; do :; done
case $target in http*|file*) target=$(eval "echo \\${$(($# - 1))}") ;; esac
mkdir -p "$target/bin" "$target/usr/share/doc/pkg" "$target/var/cache/apt/archives"
echo stub > "$target/bin/sh"
echo doc > "$target/usr/share/doc/pkg/README"
"""

DOCKER = """#!/bin/sh
# docker image inspect TAG: no such image; docker import ...: recorded, fine
echo "docker $*" >> "$STUB_LOG"
[ "$1 $2" = "image inspect" ] && exit 1
exit 0
"""


def test_second_run_reuses_the_cache(tmp_path: Path) -> None:
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, text in (("debootstrap", DEBOOTSTRAP), ("docker", DOCKER)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    log = tmp_path / "calls.log"
    cache = tmp_path / "cache" / "base.tar"
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "STUB_LOG": str(log),
           "DEBIAN_MIRROR": "http://deb.example.invalid/debian"}
    before = set(glob.glob("/var/tmp/pybridge-rootfs.*"))

    runs = [subprocess.run(["bash", str(MAKE_BASE), "--base-only", "--cache", str(cache), "--tag", "pbt-base:test"],
                           capture_output=True, text=True, env=env, timeout=120) for _ in range(2)]

    for n, run in enumerate(runs, 1):
        assert run.returncode == 0, f"run {n} failed ({run.returncode}):\n{run.stderr}"
        assert "unbound variable" not in run.stderr, run.stderr
    calls = log.read_text().splitlines()
    assert [c.split()[0] for c in calls if c.startswith("debootstrap")] == ["debootstrap"]  # once: then cached
    assert sum(c.startswith(f"docker import --change CMD [\"/bin/bash\"] {cache} pbt-base:test") for c in calls) == 2
    assert "rootfs cached in" in runs[0].stderr and "rootfs cached in" not in runs[1].stderr
    names = subprocess.run(["tar", "-tf", str(cache)], capture_output=True, text=True, check=True).stdout.split()
    assert "./bin/sh" in names and not any(n.startswith("./usr/share/doc/") and n != "./usr/share/doc/" for n in names)
    assert set(glob.glob("/var/tmp/pybridge-rootfs.*")) == before, "the temporary rootfs was left behind"
