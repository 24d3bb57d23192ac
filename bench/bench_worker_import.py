"""What a worker pool process pays before its first frame: `import worker.tasks` in a fresh interpreter.

Each run is a new `python -c` (nothing cached in the process); the figures are the median of the runs:
seconds for the import alone, and the process's peak RSS after it. `python -m bench.bench_worker_import`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROBE = (
    "import json, resource, sys, time\n"
    "t = time.perf_counter()\n"
    "import worker.tasks\n"
    "print(json.dumps({'s': time.perf_counter() - t,\n"
    "    'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,\n"
    "    'tensorflow': 'tensorflow' in sys.modules}))\n"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="another checkout, e.g. an older one")
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        out = subprocess.run(
            [sys.executable, "-c", PROBE], cwd=args.repo, capture_output=True, text=True, check=True,
            env={"PYTHONPATH": str(args.repo), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| import worker.tasks | median s | min s | peak RSS MB | tensorflow imported |")
    print("|---|---|---|---|---|")
    seconds = [r["s"] for r in runs]
    print(
        f"| {args.runs} fresh interpreters, {args.repo.name} | {statistics.median(seconds):.2f} "
        f"| {min(seconds):.2f} "
        f"| {statistics.median(r['rss_mb'] for r in runs):.0f} | {any(r['tensorflow'] for r in runs)} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
