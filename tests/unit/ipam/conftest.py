"""Fixtures of the IPAM tests: every store lives under pytest's tmp_path, never /var/lib."""

from __future__ import annotations

from pathlib import Path

import pytest

from cni_bridge.ipam.store import LeaseStore
from tests.support.ipam_config import NETWORK


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "ipam"


@pytest.fixture
def store(data_dir: Path) -> LeaseStore:
    return LeaseStore(data_dir, NETWORK)
