"""The Celery app of the worker: `celery -A worker.app worker -Q video,live`."""

from __future__ import annotations

import logging

from common.queue import make_celery
from worker.settings import WorkerSettings

logging.getLogger(__name__).addHandler(logging.NullHandler())

app = make_celery(WorkerSettings())

# Registers the tasks on `app`; imported last because tasks.py imports `app` from here.
import worker.tasks  # noqa: E402, F401
