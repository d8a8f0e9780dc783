"""A Docker Engine and a pybridge driver for the remote-driver tests.

Why a private dockerd in its own network namespace: dockerd rewrites the host's packet filter
(FORWARD policy DROP, DOCKER chains, NAT) and creates docker0. Other test runs may
share this host at the same moment, and their bridges forward through that FORWARD chain
(br_netfilter is on). Started with `nsenter --net`, dockerd, its containers and our driver see
only the namespace; the root namespace is left alone.

Why also its own mount namespace (tests/support/mountns.py): dockerd finds plugins only in
/run/docker/plugins (sockets) and /etc/docker/plugins, /usr/lib/docker/plugins (spec files), where
an installed pybridge (or the host's Docker setup) has its own. In the private dockerd's view
/run/docker/plugins is the test's directory and the spec directories are empty, so the test's
driver serves it and an installed driver is neither used nor touched; /run/containerd is empty
too (dockerd starts its own containerd instead of sharing the host's) and /etc/docker/daemon.json
is not read. So a host where Docker and pybridge are installed runs every test, like a fresh one.

The driver runs from the repository's venv and keeps its state and leases under the test's
directory. Everything started here is stopped at session end. PYBRIDGE_TEST_DOCKER_HOST=URL
tests a running engine instead, in the host's namespaces; the driver then needs the host's
/run/docker/plugins/pybridge.sock (skipped while another driver owns it), and the tests that must
restart dockerd are skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tests.support.host import run, stop_process
from tests.support.mountns import MountNamespace, PrivateMounts, umount_below
from tests.support.netns import Netns, create_netns
from tests.support.paths import VENV_BIN
from tests.support.session import REGISTRY_DIR, unique_name
from tests.support.subnets import unique_subnet

DOCKERD = Path("/usr/sbin/dockerd")
DOCKER_CLI = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else (shutil.which("docker") or "docker")
PLUGIN_DIR = Path("/run/docker/plugins")   # where dockerd finds plugin sockets
PLUGIN_SOCKET = PLUGIN_DIR / "pybridge.sock"
# What the private dockerd must not see: other plugin specs, and the host's containerd (which
# dockerd would use instead of starting its own).
HIDDEN_FROM_DOCKERD = (Path("/etc/docker/plugins"), Path("/usr/lib/docker/plugins"), Path("/run/containerd"))
DOCKER_CT = "application/vnd.docker.plugins.v1.2+json"  # libnetwork's plugin content type
IMAGE = "localbusybox:1"
BUSYBOX_APPLETS = ("sh", "ip", "ping", "ping6", "ifconfig", "route", "cat", "ls", "sleep", "nc", "wget",
                   "udhcpc", "hostname", "echo", "true")


# --- talking to a plugin socket (what dockerd does) -----------------------------------------------
class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def plugin_call(path: str | Path, method: str, body: Any = None, *, timeout: float = 30.0) -> tuple[int, Any]:
    """POST /<method> like libnetwork's plugin client; returns (HTTP status, decoded JSON)."""
    conn = _UnixHTTPConnection(str(path), timeout)
    try:
        data = b"" if body is None else json.dumps(body).encode()
        conn.request("POST", f"/{method}", body=data,
                     headers={"Content-Type": DOCKER_CT, "Accept": DOCKER_CT})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def socket_answers(path: Path) -> bool:
    try:
        return plugin_call(path, "Plugin.Activate", timeout=2.0)[0] == 200
    except OSError:
        return False


def _wait(predicate, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# --- the engine -----------------------------------------------------------------------------------
@dataclass
class DockerEngine:
    """A reachable dockerd; `netns` is the namespace it (and its containers' host side) lives in."""
    host: str                       # DOCKER_HOST
    root: Path                      # our scratch directory
    netns: Netns | None = None      # None: the host namespace (an engine we did not start)
    proc: subprocess.Popen | None = None
    args: list[str] = field(default_factory=list)
    mounts: MountNamespace | None = None  # None: the host's mount namespace (an engine we did not start)

    @property
    def ours(self) -> bool:
        return self.proc is not None

    @property
    def plugin_dir(self) -> Path:
        """The directory this dockerd finds plugin sockets in, as a path on the host."""
        return self.root / "plugins" if self.mounts is not None else PLUGIN_DIR

    def nsenter(self) -> list[str]:
        """Prefix that runs a command in dockerd's network and mount namespaces."""
        options = ([f"--mount={self.mounts.path}"] if self.mounts is not None else []) + \
                  ([f"--net={self.netns.path}"] if self.netns is not None else [])
        return ["nsenter", *options, "--"] if options else []

    def host_run(self, *argv: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """A command on dockerd's host side (its namespaces)."""
        return run([*self.nsenter(), *argv], check=check, timeout=timeout)

    def unmount_below(self, path: Path) -> None:
        """Overlay and netns mounts a killed dockerd leaves under `path`, in dockerd's view."""
        umount_below(path, self.nsenter())

    def docker(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_HOST": self.host}
        proc = subprocess.run([DOCKER_CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def alive(self) -> bool:
        return self.docker("info", "--format", "{{.ID}}", check=False, timeout=20).returncode == 0

    def start(self) -> None:
        assert self.args, "only an engine we started can be (re)started"
        log = open(self.root / "dockerd.log", "ab")
        self.proc = subprocess.Popen([*self.nsenter(), *self.args], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        try:
            _wait(lambda: self.proc.poll() is None and self.alive(), 60, "dockerd to answer `docker info`", 0.3)
        except TimeoutError:
            raise RuntimeError("dockerd did not start; log tail:\n" + self.log_tail()) from None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        stop_process(self.proc, 60)

    def restart(self, *, crash: bool = False) -> None:
        """Stop (or SIGKILL dockerd alone: its containers and containerd live on) and start again."""
        if crash and self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self._forget_dead_containerd()
        self.stop()
        self.start()

    def _forget_dead_containerd(self) -> None:
        """dockerd's own containerd dies with it (parent-death signal). PID 1 on these VMs does not
        reap orphans, so it stays a zombie that the next dockerd takes for a live containerd and
        waits for forever. A real init reaps it; removing its pidfile has the same effect."""
        pidfile = self.root / "exec" / "containerd" / "containerd.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                state = "gone"
            if state in ("Z", "X", "gone"):
                pidfile.unlink(missing_ok=True)
                return
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.root / "dockerd.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def engine_missing() -> str | None:
    """Why no engine can be tested here (None: docker_engine() can make or find one)."""
    if os.environ.get("PYBRIDGE_TEST_DOCKER_HOST") or DOCKERD.exists():
        return None
    return f"no Docker Engine: {DOCKERD} not installed (apt-get install docker.io)"


@contextlib.contextmanager
def docker_engine(scratch: Path) -> Iterator[DockerEngine]:
    """A private dockerd in its own network and mount namespaces, with its data, sockets and
    plugin directory under `scratch` (or the engine PYBRIDGE_TEST_DOCKER_HOST names)."""
    forced = os.environ.get("PYBRIDGE_TEST_DOCKER_HOST")
    if forced:
        yield DockerEngine(forced, scratch)
        return
    if not DOCKERD.exists():
        raise FileNotFoundError(f"{DOCKERD} not installed (apt-get install docker.io)")
    root = scratch
    (root / "plugins").mkdir(parents=True, exist_ok=True)
    (root / "daemon.json").write_text("{}\n")   # not the host's /etc/docker/daemon.json
    ns = create_netns(unique_name("dk"))
    mounts = MountNamespace(root, PrivateMounts(binds={PLUGIN_DIR: root / "plugins"}, hide=HIDDEN_FROM_DOCKERD))
    sock = root / "docker.sock"
    engine = DockerEngine(f"unix://{sock}", root, ns, mounts=mounts)
    engine.args = [str(DOCKERD), "--config-file", str(root / "daemon.json"), "--data-root", str(root / "data"),
                   "--exec-root", str(root / "exec"), "-H", f"unix://{sock}", "--pidfile", str(root / "docker.pid"),
                   "--bridge", "none", "--shutdown-timeout", "3", "--userland-proxy=false"]
    try:
        mounts.create()
        engine.start()
        # Docker hosts usually end up with FORWARD policy DROP; make sure we test under it.
        engine.host_run("iptables", "-w", "-P", "FORWARD", "DROP", check=False)
        engine.host_run("ip6tables", "-w", "-P", "FORWARD", "DROP", check=False)
        yield engine
    finally:
        with contextlib.suppress(Exception):
            ids = engine.docker("ps", "-aq", check=False, timeout=30).stdout.split()
            if ids:
                engine.docker("rm", "-f", *ids, check=False, timeout=60)
        engine.stop()
        engine.unmount_below(root)
        mounts.delete()
        umount_below(root)
        ns.delete()
        shutil.rmtree(root / "data", ignore_errors=True)
        shutil.rmtree(root / "exec", ignore_errors=True)


@contextlib.contextmanager
def scratch_engine(tag: str = "docker") -> Iterator[DockerEngine]:
    """docker_engine() in a fresh /var/tmp/<session prefix>-<tag>-* directory (removed after),
    with the busybox image imported: the body of a test module's `engine` fixture."""
    from tests.support.session import session
    scratch = Path(tempfile.mkdtemp(prefix=f"{session().prefix}-{tag}-", dir="/var/tmp"))
    try:
        with docker_engine(scratch) as engine:
            ensure_image(engine)
            yield engine
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def ensure_image(engine: DockerEngine) -> str:
    """localbusybox:1 from the host's static busybox (there is no registry here)."""
    if engine.docker("image", "inspect", IMAGE, check=False).returncode == 0:
        return IMAGE
    busybox = shutil.which("busybox") or "/bin/busybox"
    rootfs = engine.root / "rootfs"
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    for applet in BUSYBOX_APPLETS:
        link = rootfs / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True).stdout
    env = {**os.environ, "DOCKER_HOST": engine.host}
    subprocess.run([DOCKER_CLI, "import", "-", IMAGE], input=tar, capture_output=True, check=True, env=env)
    return IMAGE


# --- the driver -----------------------------------------------------------------------------------
def driver_settings(tmp_path: Path, default_pool4: str = "10.213.252.0/22") -> Any:
    """`Settings` for a driver under `tmp_path` (state, leases; the lease dir is watched by the
    leak check). The default pool range is only a number unless a test asks for a unique one."""
    import ipaddress

    from cni_bridge.docker.context import Settings
    from tests.support.host import is_root
    from tests.support.session import register_data_dir
    leases = tmp_path / "leases"
    leases.mkdir()
    if is_root():
        register_data_dir(leases)
    return Settings(state_dir=tmp_path / "state", ipam_data_dir=leases,
                    default_pool4=ipaddress.ip_network(default_pool4),
                    default_pool6=ipaddress.ip_network("fd42:7062:7269::/56"))


@dataclass
class DriverProcess:
    """`cni-bridge serve` from the venv, in dockerd's namespaces, on `socket`."""
    engine: DockerEngine
    root: Path
    default_pool: str
    workers: int = 2
    proc: subprocess.Popen | None = None
    socket: Path = PLUGIN_SOCKET    # another path for a driver that dockerd does not use
    env: dict[str, str] = field(default_factory=dict)  # e.g. PYBRIDGE_CRASH_AFTER (crash injection)

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def ipam_dir(self) -> Path:
        return self.root / "leases"

    @property
    def log_file(self) -> Path:
        return self.root / "driver.log"

    def start(self) -> None:
        argv = [*self.engine.nsenter(), str(VENV_BIN / "cni-bridge"), "serve", "--socket", str(self.socket),
                "--state-dir", str(self.state_dir), "--ipam-data-dir", str(self.ipam_dir),
                "--default-pool", self.default_pool, "--workers", str(self.workers),
                "--log-file", str(self.log_file), "--pidfile", str(self.root / "driver.pid"),
                # never the host's CNI fast path: this driver may live in dockerd's private namespace
                "--cni-fastpath", "off"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(self.root / "driver.stderr", "ab"),
                                     start_new_session=True, env={**os.environ, **self.env})
        try:
            _wait(lambda: self.proc.poll() is None and socket_answers(self.socket), 30, "the driver's socket")
        except TimeoutError:
            raise RuntimeError("driver did not start:\n" + self.log_tail()) from None

    def kill(self) -> None:
        """SIGKILL the master and every worker at once (a crash, not a shutdown)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        stop_process(self.proc, 30, self.kill)

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for name in ("driver.stderr", "driver.log"):
            with contextlib.suppress(OSError):
                out += (self.root / name).read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out)

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_file.read_text(errors="replace")
        return ""


class DriverBusy(RuntimeError):
    """Another test session (or an installed driver) owns the host's plugin socket, which a driver
    for an engine the tests did not start needs."""


@contextlib.contextmanager
def _socket_claim() -> Iterator[None]:
    """The plugin socket path is one per host: a session holds this flock while its driver owns
    the socket, so a concurrent session cannot take the path while ours is being restarted."""
    REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(REGISTRY_DIR / "docker-plugin-socket.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DriverBusy(f"another test session is using {PLUGIN_SOCKET}") from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def pybridge_driver(engine: DockerEngine, scratch: Path) -> Iterator[DriverProcess]:
    """`cni-bridge serve` from the checkout as `engine`'s pybridge driver, in its namespaces, on
    pybridge.sock in its plugin directory: the engine's own, or the host's for an engine the
    tests did not start (DriverBusy while another session or an installed driver has it)."""
    with contextlib.ExitStack() as stack:
        if engine.mounts is None:
            stack.enter_context(_socket_claim())
            if socket_answers(PLUGIN_SOCKET):
                raise DriverBusy(f"another pybridge driver already serves {PLUGIN_SOCKET}")
        scratch.mkdir(parents=True, exist_ok=True)
        driver = DriverProcess(engine, scratch, str(unique_subnet(4, 20)), socket=engine.plugin_dir / "pybridge.sock")
        driver.start()
        try:
            yield driver
        finally:
            driver.stop()
