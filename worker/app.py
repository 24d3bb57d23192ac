"""The Celery app of the worker: `celery -A worker.app worker -Q video` (and `-Q live` for webcam frames)."""

from __future__ import annotations

from celery import signals

from common.queue import make_celery
from worker import heartbeat
from worker.settings import WorkerSettings

app = make_celery(WorkerSettings())


@signals.worker_ready.connect
def _start_heartbeat(**_) -> None:
    """In the main process, once the pool is up: the health file the container's probe looks at."""
    settings = WorkerSettings()
    if settings.health_file:
        heartbeat.start(settings.health_file, settings.redis_url, settings.health_interval_s)


# Registers the tasks on `app`; imported last because worker.tasks imports `app` from here.
import worker.tasks  # noqa: E402, F401
