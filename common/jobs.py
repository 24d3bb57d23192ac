"""Job records in Redis: what the gateway shows and what the worker's tasks update.

A job's progress is counted per stage ("analyze": faces found and classified, "render": emoji drawn and
encoded) as frames of finished batches. Batches record themselves in a hash keyed by batch index, so a
batch that runs twice (a worker died, the task came back) counts once.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from enum import StrEnum

import redis
from pydantic import BaseModel

from common.errors import JobNotFound

STAGES: tuple[str, ...] = ("analyze", "render")
# Share of the progress bar each stage fills; the last 5% is joining the pieces and muxing audio.
STAGE_WEIGHTS: dict[str, float] = {"analyze": 0.55, "render": 0.40}
KEY_PREFIX = "emoji:job:"
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


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class JobStore:
    """The Redis side of jobs; every method is one or two round trips and safe to repeat."""

    def __init__(self, client: redis.Redis, ttl_s: int = 7 * 24 * 3600) -> None:
        self.redis = client
        self.ttl_s = ttl_s

    @classmethod
    def from_url(cls, url: str, ttl_s: int = 7 * 24 * 3600) -> JobStore:
        return cls(redis.Redis.from_url(url, decode_responses=True), ttl_s)

    @staticmethod
    def key(job_id: str, part: str = "") -> str:
        return f"{KEY_PREFIX}{job_id}" + (f":{part}" if part else "")

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
        for stage in STAGES:
            pipe.hvals(self.key(job_id, stage))
        raw, *stage_values = pipe.execute()
        if not raw:
            raise JobNotFound(f"no job with id {job_id}")
        total = int(raw.get("frames_total", 0))
        counts = zip(STAGES, stage_values, strict=True)
        done = {stage: sum(int(v) for v in values) for stage, values in counts}
        status = JobStatus(raw["status"])
        if status is JobStatus.succeeded:
            progress = 1.0
        elif total:
            progress = sum(STAGE_WEIGHTS[s] * min(done[s], total) / total for s in STAGES)
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
            frames_done=total if status is JobStatus.succeeded else min(done[STAGES[-1]], total),
            frames_total=total,
            created_at=_time(raw["created_at"]),
            started_at=_time(raw.get("started_at")),
            finished_at=_time(raw.get("finished_at")),
            error=error,
            video=json.loads(raw["video"]) if raw.get("video") else None,
            batches_total=int(raw.get("batches_total", 0)),
        )

    def list_ids(self, limit: int = 50) -> list[str]:
        """Newest first; index entries of records Redis has already expired are dropped on the way."""
        # A record expires ttl_s after its job finished; a day's slack covers the job's own run time.
        pipe = self.redis.pipeline()
        pipe.zremrangebyscore(JOB_INDEX_KEY, "-inf", time.time() - self.ttl_s - 24 * 3600)
        pipe.zrevrange(JOB_INDEX_KEY, 0, limit - 1)
        return list(pipe.execute()[1])

    def update(self, job_id: str, **fields) -> None:
        """Set plain fields (e.g. frames_total, batches_total) on an existing job."""
        if fields:
            self.redis.hset(self.key(job_id), mapping={k: v for k, v in fields.items() if v is not None})

    def mark_running(self, job_id: str) -> None:
        pipe = self.redis.pipeline()
        pipe.hsetnx(self.key(job_id), "started_at", _now())
        pipe.hset(self.key(job_id), "status", JobStatus.running.value)
        pipe.execute()

    def mark_batch_done(self, job_id: str, stage: str, batch_index: int, frames: int) -> int:
        """Record a finished batch; returns how many batches of that stage are done."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        pipe = self.redis.pipeline()
        pipe.hset(self.key(job_id, stage), str(batch_index), frames)
        pipe.hlen(self.key(job_id, stage))
        return int(pipe.execute()[1])

    def reset_stage(self, job_id: str, stage: str) -> None:
        self.redis.delete(self.key(job_id, stage))

    def _finish(self, job_id: str, mapping: dict) -> None:
        pipe = self.redis.pipeline()
        pipe.hset(self.key(job_id), mapping={**mapping, "finished_at": _now()})
        for part in ("", *STAGES):
            pipe.expire(self.key(job_id, part), self.ttl_s)
        pipe.execute()

    def mark_succeeded(self, job_id: str) -> None:
        self._finish(job_id, {"status": JobStatus.succeeded.value})

    def mark_failed(self, job_id: str, code: str, message: str) -> None:
        self._finish(job_id, {"status": JobStatus.failed.value, "error_code": code, "error_message": message})

    def delete(self, job_id: str) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(*(self.key(job_id, part) for part in ("", *STAGES)))
        pipe.zrem(JOB_INDEX_KEY, job_id)
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
