"""bench/run.py's result writers on a small, made-up result: the table of ratios it writes to
bench/RESULTS.md (with date, load and method) and the full report, without running a benchmark."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench import run

GO, PY, EMPTY = "Go bridge+host-local", "pybridge", run.EMPTY


def _cycles(add: float, delete: float) -> dict[str, list[float]]:
    return {"ADD": [add] * 3, "DEL": [delete] * 3, "ADD_cpu": [add / 2] * 3, "DEL_cpu": [delete / 2] * 3}


def fake_results() -> dict:
    scaling = {GO: {0: _cycles(25.0, 70.0), 1000: _cycles(125.0, 90.0)},
               PY: {0: _cycles(16.0, 35.0), 1000: _cycles(17.6, 36.0)},
               GO + EMPTY: {0: _cycles(25.0, 70.0), 1000: _cycles(30.0, 70.0)},
               PY + EMPTY: {0: _cycles(16.0, 35.0), 1000: _cycles(16.5, 35.0)}}
    return {
        "config": {"quick": False, "runs": 30, "checkpoints": [0, 1000], "scale_runs": 15, "parallel": 32,
                   "load_before": (1.0, 1.2, 1.3), "cpus": 2, "kernel": "6.1.0-test", "python": "3.11.2",
                   "started": "2026-11-26 05:08 UTC"},
        "latency": {GO: _cycles(29.2, 76.8), PY: _cycles(18.8, 36.9)},
        "latency_nodaemon": {"pybridge (no daemon)": _cycles(201.0, 246.0)},
        "scaling": scaling,
        "daemon_ms": {0: {PY: {"ADD": [5.3], "DEL": [4.0]}}, 1000: {PY: {"ADD": [5.4], "DEL": [4.1]}}},
        "load_at": {PY: {0: 1.5, 1000: 2.5}, GO: {0: 2.0, 1000: 3.0}},
        "parallel": {GO: [{"add_wall_ms": 607.0, "del_wall_ms": 1335.0, "failures": 0, "duplicates": 0}],
                     PY: [{"add_wall_ms": 344.0, "del_wall_ms": 257.0, "failures": 0, "duplicates": 0}]},
        "docker": {"builtin_ms": 316.0, "pybridge_ms": 299.0, "rss_mib": 132.0},
        "daemon": {"rss_mib": 47.9, "idle_cpu_percent": 0.0, "idle_seconds": 5.0},
        "notes": [],
    }


def test_summary_has_date_load_method_and_the_ratios(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    run.write_summary(fake_results(), path)
    text = path.read_text()
    assert text.startswith("# Benchmark results")
    assert "2026-11-26 05:08 UTC" in text and "full run" in text
    assert "load average 1.0 before the run, 1.5–3.0 at the scaling points" in text
    assert "docs/performance.md" in text
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "| 0.64 | ≤ 0.8 | PASS |" in rows["ADD, empty network"]
    assert "| 0.48 | ≤ 0.8 | PASS |" in rows["DEL"]
    assert "×1.10" in rows["ADD with 1000 attached / with 0 (growth; each plugin alone on the host)"]
    assert "| 0.57 | ≤ 1.0, all ok | PASS |" in rows["32 parallel ADDs, wall time"]
    assert "| 0.95 | ≤ 1.2 | PASS |" in rows["Docker: `docker run` to first ping"]


def test_summary_keeps_what_follows_the_marker(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(f"# old\n\nold table\n{run.SUMMARY_MARKER}\n\n## IPAM allocation\n\nkept table\n")
    run.write_summary(fake_results(), path)
    text = path.read_text()
    assert "old table" not in text and "2026-11-26 05:08 UTC" in text
    assert text.endswith(f"{run.SUMMARY_MARKER}\n\n## IPAM allocation\n\nkept table\n")
    run.write_summary(fake_results(), path)  # idempotent: one marker, one copy of the kept part
    assert path.read_text() == text


def test_full_report_renders_the_same_rows(tmp_path: Path) -> None:
    text = run.report(fake_results(), tmp_path)
    assert (tmp_path / "results.md").read_text() == text
    assert "| 0.64 | ≤ 0.8 | PASS |" in text and "47.9 MiB" in text


def test_help_runs_without_root() -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(root / "bench" / "run.py"), "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "--summary" in proc.stdout
