"""A file the worker's main process touches while it can reach Redis: the container's health check.

`celery inspect ping` answers the same question but starts a Python that imports the app (and with it
TensorFlow, seconds and ~600 MB) on every check; `find FILE -newermt '-60 seconds'` costs nothing.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import redis

log = logging.getLogger(__name__)


def beat_forever(path: Path, redis_url: str, interval_s: float, stop: threading.Event) -> None:
    """Every `interval_s`: PING Redis, and only when it answers, touch `path`."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    path.parent.mkdir(parents=True, exist_ok=True)
    while not stop.is_set():
        try:
            client.ping()
            path.touch()
        except (redis.RedisError, OSError) as exc:
            log.warning("heartbeat: %s not touched: %s", path, exc)
        stop.wait(interval_s)


def start(path: Path, redis_url: str, interval_s: float = 10.0) -> threading.Event:
    """Beat in a daemon thread; set the returned event to stop."""
    stop = threading.Event()
    thread = threading.Thread(
        target=beat_forever, args=(path, redis_url, interval_s, stop), name="heartbeat", daemon=True
    )
    thread.start()
    return stop
