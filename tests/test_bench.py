"""`make bench` must keep running: every benchmark module imports and parses its command line.

The benchmarks themselves are long and stay out of `make test`; this catches the cheap breakage (a helper
renamed under them) that would otherwise surface only when someone next measures.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = sorted(p.stem for p in (REPO_ROOT / "bench").glob("bench_*.py"))


def test_every_benchmark_is_found():
    assert {"bench_detection", "bench_pipeline", "bench_tracking"} <= set(BENCHMARKS)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_imports_and_shows_its_help(name):
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--help"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
