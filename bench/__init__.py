"""Benchmarks: pybridge vs the Go reference CNI plugins and Docker's built-in bridge (bench/run.py)."""
