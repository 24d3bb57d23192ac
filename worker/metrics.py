"""The worker's Prometheus metrics: tasks and jobs by outcome, seconds per stage, frames, gRPC calls, and
the queues' length.

Celery's prefork pool runs tasks in several processes: prometheus_client's multiprocess mode has each one
write its values to files in PROMETHEUS_MULTIPROC_DIR (set by worker/app.py before this module is
imported), and the main process serves their sum on EMOJI_METRICS_PORT.
"""

from __future__ import annotations

import logging

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)

TASKS = Counter(
    "emoji_worker_tasks_total",
    "Task runs by task and outcome: succeeded, retried, failed (the job failed), skipped (job gone).",
    ["task", "outcome"],
)
JOBS = Counter("emoji_worker_jobs_total", "Jobs finished, by outcome: succeeded or failed.", ["outcome"])
TASK_SECONDS = Histogram(
    "emoji_worker_task_seconds", "Wall seconds per task, i.e. per pipeline stage.", ["task"],
    buckets=STAGE_BUCKETS,
)
FRAMES = Counter(
    "emoji_worker_frames_total",
    "Video frames processed, by stage (batch: decoded, analysed, drawn, encoded); rate() gives frames/s.",
    ["stage"],
)
LIVE_FRAMES = Counter("emoji_worker_live_frames_total", "Webcam frames answered.")
GRPC_SECONDS = Histogram(
    "emoji_worker_grpc_seconds", "Model server calls: seconds per call, by method.", ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
GRPC_ERRORS = Counter(
    "emoji_worker_grpc_errors_total", "Model server calls that failed, by method and gRPC status.",
    ["method", "code"],
)
STORAGE_SECONDS = Histogram(
    "emoji_worker_storage_seconds", "Object store transfers of a task (fetch inputs, upload outputs).",
    ["direction"], buckets=STAGE_BUCKETS,
)


class QueueLength:
    """`emoji_queue_length{queue}`: tasks waiting in each Celery queue (a Redis list), read at scrape time."""

    def __init__(self, redis_url: str, queues: tuple[str, ...]) -> None:
        self.client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self.queues = queues

    def collect(self):
        family = GaugeMetricFamily("emoji_queue_length", "Tasks waiting in the queue.", labels=["queue"])
        try:
            pipe = self.client.pipeline()
            for queue in self.queues:
                pipe.llen(queue)
            for queue, length in zip(self.queues, pipe.execute(), strict=True):
                family.add_metric([queue], length)
        except redis.RedisError as exc:
            log.warning("metrics: queue length unknown: %s", exc)
        yield family


def serve(port: int, redis_url: str, queues: tuple[str, ...]) -> bool:
    """In the main process: every pool process's metrics, summed, and the queue lengths, on `port`."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(QueueLength(redis_url, queues))
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:
        log.warning("metrics: port %d not available (%s); this worker serves no metrics", port, exc)
        return False
    log.info("metrics on :%d/metrics", port)
    return True


def process_exited(pid: int) -> None:
    multiprocess.mark_process_dead(pid)
