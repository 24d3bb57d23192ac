"""One run of a batch at a time, and only the newest run may record its result.

A lock per (job, stage, batch) in Redis, taken with a fencing token: a number that grows with every take.
Before a run records anything it checks that the lock still holds its own token; a run that lost the lock
(it outlived the lock's time-to-live, or a newer run took over from a dead holder) stops without writing.
The lock lives a little longer than a task's hard time limit, so a holder that is still alive always has it.
"""

from __future__ import annotations

import os
import socket

import redis

from common.jobs import JobStore

# KEYS[1] the lock; ARGV[1] the new value, ARGV[2] ttl ms, ARGV[3] the value to replace ('' = none).
_TAKE = """
local current = redis.call('GET', KEYS[1])
if (not current and ARGV[3] == '') or current == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return 1
end
return 0
"""
# KEYS[1] the lock; ARGV[1] our value: delete only our own lock.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LockLost(Exception):
    """Another run of the batch holds the lock now: this one must not write."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BatchLock:
    def __init__(self, store: JobStore, job_id: str, stage: str, batch_index: int, ttl_s: float) -> None:
        self.redis: redis.Redis = store.redis
        self.key = store.key(job_id, f"lock:{stage}:{batch_index}")
        self.fence_key = store.key(job_id, f"fence:{stage}:{batch_index}")
        self.ttl_ms = int(ttl_s * 1000)
        self.ttl_s = ttl_s
        self.value: str | None = None
        self._take = self.redis.register_script(_TAKE)
        self._release = self.redis.register_script(_RELEASE)

    def acquire(self) -> bool:
        """Take the lock; also take it over from a holder on this machine whose process is dead (a killed
        pool process: its task comes back at once and must not wait out the lock)."""
        token = self.redis.incr(self.fence_key)
        self.redis.expire(self.fence_key, int(self.ttl_s) * 4 + 60)
        value = f"{token}:{socket.gethostname()}:{os.getpid()}"
        current = self.redis.get(self.key)
        replace = ""
        if current:
            _, host, pid = current.rsplit(":", 2) if current.count(":") >= 2 else ("", "", "0")
            if host != socket.gethostname() or _pid_alive(int(pid)):
                return False
            replace = current
        if not self._take(keys=[self.key], args=[value, self.ttl_ms, replace]):
            return False
        self.value = value
        return True

    def check(self) -> None:
        """The fencing check: raise LockLost unless the lock still holds this run's token."""
        if self.value is None or self.redis.get(self.key) != self.value:
            raise LockLost(f"{self.key} is held by another run now")

    def release(self) -> None:
        if self.value is not None:
            self._release(keys=[self.key], args=[self.value])
            self.value = None
