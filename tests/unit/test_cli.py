"""Issue 9: `cni-bridge` help and usage errors, `ipam ls|release` and the CLI's log file: no kernel,
no root (stores under tmp). `status` and `gc` on the real kernel: tests/integration/test_cli.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cni_bridge.ipam.config import parse_ipam_config
from cni_bridge.ipam.store import LeaseStore
from tests.support.cli import cli


# --- help and usage ----------------------------------------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["--help"], ["status", "gc", "ipam", "--debug", "--log-file"]),
    (["status", "--help"], ["--json", "--data-dir", "--conf-dir", "exit codes"]),
    (["gc", "--help"], ["--apply", "stale", "Dry run", "exit codes"]),
    (["ipam", "--help"], ["ls", "release", "--data-dir"]),
    (["ipam", "ls", "--help"], ["--json", "NETWORK"]),
    (["ipam", "release", "--help"], ["--address", "--container", "--ifname"]),
])
def test_every_command_has_help(argv: list[str], words: list[str]) -> None:
    proc = cli(*argv)
    assert proc.returncode == 0, proc.stderr
    for word in words:
        assert word in proc.stdout, f"{word!r} missing from `cni-bridge {' '.join(argv)}`"


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert cli().returncode == 2
    assert cli("ipam").returncode == 2
    assert cli("ipam", "release", "net").returncode == 2                 # neither --address nor --container
    assert cli("ipam", "--data-dir", str(tmp_path), "release", "net", "--address", "nope").returncode == 2
    assert cli("ipam", "--data-dir", str(tmp_path), "release", "../x", "--address", "10.0.0.2").returncode == 2


# --- ipam ls / release (no kernel needed) ------------------------------------------------------
def _store(tmp_path: Path, network: str = "clinet") -> LeaseStore:
    cfg = parse_ipam_config({"ranges": [[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd00:77::/64"}]],
                             "dataDir": str(tmp_path)})
    store = LeaseStore(tmp_path, network)
    store.allocate("ctr-a", "eth0", cfg)
    store.allocate("ctr-b", "eth0", cfg)
    store.allocate("ctr-b", "net1", cfg)
    return store


def test_ipam_ls_table_and_json(tmp_path: Path) -> None:
    _store(tmp_path)
    _store(tmp_path, "othernet")
    proc = cli("ipam", "--data-dir", str(tmp_path), "ls")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["NETWORK", "ADDRESS", "CONTAINER", "ID", "IFNAME", "SINCE"]
    assert len(lines) == 1 + 12
    assert any(line.split()[:4] == ["clinet", "10.77.0.2/24", "ctr-a", "eth0"] for line in lines)
    proc = cli("ipam", "ls", "clinet", "--json", "--data-dir", str(tmp_path))
    rows = json.loads(proc.stdout)
    assert {r["network"] for r in rows} == {"clinet"} and len(rows) == 6
    assert {(r["container_id"], r["ifname"]) for r in rows} == {("ctr-a", "eth0"), ("ctr-b", "eth0"),
                                                                 ("ctr-b", "net1")}
    assert all({"address", "subnet", "gateway", "since"} <= r.keys() for r in rows)


def test_ipam_release_by_address_and_container(tmp_path: Path) -> None:
    store = _store(tmp_path)
    proc = cli("ipam", "--data-dir", str(tmp_path), "release", "clinet", "--address", "10.77.0.2")
    assert proc.returncode == 0, proc.stderr
    assert "released 10.77.0.2" in proc.stdout
    assert cli("ipam", "--data-dir", str(tmp_path), "release", "clinet", "--address", "10.77.0.2").returncode == 1
    proc = cli("ipam", "--data-dir", str(tmp_path), "release", "clinet", "--container", "ctr-b",
               "--ifname", "net1")
    assert proc.returncode == 0 and proc.stdout.count("released") == 2
    assert {lease.owner for lease in store.all_leases()} == {("ctr-a", "eth0"), ("ctr-b", "eth0")}
    proc = cli("ipam", "--data-dir", str(tmp_path), "release", "clinet", "--container", "ctr-b")
    assert proc.returncode == 0
    assert {lease.owner for lease in store.all_leases()} == {("ctr-a", "eth0")}
    assert cli("ipam", "--data-dir", str(tmp_path), "release", "clinet", "--container", "nobody").returncode == 1


def test_cli_log_file(tmp_path: Path) -> None:
    _store(tmp_path)
    log = tmp_path / "ops.log"
    proc = cli("--log-file", str(log), "ipam", "--data-dir", str(tmp_path), "release", "clinet",
               "--address", "10.77.0.3")
    assert proc.returncode == 0
    assert "ipam release net=clinet" in log.read_text()
    assert "ipam release net=clinet" in proc.stderr
