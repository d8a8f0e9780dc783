"""Issue 9: every example config under plugin-spec/examples/ is valid: it parses with pybridge's own
config parsers, names one pybridge network, and chains only plugins that exist. Written
generically: a new example file is picked up without touching this test. That the bridge-mode
examples really work: tests/integration/test_examples.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cni_bridge.config import parse_network
from cni_bridge.ipam.config import parse_ipam_config
from tests.support.examples import EXAMPLES, FILES, plugins_of

GO_PLUGINS = Path("/usr/lib/cni")


def test_there_are_examples() -> None:
    assert FILES, f"no example configs in {EXAMPLES}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_example_parses(path: Path) -> None:
    doc = json.loads(path.read_text())
    assert isinstance(doc.get("name"), str) and doc.get("cniVersion"), "name and cniVersion are required"
    ours = 0
    for plugin in plugins_of(doc):
        assert isinstance(plugin.get("type"), str), "every plugin needs a type"
        if plugin["type"] == "pybridge":
            ours += 1
            spec = parse_network({**plugin, "name": doc["name"]})
            assert spec.name == doc["name"]
        ipam = plugin.get("ipam") or {}
        if ipam.get("type") == "pybridge-ipam":
            cfg = parse_ipam_config(ipam)
            assert cfg.ranges
        elif plugin["type"] != "pybridge" and GO_PLUGINS.is_dir():
            assert (GO_PLUGINS / plugin["type"]).exists(), f"chained plugin {plugin['type']} not in {GO_PLUGINS}"
    assert ours == 1, "each example shows exactly one pybridge network"
