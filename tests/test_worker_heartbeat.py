"""The worker's health file: touched while Redis answers, left to go stale when it does not."""

from __future__ import annotations

import os
import time

from tests.conftest import free_port
from worker import heartbeat


def test_heartbeat_touches_the_file_while_redis_answers(redis_url, tmp_path):
    path = tmp_path / "alive"
    stop = heartbeat.start(path, redis_url, interval_s=0.1)
    try:
        deadline = time.monotonic() + 5
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        first = path.stat().st_mtime_ns
        time.sleep(0.5)
        assert path.stat().st_mtime_ns > first, "the file should be touched again and again"
    finally:
        stop.set()


def test_heartbeat_does_not_touch_the_file_when_redis_is_down(tmp_path):
    path = tmp_path / "alive"
    path.touch()
    old = time.time() - 3600
    os.utime(path, (old, old))
    stop = heartbeat.start(path, f"redis://127.0.0.1:{free_port()}/0", interval_s=0.1)
    time.sleep(0.6)
    stop.set()
    assert path.stat().st_mtime == old
