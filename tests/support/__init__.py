"""Shared test infrastructure for pybridge's tests (no test module imports another: what two
test modules share lives here or in a conftest fixture).

* `cnitool`   - a CNI runtime driver with libcni semantics (also a CLI)
* `host`      - running commands (`run`, `ip_json`), `is_root`, `wait_for`
* `session`   - this pytest run's prefix and registry: `unique_name`, `register_data_dir`
* `subnets`   - `unique_subnet` (no overlap with the host's routes or other live sessions)
* `netns`     - `Netns` / `create_netns`: namespaces a test owns
* `topology`  - `Uplink` / `create_uplink`: the NIC stand-in with an "outside" namespace
* `leaks`     - what a session left behind (`find_leaks`, `remove_leaks`, lease files)
* `hostsnap`  - before/after snapshots of host networking state
* `mountns`   - private mount namespaces (the runtimes' plugin and CNI directories)
* `dockerd`, `docker_scenario`, `plugin_client`, `containerd`, `podman`, `images`,
  `runtime_checks`, `daemon`, `cli`, `examples`, `ipam_config`, `fuzzing`, `paths`

Kept import-light (no pytest import here) because benchmarks run `python -m
tests.support.cnitool`. `requires_root` (resolved lazily) is the `root` marker, for a test file
outside the folders that get it anyway (tests/integration, runtime, guest).
"""

from __future__ import annotations

from typing import Any

__all__ = ["requires_root"]


def __getattr__(name: str) -> Any:
    if name == "requires_root":
        import pytest

        # The marker is turned into a skip by tests/conftest.py when not running as root.
        return pytest.mark.root
    raise AttributeError(name)
