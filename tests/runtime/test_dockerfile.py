"""Issue 9: the Dockerfile builds offline (base image from debootstrap, wheels from the host's pip)
and the driver running from that image serves a test dockerd: network create, a container gets
an address from the pybridge IPAM and reaches its gateway.

The image's driver listens on a per-session socket name (`<prefix>drv.sock`, so the Docker driver
name is that too) so it never collides with the driver other tests run on pybridge.sock.
Time-bounded: the base rootfs (debootstrap, ~3 min) is cached in /var/cache/pybridge.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.support import dockerd as support
from tests.support.paths import REPO
from tests.support.session import session, unique_name
from tests.support.subnets import unique_subnet

MAKE_BASE = REPO / "plugin-spec" / "make-base-image.sh"
BASE_CACHE = Path(os.environ.get("PYBRIDGE_BASE_CACHE", "/var/cache/pybridge/base-bookworm.tar"))

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1500)]


def _missing() -> str | None:
    reason = support.engine_missing()
    if reason:
        return reason
    if not BASE_CACHE.exists() and shutil.which("debootstrap") is None:
        return "no debootstrap to make the base image (apt-get install debootstrap)"
    return None


@pytest.fixture(scope="module")
def engine() -> Iterator[support.DockerEngine]:
    reason = _missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"prerequisite missing in CI: {reason}")
        pytest.skip(reason)
    with support.scratch_engine("dkimg") as eng:
        yield eng


def _sh(argv: list[str], engine: support.DockerEngine, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_HOST": engine.host, "DOCKER_BUILDKIT": "0"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert proc.returncode == 0, f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def image(engine: support.DockerEngine) -> Iterator[str]:
    tag = f"{session().prefix}-pybridge:test"
    _sh(["bash", str(MAKE_BASE), "--cache", str(BASE_CACHE)], engine, timeout=900)   # base + wheels
    try:
        _sh(["docker", "build", "-q", "-t", tag, "--build-arg", "BASE=pybridge-base:bookworm", "."], engine,
            timeout=600)
        yield tag
    finally:  # matters only with a shared dockerd: a private one is deleted with its data root
        engine.docker("rmi", "-f", tag, check=False)


def test_driver_from_image_serves_dockerd(engine: support.DockerEngine, image: str, tmp_path: Path) -> None:
    name = f"{session().prefix}drv"
    in_container = support.PLUGIN_DIR / f"{name}.sock"   # dockerd's plugin directory, mounted below
    sock = engine.plugin_dir / f"{name}.sock"            # the same socket, seen from here
    state = tmp_path / "state"
    leases = tmp_path / "leases"
    subnet = unique_subnet(4, 24)
    driver = f"{name}-driver"
    net = unique_name("dnet")
    ctr = unique_name("dctr")
    try:
        run = ["run", "-d", "--name", driver, "--network", "host",
               "-v", f"{support.PLUGIN_DIR}:{support.PLUGIN_DIR}",
               "-v", f"{state}:/var/lib/cni-bridge", "-v", f"{leases}:/var/lib/cni/pybridge"]
        serve = [image, "--socket", str(in_container), "--workers", "1", "--default-pool", str(unique_subnet(4, 20))]
        proc = engine.docker(*run, "--privileged", *serve, check=False)
        if proc.returncode != 0 and "unable to apply caps" in proc.stderr:
            # This machine (itself a sandbox) lacks CAP_SYS_RESOURCE, so runc cannot grant
            # --privileged. Every capability the driver needs, without it (/proc/sys is read-only
            # then: ip_forward must already be 1, which dockerd ensures).
            engine.docker("rm", "-f", driver, check=False)
            proc = engine.docker(*run, "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
                                 "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
                                 *serve, check=False)
        assert proc.returncode == 0, proc.stderr
        support._wait(lambda: support.socket_answers(sock), 60, "the driver in the image")
        bridge = unique_name("br")
        engine.docker("network", "create", "-d", name, "--ipam-driver", name, "--subnet", str(subnet),
                      "-o", f"bridge={bridge}", net)
        out = engine.docker("run", "--rm", "--name", ctr, "--network", net, support.IMAGE, "sh", "-c",
                            f"ip -4 addr show eth0; ping -c 1 -W 5 {subnet.network_address + 1}",
                            timeout=120).stdout
        assert f"inet {subnet.network_address}" not in out
        assert any(line.strip().startswith(f"inet {'.'.join(str(subnet.network_address).split('.')[:3])}.")
                   for line in out.splitlines()), out
        assert "1 packets received" in out, out
        assert engine.host_run("ip", "link", "show", bridge).returncode == 0
        assert list((state / "docker" / "networks").iterdir())     # state on the mounted volume

        # `cni-bridge status` (from the checkout) reads what the image's driver wrote.
        engine.docker("run", "-d", "--name", ctr, "--network", net, support.IMAGE, "sleep", "300")
        status = engine.host_run(str(support.VENV_BIN / "cni-bridge"), "status", "--json",
                                 "--state-dir", str(state / "docker"), "--data-dir", str(leases),
                                 "--conf-dir", str(tmp_path / "none"), check=False)
        inv = json.loads(status.stdout)
        [mine] = [n for n in inv["networks"] if n["bridge"] == bridge]
        [ep] = [e for e in mine["endpoints"] if e["source"] == "docker"]
        assert ep["state"] == "attached" and ep["host_master"] == bridge, ep
        assert ep["container"]["present"] and ep["container"]["addresses"][0].startswith(
            ".".join(str(subnet.network_address).split(".")[:3]) + "."), ep
        engine.docker("rm", "-f", ctr)
        engine.docker("network", "rm", net)
        assert engine.host_run("ip", "link", "show", bridge, check=False).returncode != 0
    except AssertionError:
        logs = engine.docker("logs", "--tail", "60", driver, check=False)
        print(logs.stdout[-4000:], logs.stderr[-4000:])
        raise
    finally:
        engine.docker("rm", "-f", ctr, check=False)
        engine.docker("network", "rm", net, check=False)
        engine.docker("rm", "-f", driver, check=False, timeout=60)
        if sock.exists():
            sock.unlink()
