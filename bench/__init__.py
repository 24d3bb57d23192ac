"""Benchmarks: `make bench` runs them all (bench/run-all.sh)."""
