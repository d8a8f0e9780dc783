"""Shared test infrastructure for pybridge's tests (no test module imports another: what two
test modules share lives here or in a conftest fixture).

* `tests.support.cnitool`  - a CNI runtime driver with libcni semantics (also a CLI)
* `tests.support.netns`    - namespaces, unique names/subnets, the uplink topology, leak checks
* `tests.support.hostsnap` - before/after snapshots of host networking state

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
