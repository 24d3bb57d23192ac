"""The Celery app of the worker: `celery -A worker.app worker -Q video,live`."""

from __future__ import annotations

from common.queue import make_celery
from worker.settings import WorkerSettings

app = make_celery(WorkerSettings())

# Registers the tasks on `app`; imported last because worker.tasks imports `app` from here.
import worker.tasks  # noqa: E402, F401
