"""Private mount namespaces: a runtime under test sees the test's own directories where the host
keeps its own (an installed pybridge's) -- /run/docker/plugins, /opt/cni/bin, /etc/cni/net.d.

Why: the suite must run on a host where pybridge is installed (its driver listening on
/run/docker/plugins/pybridge.sock, its plugin in /opt/cni/bin, its config in /etc/cni/net.d)
without using or touching that installation. dockerd and ctr have no option for those
directories, so the test's dockerd and ctr run in a mount namespace in which they are bind mounts
of the test's directories, or empty tmpfs. Nothing the host sees changes, except that a missing
mount point is created (an empty directory, where Docker or the CNI tools would put it anyway).

`PrivateMounts.wrap(argv)` runs one command in a throw-away namespace (ctr); `MountNamespace` keeps
one alive, bound to a file as `ip netns` does for network namespaces, so that dockerd, its
restarts, the driver and commands on dockerd's side all share one view.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.host import run

__all__ = ["MountNamespace", "PrivateMounts", "umount_below"]


@dataclasses.dataclass(frozen=True)
class PrivateMounts:
    """What a private namespace replaces: `binds` maps a host directory to the directory that
    takes its place; each existing directory in `hide` becomes an empty tmpfs."""

    binds: Mapping[Path, Path] = dataclasses.field(default_factory=dict)
    hide: tuple[Path, ...] = ()

    def script(self) -> str:
        """Shell commands that set the mounts up inside a fresh private namespace."""
        lines = ["set -e"]
        for target in self.hide:
            t = shlex.quote(str(target))
            lines.append(f"if [ -d {t} ]; then mount -t tmpfs -o mode=0755,size=1m pbt-private {t}; fi")
        for target, source in self.binds.items():
            t, s = shlex.quote(str(target)), shlex.quote(str(source))
            lines += [f"mkdir -p {t}", f"mount --bind {s} {t}"]
        return "\n".join(lines) + "\n"

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """`argv` run in a namespace of its own with these mounts (gone when it exits)."""
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                self.script() + 'exec "$@"', "sh", *argv]


class MountNamespace:
    """A private mount namespace that outlives its processes: bound to `path` (`base/ns/mnt`, on a
    private bind mount of `base/ns`, which the kernel requires); enter it with
    `nsenter --mount=<path>`."""

    def __init__(self, base: Path, mounts: PrivateMounts) -> None:
        self.dir = base / "ns"
        self.path = self.dir / "mnt"
        self.mounts = mounts

    def create(self) -> MountNamespace:
        self.dir.mkdir(parents=True, exist_ok=True)
        run(["mount", "--bind", str(self.dir), str(self.dir)])
        try:
            run(["mount", "--make-private", str(self.dir)])
            self.path.touch()
            run(["unshare", f"--mount={self.path}", "--propagation", "private", "--", "sh", "-c",
                 self.mounts.script()])
        except Exception:
            self.delete()
            raise
        return self

    def delete(self) -> None:
        """Drop the namespace (its mounts go when its last process has gone too); idempotent."""
        for point in (self.path, self.dir):
            run(["umount", str(point)], check=False)
        with contextlib.suppress(OSError):
            self.path.unlink()
            self.dir.rmdir()


def umount_below(base: Path, enter: Sequence[str] = ()) -> None:
    """Lazy-unmount whatever is mounted below `base` (deepest first), in the mount namespace
    that the `enter` prefix (e.g. `nsenter --mount=...`) runs in; this process's by default."""
    listing = subprocess.run([*enter, "cat", "/proc/self/mounts"], capture_output=True, text=True, check=False)
    mounts = [line.split()[1] for line in listing.stdout.splitlines() if len(line.split()) > 1]
    prefix = str(base.resolve()) + "/"
    for point in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run([*enter, "umount", "-l", point], capture_output=True, check=False)
