"""Fixtures of the runtime tests (real dockerd, podman, containerd).

`engine` (session): a scratch dockerd in its own network namespace (tests/support/dockerd.py);
`driver` (session): `cni-bridge serve` from the checkout, the pybridge driver that dockerd uses;
`dk`: one test's `Scenario` on them (tests/support/docker_scenario.py), cleaned up at its end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support import dockerd
from tests.support.docker_scenario import Scenario


@pytest.fixture(scope="session")
def engine() -> Iterator[dockerd.DockerEngine]:
    """A scratch dockerd in its own network namespace (tests/support/dockerd.py)."""
    if not dockerd.DOCKERD.exists() and not os.path.exists(dockerd.DEFAULT_DOCKER_SOCKET):
        pytest.skip("no Docker Engine: apt-get install docker.io")
    with dockerd.scratch_engine() as eng:
        yield eng


@pytest.fixture(scope="session")
def driver(engine: dockerd.DockerEngine) -> Iterator[dockerd.DriverProcess]:
    """`cni-bridge serve` on the well-known plugin socket in that dockerd's namespace; skipped
    when another driver owns the socket."""
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
