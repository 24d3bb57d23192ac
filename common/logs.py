"""Log lines as text or as JSON (EMOJI_LOG_FORMAT), each with the id of the job it is about, if any.

The job id lives in a context variable: the worker sets it for the length of a task (worker/app.py), so
every line logged meanwhile, ours, Celery's or a library's, carries it without being passed around.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime

current_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)

# Celery's "Task ... received" line, logged by the main process before any task runs, passes the task's
# arguments as `data`; a job task's first argument is its job id.
_FIRST_ARG_JOB_ID = re.compile(r"^[\[(]'([0-9a-f]{32})'")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s%(job)s: %(message)s"


class JobIdFilter(logging.Filter):
    """Puts the current job id on every record: `job_id` (None when there is none) and `job` for text."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = getattr(record, "job_id", None) or current_job_id.get()
        data = getattr(record, "data", None)
        if job_id is None and isinstance(data, dict) and isinstance(data.get("args"), str):
            match = _FIRST_ARG_JOB_ID.match(data["args"])
            job_id = match.group(1) if match else None
        record.job_id = job_id
        record.job = f" [job {job_id}]" if job_id else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, process, message, job_id, and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id:
            entry["job_id"] = job_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(log_format: str = "text", level: str | int = "INFO") -> None:
    """One handler on the root logger, in the chosen format; loggers with their own handlers (uvicorn's)
    are made to pass their lines to it, so every line of the process has the same shape."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    if log_format == "json":
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logger = logging.getLogger(name)
            logger.handlers.clear()
            logger.propagate = True
