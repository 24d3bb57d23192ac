#!/usr/bin/env bash
# `make run`: Redis (reused when one answers), the model server, the workers and the gateway, all on
# 127.0.0.1, in the foreground; Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
LOGS=var/logs
mkdir -p "$LOGS"

REDIS_PORT=${REDIS_PORT:-6379}
GATEWAY_PORT=${GATEWAY_PORT:-8000}
MODEL_SERVER_PORT=${MODEL_SERVER_PORT:-8500}
export EMOJI_REDIS_URL=${EMOJI_REDIS_URL:-redis://127.0.0.1:$REDIS_PORT/0}
export EMOJI_MODEL_SERVER_ADDRESS=${EMOJI_MODEL_SERVER_ADDRESS:-127.0.0.1:$MODEL_SERVER_PORT}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

pids=()
stop_all() {
    trap - INT TERM EXIT
    echo "stopping..."
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    exit 0
}
trap stop_all INT TERM EXIT

start() {  # name, command...: runs in the background, logs to var/logs/<name>.log
    local name=$1; shift
    "$@" >"$LOGS/$name.log" 2>&1 &
    pids+=($!)
    echo "started $name (pid $!, log $LOGS/$name.log)"
}

# Our own Redis with its append-only file in var/redis: queued jobs and their records survive a restart
# (docs/reliability.md). A Redis already on the port is reused, with whatever persistence it has.
if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    echo "reusing the Redis on 127.0.0.1:$REDIS_PORT (appendonly: $(redis-cli -p "$REDIS_PORT" config get appendonly | tail -1))"
else
    mkdir -p var/redis
    start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$PWD/var/redis" \
        --appendonly yes --appendfsync everysec --save ""
fi

start model_server "$BIN/python" -m model_server --port "$MODEL_SERVER_PORT" --rest_api_port 0 \
    --model_name emotion --model_base_path "$PWD/model_server/models/emotion" \
    --enable_batching --batching_parameters_file model_server/batching.config
# Videos and webcam frames get separate workers, so a long video never delays the live page; the video
# workers also deliver webhooks (light, network-bound tasks on their own queue).
start worker "$BIN/celery" -A worker.app worker -Q video,webhooks --concurrency 2 --loglevel INFO -n video@%h
start live_worker "$BIN/celery" -A worker.app worker -Q live --concurrency 1 --loglevel INFO -n live@%h
start gateway "$BIN/python" -m uvicorn gateway.app:app --host 127.0.0.1 --port "$GATEWAY_PORT"

for _ in $(seq 120); do
    if curl -fs "http://127.0.0.1:$GATEWAY_PORT/healthz" >/dev/null 2>&1; then break; fi
    sleep 1
done
echo
echo "  http://127.0.0.1:$GATEWAY_PORT    (Ctrl-C stops everything)"
echo
wait -n "${pids[@]}" || true
echo "a service exited; see $LOGS/ (stopping the others)"
exit 1
