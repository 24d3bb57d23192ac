"""Job records in Redis: what the gateway shows and what the worker's tasks update.

A job's progress is counted as frames of finished batches (faces found, classified, emoji drawn and
encoded, in one pass). Batches record themselves in a hash keyed by batch index, so a batch that runs twice
(a worker died, the task came back) counts once.

Every change a worker makes is conditional, in one Lua script: on the record existing and being queued or
running. A job deleted (or finished) meanwhile is never re-created or revived by a late write.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from enum import StrEnum

import redis
from pydantic import BaseModel

from common.errors import JobNotFound
from common.render_options import RenderOptions

logger = logging.getLogger(__name__)

# The job's part that counts its finished batches: {batch index: frames decoded}.
BATCHES = "batch"
# Share of the progress bar the batches fill; the last 5% is the timeline and joining the pieces with audio.
BATCHES_SHARE = 0.95
KEY_PREFIX = "emoji:job:"
# Every key of one job: the record, the stages' batch counts, its warnings, its tasks' delivery counts.
PARTS: tuple[str, ...] = ("", BATCHES, "warnings", "deliveries")
JOB_INDEX_KEY = "emoji:jobs"
# Each owner's jobs (see gateway/auth.py), newest last; jobs recorded before owners existed belong to the one
# shared local owner.
OWNER_INDEX_PREFIX = "emoji:owner-jobs:"
LEGACY_OWNER = "local"


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class JobError(BaseModel):
    code: str
    message: str


class JobWarning(BaseModel):
    code: str
    message: str
    # The frames concerned, [first, last], when the warning is about some frames only.
    frames: list[int] | None = None


class Job(BaseModel):
    id: str
    status: JobStatus
    filename: str
    progress: float
    frames_done: int
    frames_total: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: JobError | None = None
    video: dict | None = None
    batches_total: int = 0
    warnings: list[JobWarning] = []
    options: RenderOptions = RenderOptions()


ACTIVE = (JobStatus.queued.value, JobStatus.running.value)

# KEYS[1] the job's hash; ARGV[1] how many active states follow, then the states, then field/value pairs.
# Sets the fields only if the record exists and is in one of the states; returns 1 if it did, else 0.
_SET_IF = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
local n = tonumber(ARGV[1])
local ok = false
for i = 2, n + 1 do if ARGV[i] == status then ok = true end end
if not ok then return 0 end
for i = n + 2, #ARGV, 2 do
  if ARGV[i] == 'started_at' then redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
redis.call('PUBLISH', KEYS[1] .. ':changed', '')
return 1
"""

# KEYS[1] the job's hash, KEYS[2] the hash to write into; ARGV field, value. Only while the job is active.
_HSET_IF_ACTIVE = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'running' then return -1 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'heartbeat_at', ARGV[4])
redis.call('PUBLISH', KEYS[1] .. ':changed', '')
return redis.call('HLEN', KEYS[2])
"""


# KEYS[1] the job's hash, KEYS[2] its delivery counts; ARGV field, increment, ttl. Only for an existing job.
_COUNT_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return n
"""


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class JobStore:
    """The Redis side of jobs; every method is one or two round trips and safe to repeat."""

    def __init__(self, client: redis.Redis, ttl_s: int = 7 * 24 * 3600) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self._set_if = client.register_script(_SET_IF)
        self._hset_if_active = client.register_script(_HSET_IF_ACTIVE)
        self._count_if_exists = client.register_script(_COUNT_IF_EXISTS)

    def _set_when(self, job_id: str, states: tuple[str, ...], mapping: dict) -> bool:
        """Set `mapping` on the record only if it exists and its status is one of `states`."""
        args = [len(states), *states]
        for field_name, value in mapping.items():
            args += [field_name, value]
        return bool(self._set_if(keys=[self.key(job_id)], args=args))

    @classmethod
    def from_url(cls, url: str, ttl_s: int = 7 * 24 * 3600) -> JobStore:
        return cls(redis.Redis.from_url(url, decode_responses=True), ttl_s)

    @staticmethod
    def key(job_id: str, part: str = "") -> str:
        return f"{KEY_PREFIX}{job_id}" + (f":{part}" if part else "")

    @classmethod
    def changes_channel(cls, job_id: str) -> str:
        """The pub/sub channel told of every change to the job's record (its progress, its end, its
        deletion), so that a progress stream waits for news instead of reading the job over and over."""
        return cls.key(job_id, "changed")

    def create(self, job_id: str, filename: str, video: dict) -> Job:
        now = _now()
        mapping = {
            "status": JobStatus.queued.value,
            "filename": filename,
            "created_at": now,
            "frames_total": int(video.get("frames", 0)),
            "video": json.dumps(video),
        }
        pipe = self.redis.pipeline()
        pipe.hset(self.key(job_id), mapping=mapping)
        pipe.zadd(JOB_INDEX_KEY, {job_id: time.time()})
        pipe.execute()
        return self.get(job_id)

    def exists(self, job_id: str) -> bool:
        return bool(self.redis.exists(self.key(job_id)))

    def get(self, job_id: str) -> Job:
        pipe = self.redis.pipeline()
        pipe.hgetall(self.key(job_id))
        pipe.hvals(self.key(job_id, BATCHES))
        pipe.hvals(self.key(job_id, "warnings"))
        raw, batches, warnings = pipe.execute()
        if not raw:
            raise JobNotFound(f"no job with id {job_id}")
        try:
            return self._parse(job_id, raw, batches, warnings)
        except (KeyError, ValueError) as exc:
            # A record missing its core fields (written by a late worker before conditional writes, or by
            # hand) is not a job; the API answers 404 for it, never 500.
            raise JobNotFound(f"no job with id {job_id} (its record is incomplete)") from exc

    def _parse(self, job_id: str, raw: dict, batches: list, warnings: list) -> Job:
        total = int(raw.get("frames_total", 0))
        done = min(sum(int(v) for v in batches), total)
        status = JobStatus(raw["status"])
        if status is JobStatus.succeeded:
            progress = 1.0
        elif total:
            progress = BATCHES_SHARE * done / total
        else:
            progress = 0.0
        error = None
        if raw.get("error_code"):
            error = JobError(code=raw["error_code"], message=raw.get("error_message", ""))
        return Job(
            id=job_id,
            status=status,
            filename=raw.get("filename", ""),
            progress=round(progress, 4),
            frames_done=total if status is JobStatus.succeeded else done,
            frames_total=total,
            created_at=_time(raw["created_at"]),
            started_at=_time(raw.get("started_at")),
            finished_at=_time(raw.get("finished_at")),
            error=error,
            video=json.loads(raw["video"]) if raw.get("video") else None,
            batches_total=int(raw.get("batches_total", 0)),
            warnings=sorted(
                (JobWarning.model_validate_json(w) for w in warnings), key=lambda w: (w.frames or [0])[0]
            ),
            options=RenderOptions.from_record(raw),
        )

    def list_ids(self, limit: int = 50) -> list[str]:
        """Newest first; index entries of records Redis has already expired are dropped on the way."""
        # A record expires ttl_s after its job finished; a day's slack covers the job's own run time.
        pipe = self.redis.pipeline()
        pipe.zremrangebyscore(JOB_INDEX_KEY, "-inf", time.time() - self.ttl_s - 24 * 3600)
        pipe.zrevrange(JOB_INDEX_KEY, 0, limit - 1)
        return list(pipe.execute()[1])

    def update(self, job_id: str, **fields) -> bool:
        """Set plain fields (e.g. frames_total, batches_total) on a job still queued or running."""
        mapping = {k: v for k, v in fields.items() if v is not None}
        return self._set_when(job_id, ACTIVE, {**mapping, "heartbeat_at": time.time()})

    def mark_running(self, job_id: str) -> bool:
        """Queued (or running, for a task that came back) -> running; False if the job is gone or over."""
        return self._set_when(
            job_id,
            ACTIVE,
            {"started_at": _now(), "status": JobStatus.running.value, "heartbeat_at": time.time()},
        )

    def mark_batch_done(self, job_id: str, batch_index: int, frames: int) -> int:
        """Record a finished batch and the frames it decoded; returns how many batches are done, -1 if the job
        is gone."""
        keys = [self.key(job_id), self.key(job_id, BATCHES)]
        return int(self._hset_if_active(keys=keys, args=[batch_index, frames, self.ttl_s, time.time()]))

    def batch_done(self, job_id: str, batch_index: int) -> bool:
        return bool(self.redis.hexists(self.key(job_id, BATCHES), str(batch_index)))

    def batches_done(self, job_id: str) -> int:
        return int(self.redis.hlen(self.key(job_id, BATCHES)))

    def frames_decoded(self, job_id: str) -> int:
        """Frames the finished batches decoded, together."""
        return sum(int(v) for v in self.redis.hvals(self.key(job_id, BATCHES)))

    def add_warning(self, job_id: str, key: str, warning: JobWarning) -> bool:
        """Attach a warning to an active job, once per `key` (a batch that runs twice warns once)."""
        return int(
            self._hset_if_active(
                keys=[self.key(job_id), self.key(job_id, "warnings")],
                args=[key, warning.model_dump_json(), self.ttl_s, time.time()],
            )
        ) >= 0

    def count_delivery(self, job_id: str, task_key: str) -> int:
        """A task of the job starts: how many of its deliveries have not ended (this one included). A worker
        killed mid-task never calls `end_delivery`, so the count grows by one per lost worker."""
        keys = [self.key(job_id), self.key(job_id, "deliveries")]
        return int(self._count_if_exists(keys=keys, args=[task_key, 1, self.ttl_s]))

    def end_delivery(self, job_id: str, task_key: str) -> None:
        """The task ended in its own hands (success, failure, retry): it does not count as a lost worker."""
        keys = [self.key(job_id), self.key(job_id, "deliveries")]
        self._count_if_exists(keys=keys, args=[task_key, -1, self.ttl_s])

    def active_jobs(self) -> list[tuple[str, str, float]]:
        """(id, status, seconds since its last sign of life) of every queued or running job in the index."""
        ids = list(self.redis.zrange(JOB_INDEX_KEY, 0, -1))
        pipe = self.redis.pipeline()
        for job_id in ids:
            pipe.hmget(self.key(job_id), "status", "heartbeat_at", "created_at")
        now = time.time()
        out = []
        for job_id, (status, heartbeat, created) in zip(ids, pipe.execute(), strict=True):
            if status not in ACTIVE:
                continue
            last = float(heartbeat) if heartbeat else (
                datetime.fromisoformat(created).timestamp() if created else 0.0
            )
            out.append((job_id, status, now - last))
        return out

    def reset_batches(self, job_id: str) -> None:
        """Forget the finished batches (a job re-queued from its first step)."""
        self.redis.delete(self.key(job_id, BATCHES))

    def _finish(self, job_id: str, mapping: dict) -> bool:
        """Active -> finished, once: a deleted job stays deleted and the first outcome stays."""
        if not self._set_when(job_id, ACTIVE, {**mapping, "finished_at": _now()}):
            return False
        pipe = self.redis.pipeline()
        for part in PARTS:
            pipe.expire(self.key(job_id, part), self.ttl_s)
        pipe.execute()
        return True

    def mark_succeeded(self, job_id: str) -> bool:
        return self._finish(job_id, {"status": JobStatus.succeeded.value})

    def mark_failed(self, job_id: str, code: str, message: str) -> bool:
        return self._finish(
            job_id, {"status": JobStatus.failed.value, "error_code": code, "error_message": message}
        )

    def delete(self, job_id: str) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(*(self.key(job_id, part) for part in PARTS))
        pipe.zrem(JOB_INDEX_KEY, job_id)
        pipe.publish(self.changes_channel(job_id), "")
        pipe.execute()

    # --- owners: who created a job; kept apart from the state changes above ---------------------------------

    def create_for(self, owner: str, job_id: str, filename: str, video: dict, **fields) -> Job:
        """`create`, then the owner, extra plain fields (e.g. callback_url) and the owner's job index.

        Between the two round trips the record has no owner; nobody knows a new job's id yet."""
        self.create(job_id, filename, video)
        pipe = self.redis.pipeline()
        extra = {k: v for k, v in fields.items() if v is not None}
        pipe.hset(self.key(job_id), mapping={"owner": owner, **extra})
        pipe.zadd(OWNER_INDEX_PREFIX + owner, {job_id: time.time()})
        # The index outlives its newest job by a day, then goes (an anonymous owner never comes back).
        pipe.expire(OWNER_INDEX_PREFIX + owner, self.ttl_s + 24 * 3600)
        pipe.execute()
        return self.get(job_id)

    def owner_of(self, job_id: str) -> str | None:
        """The job's owner; None when there is no such job; LEGACY_OWNER for a record made before owners."""
        pipe = self.redis.pipeline()
        pipe.exists(self.key(job_id))
        pipe.hget(self.key(job_id), "owner")
        exists, owner = pipe.execute()
        if not exists:
            return None
        return owner or LEGACY_OWNER

    def list_ids_for(self, owner: str, limit: int = 50) -> list[str]:
        """The owner's jobs, newest first; entries of long-expired records are dropped on the way."""
        pipe = self.redis.pipeline()
        pipe.zremrangebyscore(OWNER_INDEX_PREFIX + owner, "-inf", time.time() - self.ttl_s - 24 * 3600)
        pipe.zrevrange(OWNER_INDEX_PREFIX + owner, 0, limit - 1)
        return list(pipe.execute()[1])

    def forget_owned(self, owner: str, job_id: str) -> None:
        """Drop a deleted job from its owner's index (`delete` drops the record and the global index)."""
        self.redis.zrem(OWNER_INDEX_PREFIX + owner, job_id)


class JobChanges:
    """Notices of one job's changes (`JobStore.changes_channel`), for an asyncio progress stream:
    `await changes.wait(timeout)` returns when the job changed or the timeout passed. Its own connection,
    as a subscribed Redis connection can do nothing else; drained notices are merged into one wake-up."""

    def __init__(self, redis_url: str, channel: str) -> None:
        import redis.asyncio

        self.client = redis.asyncio.Redis.from_url(redis_url)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.channel = channel

    async def __aenter__(self) -> JobChanges:
        try:
            await self.pubsub.subscribe(self.channel)
        except redis.RedisError:
            logger.warning("no change notices from %s; the stream reads the job on its timer", self.channel)
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            await self.pubsub.aclose()
            await self.client.aclose()
        except redis.RedisError:
            pass

    async def wait(self, timeout_s: float) -> None:
        """Until a notice arrives or `timeout_s` passes; then the notices that came meanwhile are dropped."""
        import asyncio

        if not self.pubsub.subscribed:
            await asyncio.sleep(timeout_s)
            return
        try:
            if await self.pubsub.get_message(timeout=timeout_s) is not None:
                while await self.pubsub.get_message(timeout=0) is not None:
                    pass
        except redis.RedisError:
            await asyncio.sleep(timeout_s)
