"""Cheap checks that keep the documentation honest: relative links resolve (files and #anchors),
the README opens with the two commands and stays short, and the configuration keys and Docker
options the docs list are exactly those the code reads."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.config import parse_network
from cni_bridge.docker.options import OPTION_KEYS
from cni_bridge.ipam.config import parse_ipam_config, parse_store

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md",
                ROOT / "bench" / "RESULTS.md", ROOT / "plugin-spec" / "README.md", *DOCS.glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _prose(path: Path) -> str:
    """The page without fenced code blocks (a `[x](y)` in a code sample is not a link)."""
    return FENCE.sub("", path.read_text())


def _anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to '-', -1/-2 for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(path).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _relative_links() -> Iterator[tuple[Path, str]]:
    for page in PAGES:
        for target in LINK.findall(_prose(page)):
            if not re.match(r"[a-z]+:", target):  # http:, https:, mailto:, file:
                yield page, target


@pytest.mark.parametrize("page,target", list(_relative_links()),
                         ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else v)
def test_relative_link_points_to_an_existing_file(page: Path, target: str) -> None:
    path, _, anchor = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    assert dest.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
    if anchor:
        assert dest.suffix == ".md" and anchor in _anchors(dest), \
            f"{page.relative_to(ROOT)} links to {target}: no such heading in {dest.relative_to(ROOT)}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(_prose(ROOT / "README.md"))}
    assert sorted(p.name for p in DOCS.glob("*.md") if p.resolve() not in linked) == []


def test_readme_is_short_and_opens_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"
    assert lines[0].startswith("# ")
    i = 1
    while not lines[i].strip():
        i += 1
    while lines[i].strip():            # the intro paragraph
        assert not lines[i].startswith(("#", "```")), "the intro paragraph comes first"
        i += 1
    while not lines[i].strip():
        i += 1
    assert lines[i].startswith("```"), "after the intro paragraph: a code block with the two commands"
    block = []
    for line in lines[i + 1:]:
        if line.startswith("```"):
            break
        block.append(line.split("#")[0].strip())
    commands = [c for c in block if c]
    assert commands == ["sudo ./install.sh", "sudo bash tests/run.sh"], commands


# --- configuration keys: the docs' tables against the keys the parsers read -----------------------
class Recorder(dict):
    """A config object that notes every key a parser looks at (get, [], in)."""

    def __init__(self, data: dict[str, Any], seen: set[str]) -> None:
        super().__init__(data)
        self.seen = seen

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.seen.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.seen.add(str(key))
        return super().__contains__(key)


# Read by the CNI front end (cni/protocol.py, cni/handler.py, ipam/plugin.py), not by parse_network.
PROTOCOL_KEYS = {"cniVersion", "type", "runtimeConfig", "args", "prevResult"}


def _table_keys(page: Path, heading: str) -> set[str]:
    """Backticked names in the first column of the table under `heading` (up to the next heading)."""
    text = _prose(page)
    start = text.index(heading + "\n")
    section = re.split(r"^#{1,6} ", text[start + len(heading):], maxsplit=1, flags=re.M)[0]
    keys: set[str] = set()
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if row.startswith("|") and cells[0] not in ("key", "option") and not set(cells[0]) <= set("- "):
            keys.update(re.findall(r"`([^`]+)`", cells[0]))
    return keys


def test_documented_network_keys_are_the_keys_the_code_reads() -> None:
    seen: set[str] = set()
    parse_network(Recorder({"name": "net1"}, seen))
    sources = "\n".join(p.read_text() for p in (ROOT / "cni_bridge").rglob("*.py"))
    assert all(f'"{key}"' in sources for key in PROTOCOL_KEYS)
    documented = _table_keys(DOCS / "configuration.md", "## Network keys")
    assert documented == seen | PROTOCOL_KEYS, (
        f"documented, not read: {sorted(documented - seen - PROTOCOL_KEYS)}; "
        f"read, not documented: {sorted((seen | PROTOCOL_KEYS) - documented)}")


def test_documented_ipam_and_range_keys_are_the_keys_the_code_reads() -> None:
    top: set[str] = set()
    ranges: set[str] = set()
    ipam = {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.20", "gateway": "10.0.0.1",
            "ranges": [[Recorder({"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.20",
                                  "gateway": "10.1.0.1"}, ranges)]],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}], "dataDir": "/var/lib/cni/x", "dns": {}}
    parse_ipam_config(Recorder(ipam, top))
    assert '"type"' in (ROOT / "cni_bridge" / "cni" / "ipam_client.py").read_text()  # ipam.type: which plugin
    page = DOCS / "configuration.md"
    assert _table_keys(page, "## IPAM keys") == top | {"type"}
    assert _table_keys(page, "### Range keys") == ranges


def test_documented_store_keys_are_the_keys_the_code_reads() -> None:
    seen: set[str] = set()
    parse_store(Recorder({"type": "etcd", "endpoints": ["http://127.0.0.1:2379"]}, seen))
    parse_store(Recorder({"type": "file"}, seen))
    assert _table_keys(DOCS / "configuration.md", "### Store keys") == seen


def test_documented_docker_options_are_the_options_the_driver_accepts() -> None:
    documented = _table_keys(DOCS / "docker.md", "## `docker network create -o` options")
    assert documented == set(OPTION_KEYS)
