"""A tiny container image built offline from Debian's busybox-static, for podman and containerd.

Why: the machines have no registry access, and a runtime test only needs a shell with `ip`,
`ping`, `nc`, `sysctl` and `sleep`. A rootfs holding the static busybox and its applet links is
2 MB, imports into podman in ~0.3 s and is exported as an OCI archive for `ctr images import`.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path

__all__ = ["APPLETS", "BUSYBOX", "busybox_available", "build_rootfs_tar", "have"]

BUSYBOX = Path("/bin/busybox")  # from busybox-static (static, so the rootfs needs no libc)
APPLETS = ("sh", "ip", "ping", "ifconfig", "route", "cat", "ls", "sleep", "nc", "wget", "sysctl",
           "echo", "hostname", "grep", "true", "kill", "mkdir", "httpd", "ps")


def busybox_available() -> str | None:
    """None when the static busybox is usable, else the reason (a skip message)."""
    if not BUSYBOX.is_file():
        return f"{BUSYBOX} missing: apt-get install busybox-static"
    with BUSYBOX.open("rb") as f:
        head = f.read(4096)
    if b"/lib64/ld-linux" in head or b"/lib/ld-linux" in head:  # an interpreter: dynamic build
        return f"{BUSYBOX} is dynamically linked: apt-get install busybox-static"
    return None


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def build_rootfs_tar(dest: str | os.PathLike) -> Path:
    """Write `dest` (a tar of the rootfs): /bin/busybox, applet symlinks, empty system dirs.

    Written with tarfile (no temp tree, deterministic owners) so `podman import` accepts it.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    with tarfile.open(tmp, "w") as tar:
        for d in ("bin", "dev", "etc", "proc", "sys", "tmp", "run", "var", "root"):
            _add_dir(tar, d, 0o1777 if d == "tmp" else 0o755)
        info = tar.gettarinfo(str(BUSYBOX), arcname="bin/busybox")
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        with BUSYBOX.open("rb") as f:
            tar.addfile(info, f)
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
                           ("etc/group", "root:x:0:\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, dest)
    return dest


def have(*tools: str) -> list[str]:
    """The tools in `tools` that are NOT on PATH (empty: all present)."""
    return [t for t in tools if shutil.which(t) is None]
