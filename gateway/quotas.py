"""Per-owner quotas, counted in Redis so that every gateway process sees the same numbers.

- uploads per minute: a moving window of the `limits` library (its Redis storage, atomic Lua);
- jobs queued or running at once, bytes stored, live viewers: one small Lua script each, which drops what no
  longer counts (finished or expired jobs, viewers whose gateway died) and then checks and adds in one
  atomic step, so two gateways cannot both take the last slot.
- new anonymous sessions (each a new owner), per client address and in all: moving windows again.
Every check raises QuotaExceeded (429, Retry-After) naming the limit. A limit of 0 is no limit. Every
per-owner record expires when untouched for `record_ttl_s`, so owners that never come back (anonymous
browsers) leave nothing behind.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis
from limits import RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from common.jobs import KEY_PREFIX as JOB_KEY_PREFIX
from gateway.auth import Owner
from gateway.errors import QuotaExceeded
from gateway.uploads import human_bytes

PREFIX = "emoji:quota:"

# KEYS[1]: the owner's active jobs (zset job id -> reserved at). ARGV: limit, job id, now, grace s, prefix,
# record ttl s.
# A job counts until its record says succeeded or failed; a reservation without a record (its upload is
# still streaming) counts for `grace` seconds, after which the upload must have died with its gateway.
RESERVE_ACTIVE = """
local ids = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local now, grace = tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 1, #ids, 2 do
  local status = redis.call('HGET', ARGV[5] .. ids[i], 'status')
  if status == 'succeeded' or status == 'failed' or (not status and tonumber(ids[i + 1]) < now - grace) then
    redis.call('ZREM', KEYS[1], ids[i])
  end
end
local count = redis.call('ZCARD', KEYS[1])
if tonumber(ARGV[1]) > 0 and count >= tonumber(ARGV[1]) then return -count end
if ARGV[2] ~= '' then
  redis.call('ZADD', KEYS[1], now, ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
end
return count + 1
"""

# KEYS[1]: the owner's stored bytes (hash job id -> bytes), KEYS[2]: the active zset above.
# ARGV: limit, job id ('' to only count), bytes, job key prefix, record ttl s. Jobs whose record is gone
# (deleted, expired) and that are not being uploaded no longer count.
ADD_STORED = """
local entries = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #entries, 2 do
  local id = entries[i]
  if redis.call('EXISTS', ARGV[4] .. id) == 0 and not redis.call('ZSCORE', KEYS[2], id) then
    redis.call('HDEL', KEYS[1], id)
  else
    total = total + tonumber(entries[i + 1])
  end
end
local size = tonumber(ARGV[3])
if ARGV[2] == '' then return total end
if tonumber(ARGV[1]) > 0 and total + size > tonumber(ARGV[1]) then return -1 - total end
redis.call('HSET', KEYS[1], ARGV[2], size)
redis.call('EXPIRE', KEYS[1], ARGV[5])
return total + size
"""

# KEYS[1]: the owner's live viewers (zset client id -> expires at). ARGV: limit, client id, now, ttl.
JOIN_LIVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local count = redis.call('ZCARD', KEYS[1])
if tonumber(ARGV[1]) > 0 and count >= tonumber(ARGV[1]) then return -count end
redis.call('ZADD', KEYS[1], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[4]) * 2))
return count + 1
"""

# A live viewer's entry lives this long unless refreshed; the socket refreshes it every third of that.
LIVE_TTL_S = 60.0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _key(kind: str, owner: Owner | str) -> str:
    return f"{PREFIX}{kind}:{owner.id if isinstance(owner, Owner) else owner}"


@dataclass(frozen=True)
class AnonSessionLimits:
    """New anonymous sessions allowed per client address and in all, per window of `window_s`; 0: any."""

    per_address: int = 0
    total: int = 0
    window_s: int = 3600


class Quotas:
    def __init__(
        self, client: redis.Redis, redis_url: str, window_s: int, upload_grace_s: float,
        record_ttl_s: int = 14 * 24 * 3600, anon_sessions: AnonSessionLimits = AnonSessionLimits(),
    ) -> None:
        self.redis = client
        self.window_s = window_s
        self.upload_grace_s = upload_grace_s
        self.record_ttl_s = record_ttl_s
        self.anon_sessions = anon_sessions
        self.limiter = MovingWindowRateLimiter(RedisStorage(redis_url, key_prefix="emoji:quota:uploads"))
        self._reserve_active = client.register_script(RESERVE_ACTIVE)
        self._add_stored = client.register_script(ADD_STORED)
        self._join_live = client.register_script(JOIN_LIVE)

    # --- uploads per minute ---

    def hit_upload(self, owner: Owner) -> None:
        per_window = owner.limits.uploads_per_minute
        if not per_window:
            return
        item = RateLimitItemPerSecond(per_window, self.window_s)
        if self.limiter.hit(item, owner.id):
            return
        reset = self.limiter.get_window_stats(item, owner.id).reset_time
        raise QuotaExceeded(
            "too_many_uploads",
            f"you have sent {per_window} uploads in the last {self.window_s} s, your limit; "
            f"try again in {math.ceil(max(reset - time.time(), 1))} s",
            reset - time.time(),
        )

    # --- new anonymous owners ---

    def hit_anon_session(self, address: str) -> None:
        """Count one new anonymous session from `address`; QuotaExceeded when it or everyone made too many."""
        limits = self.anon_sessions
        for who, limit in ((f"address:{address}", limits.per_address), ("all", limits.total)):
            if not limit:
                continue
            item = RateLimitItemPerSecond(limit, limits.window_s)
            if self.limiter.hit(item, "anon-sessions", who):
                continue
            reset = self.limiter.get_window_stats(item, "anon-sessions", who).reset_time
            wait = math.ceil(max(reset - time.time(), 1))
            whose = "this address" if who != "all" else "all visitors together"
            raise QuotaExceeded(
                "too_many_sessions",
                f"{whose} started {limit} new browser sessions in the last {limits.window_s} s, the limit; "
                f"try again in {wait} s, keep this browser's cookies, or sign in with an API key",
                wait,
            )

    # --- jobs queued or running ---

    def reserve_active(self, owner: Owner, job_id: str) -> None:
        limit = owner.limits.max_active_jobs
        if not limit:
            return
        count = int(self._reserve_active(
            keys=[_key("active", owner)],
            args=[limit, job_id, time.time(), self.upload_grace_s, JOB_KEY_PREFIX, self.record_ttl_s],
        ))
        if count < 0:
            raise QuotaExceeded(
                "too_many_active_jobs",
                f"you have {_count(-count, 'job')} queued or running, your limit is {limit}; wait until "
                "one has finished, or delete one, and upload again",
                30,
            )

    def active_count(self, owner: Owner) -> int:
        count = int(self._reserve_active(
            keys=[_key("active", owner)],
            args=[0, "", time.time(), self.upload_grace_s, JOB_KEY_PREFIX, self.record_ttl_s],
        ))
        return count - 1

    # --- bytes stored ---

    def stored_bytes(self, owner: Owner) -> int:
        return int(self._add_stored(
            keys=[_key("stored", owner), _key("active", owner)],
            args=[0, "", 0, JOB_KEY_PREFIX, self.record_ttl_s],
        ))

    def _storage_full(self, used: int, limit: int, incoming: int) -> QuotaExceeded:
        return QuotaExceeded(
            "storage_quota_exceeded",
            f"your jobs keep {human_bytes(used)} of your {human_bytes(limit)} storage and this upload "
            f"({human_bytes(incoming)}) does not fit; delete finished jobs you no longer need, "
            "then upload again",
            3600,
        )

    def storage_full(self, owner: Owner, incoming: int) -> QuotaExceeded:
        """The error for an upload that did not fit in what was left of the owner's storage."""
        return self._storage_full(self.stored_bytes(owner), owner.limits.max_stored_bytes, incoming)

    def room_for(self, owner: Owner, declared_bytes: int) -> int | None:
        """Bytes the owner may still store (None: no limit); refuses now when the declared size cannot fit."""
        limit = owner.limits.max_stored_bytes
        if not limit:
            return None
        used = self.stored_bytes(owner)
        if used + declared_bytes > limit:
            raise self._storage_full(used, limit, declared_bytes)
        return limit - used

    def add_stored(self, owner: Owner, job_id: str, size: int) -> None:
        """Count an upload as stored, atomically refusing it if it no longer fits."""
        result = int(self._add_stored(
            keys=[_key("stored", owner), _key("active", owner)],
            args=[owner.limits.max_stored_bytes, job_id, size, JOB_KEY_PREFIX, self.record_ttl_s],
        ))
        if result < 0:
            raise self._storage_full(-1 - result, owner.limits.max_stored_bytes, size)

    def release(self, owner: Owner | str, job_id: str) -> None:
        """A job deleted (or refused): it no longer counts anywhere."""
        pipe = self.redis.pipeline()
        pipe.zrem(_key("active", owner), job_id)
        pipe.hdel(_key("stored", owner), job_id)
        pipe.execute()

    # --- live viewers ---

    def join_live(self, owner: Owner, client_id: str) -> None:
        limit = owner.limits.max_live_viewers
        if not limit:
            return  # nothing to count: the live page keeps working while Redis is down
        count = int(
            self._join_live(keys=[_key("live", owner)], args=[limit, client_id, time.time(), LIVE_TTL_S])
        )
        if count < 0:
            raise QuotaExceeded(
                "too_many_live_viewers",
                f"you already have {_count(-count, 'live page')} open, your limit is {limit}; close one "
                "and start again",
                30,
            )

    def refresh_live(self, owner: Owner, client_id: str) -> None:
        if owner.limits.max_live_viewers:
            self.redis.zadd(_key("live", owner), {client_id: time.time() + LIVE_TTL_S}, xx=True)

    def leave_live(self, owner: Owner, client_id: str) -> None:
        if owner.limits.max_live_viewers:
            self.redis.zrem(_key("live", owner), client_id)
