#!/usr/bin/env bash
# `make bench`: every benchmark in one go, against a local stack (started here when none answers).
# Figures print as markdown tables; docs/benchmarks.md records them with this command.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
URL=${URL:-http://127.0.0.1:8000}
started=""
if ! curl -fs "$URL/healthz" >/dev/null 2>&1; then
    bash deploy/run-local.sh >var/bench-stack.log 2>&1 &
    started=$!
    trap 'kill -TERM $started 2>/dev/null; wait $started 2>/dev/null || true' EXIT
    for _ in $(seq 180); do curl -fs "$URL/healthz" >/dev/null 2>&1 && break; sleep 1; done
fi
echo "## model server"; $PY -m bench.bench_model_server
# The whole pipeline starts stacks of its own (1 and 2 worker processes); BENCH_LONG=1 adds the 10-minute
# 1080p clip (about half an hour on 2 cores, plus making the clip once).
echo "## whole pipeline"; $PY -m bench.bench_pipeline
if [ "${BENCH_LONG:-0}" = 1 ]; then
    echo "## whole pipeline, 10 minutes 1080p"; $PY -m bench.bench_pipeline --seconds 600 --size 1920x1080
fi
echo "## worker import"; $PY -m bench.bench_worker_import
echo "## finish step memory"; $PY -m bench.bench_finish
echo "## photos: 12 MP worker time, photo vs the same picture as a video"; $PY -m bench.bench_photo
echo "## video I/O"; $PY -m bench.bench_video_io
echo "## live latency"; $PY -m bench.bench_live --url "$URL"
echo "## tracking and smoothing"; $PY -m bench.bench_tracking
echo "## faces left uncovered by style=cover"; $PY -m bench.bench_cover
echo "## face detection"; $PY -m bench.bench_detection
echo "## face crop calibration"; $PY -m bench.bench_face_crop
echo "## emotion model on hand-labelled real faces"; $PY -m bench.bench_real_faces --git-version 3
echo "## object storage"; $PY -m bench.bench_storage
echo "## owners: key checks and quotas"; $PY -m bench.bench_auth --url "$URL" --redis-url "${EMOJI_REDIS_URL:-redis://127.0.0.1:6379/0}"
