"""The Celery app of the worker: `celery -A worker.app worker -Q video` (and `-Q live` for webcam frames).

Order matters here: prometheus_client picks its multiprocess mode when first imported, so the folder of
the pool's metric files is set before anything imports it.
"""

from __future__ import annotations

import os

from celery import signals

from common import logs
from common.queue import LIVE_QUEUE, VIDEO_QUEUE, make_celery
from worker import heartbeat, scratch
from worker.settings import WorkerSettings

_settings = WorkerSettings()
# In the main process, before the pool forks: folders left by killed processes go, then a fresh one for
# the pool's metric files.
scratch.sweep(_settings.scratch_dir)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(scratch.metrics_dir(_settings.scratch_dir))

app = make_celery(_settings)


@signals.setup_logging.connect
def _setup_logging(loglevel=None, **_) -> None:
    """Celery leaves logging to us when this signal has a receiver: text or JSON, job id on each line."""
    logs.configure(_settings.log_format, loglevel or "INFO")


@signals.worker_ready.connect
def _start_main_process_services(**_) -> None:
    """In the main process, once the pool is up: the health file and the metrics endpoint."""
    if _settings.health_file:
        heartbeat.start(_settings.health_file, _settings.redis_url, _settings.health_interval_s)
    if _settings.metrics_port:
        from worker import metrics

        metrics.serve(_settings.metrics_port, _settings.redis_url, (VIDEO_QUEUE, LIVE_QUEUE))


@signals.worker_process_shutdown.connect
def _forget_process_gauges(pid=None, **_) -> None:
    from worker import metrics

    metrics.process_exited(pid or os.getpid())


@signals.task_prerun.connect
def _job_id_on_log_lines(args=None, **_) -> None:
    """Every line a task logs, Celery's included, names its job (the first argument of job tasks)."""
    first = args[0] if args else None
    logs.current_job_id.set(first if isinstance(first, str) and len(first) == 32 else None)


# Registers the tasks on `app`; imported last because worker.tasks imports `app` from here.
import worker.tasks  # noqa: E402, F401
