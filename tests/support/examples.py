"""The example configs shipped in plugin-spec/examples/ (what a user copies first).

Why here: the unit test parses every file, the integration tests run them; all must agree on
which files are examples and where a network list keeps its plugins.
"""

from __future__ import annotations

from typing import Any

from tests.support.paths import REPO

__all__ = ["EXAMPLES", "FILES", "plugins_of"]

EXAMPLES = REPO / "plugin-spec" / "examples"
FILES = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".conflist", ".conf", ".json")) \
    if EXAMPLES.is_dir() else []


def plugins_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The plugin objects of a network list, or the one object of a single-plugin config."""
    return doc["plugins"] if "plugins" in doc else [doc]
