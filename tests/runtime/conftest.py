"""Fixtures of the runtime tests (real dockerd, podman, containerd).

`engine` (session): a scratch dockerd in its own network namespace (tests/support/dockerd.py);
`driver` (session): `cni-bridge serve` from the checkout, the pybridge driver that dockerd uses;
`dk`: one test's `Scenario` on them (tests/support/docker_scenario.py), cleaned up at its end;
`containerd` (module): a private containerd with the busybox image (tests/support/containerd.py);
`ctr_net`: a pybridge network that ctr (and only ctr) sees as its CNI configuration.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import dockerd
from tests.support.cnitool import CniTool
from tests.support.containerd import LIBCNI_DIR, Containerd, CtrNet, containerd_missing, install_cni
from tests.support.docker_scenario import Scenario
from tests.support.images import busybox_available
from tests.support.podman import IMAGE, busybox_podman, podman_missing
from tests.support.runtime_checks import new_network, remove_bridge
from tests.support.session import unique_name


@pytest.fixture(scope="session")
def engine() -> Iterator[dockerd.DockerEngine]:
    """A scratch dockerd in its own network and mount namespaces (tests/support/dockerd.py)."""
    reason = dockerd.engine_missing()
    if reason:
        pytest.skip(reason)
    with dockerd.scratch_engine() as eng:
        yield eng


@pytest.fixture(scope="session")
def driver(engine: dockerd.DockerEngine) -> Iterator[dockerd.DriverProcess]:
    """`cni-bridge serve` from the checkout on pybridge.sock in that dockerd's private plugin
    directory (an installed pybridge driver is neither used nor touched); skipped only for an
    engine the tests did not start (PYBRIDGE_TEST_DOCKER_HOST) while another driver owns the
    host's socket."""
    try:
        claim = dockerd.pybridge_driver(engine, engine.root / "driver")
        drv = claim.__enter__()
    except dockerd.DriverBusy as exc:
        pytest.skip(str(exc))
    try:
        yield drv
    finally:
        claim.__exit__(None, None, None)


@pytest.fixture
def dk(engine: dockerd.DockerEngine, driver: dockerd.DriverProcess) -> Iterator[Scenario]:
    """Networks and containers of one test on the session's engine and driver."""
    scenario = Scenario(engine, driver)
    try:
        yield scenario
    finally:
        scenario.cleanup()


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    """A private containerd with the busybox image imported (built with podman, saved as OCI)."""
    reason = containerd_missing() or podman_missing() or busybox_available()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("containerd")
    with busybox_podman(base) as pm:
        archive = pm.save_oci_archive(IMAGE, base / "busybox.oci.tar")
    ctrd = Containerd(base / "ctrd", namespace=unique_name("ns"))
    try:
        ctrd.start()
        ctrd.import_image(archive)
        yield ctrd
    finally:
        ctrd.stop()


@pytest.fixture
def ctr_net(containerd: Containerd, tmp_path: Path) -> Iterator[CtrNet]:
    """A masquerading pybridge network, the only one in the CNI directories ctr sees (private to
    ctr: an installed pybridge's /etc/cni/net.d and /opt/cni/bin are neither used nor touched).

    Teardown (even on failure): remove containers, DEL every attachment libcni cached for this
    network (what a runtime-side GC would do), remove the bridge.
    """
    net = new_network(tmp_path / "data", ip_masq=True, is_default_gateway=True)
    inst = install_cni(net.conflist, tmp_path)
    containerd.cni = inst.mounts
    try:
        yield CtrNet(containerd, net, inst)
        for cid in containerd.containers():
            containerd.remove_container(cid)
        tool = CniTool(LIBCNI_DIR)
        for entry in tool.cached_attachments(net.name):
            tool.delete(net.conflist, "", container_id=entry.container_id, ifname=entry.ifname,
                        keep_going=True, raise_on_error=False)
    finally:
        containerd.cni = None
        remove_bridge(net.bridge)
