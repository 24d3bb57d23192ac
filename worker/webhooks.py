"""Webhook delivery: when a job with a callback_url succeeds or fails, POST the job (JSON) to the URL,
signed with the owner's secret, and retry with exponential backoff until `webhook_retry_window_s` after the
job ended. Every attempt is recorded on the job. Light on purpose: httpx, no TensorFlow, no OpenCV; the
task is a shared task, registered on whichever Celery app imports this module (worker.app does), so this
module never imports the worker's app and its TensorFlow.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import UTC, datetime
from functools import lru_cache

import httpx
from celery import Task, shared_task
from celery.utils.time import get_exponential_backoff_interval

from common.jobs import LEGACY_OWNER, JobStatus, JobStore
from common.queue import TASK_DELIVER_WEBHOOK, WEBHOOK_QUEUE
from common.settings import CommonSettings
from common.url_guard import pinned_request
from common.webhooks import (
    SIGNATURE_HEADER,
    STATE_FIELD,
    CallbackRefused,
    attempts_key,
    check_callback_url,
    owner_secret,
    queue_delivery,
    sign,
)

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def settings() -> CommonSettings:
    return CommonSettings()


@lru_cache(maxsize=1)
def store() -> JobStore:
    return JobStore.from_url(settings().redis_url, settings().job_ttl_s)


def notify_finished(job_id: str) -> None:
    """Queue the webhook of a finished job, once: a finishing step that runs twice must not call the
    receiver twice, and one that died before calling this is covered by the next task that finds the job
    finished. Never raises; a webhook problem must not change the job's fate."""
    try:
        queue_delivery(
            store().redis,
            store().key(job_id),
            lambda ended_at: deliver_webhook.apply_async((job_id, ended_at), queue=WEBHOOK_QUEUE),
            settings().job_ttl_s,
        )
    except Exception:
        logger.exception("job %s: could not queue its webhook", job_id)


def retry_delay_s(attempt: int, s: CommonSettings) -> float:
    """Seconds before attempt `attempt + 1`: base * 2^(attempt-1), capped; kept under the visibility timeout
    because Redis hands a task that waits longer than that to another worker (a second call)."""
    cap = min(s.webhook_retry_max_delay_s, 0.8 * s.visibility_timeout_s)
    return get_exponential_backoff_interval(s.webhook_retry_base_s, attempt - 1, cap)


def _record(job_id: str, attempt: int, started: float, status_code: int | None, error: str | None) -> None:
    entry = {
        "attempt": attempt,
        "at": datetime.now(UTC).isoformat(),
        "status_code": status_code,
        "error": error,
        "duration_ms": round((time.perf_counter() - started) * 1000.0, 1),
    }
    pipe = store().redis.pipeline()
    pipe.rpush(attempts_key(job_id), json.dumps(entry))
    pipe.expire(attempts_key(job_id), settings().job_ttl_s)
    pipe.execute()


def payload(job_id: str) -> tuple[str, bytes]:
    """The event name and the body: the job record as JSON."""
    job = store().get(job_id)
    event = "job.succeeded" if job.status is JobStatus.succeeded else "job.failed"
    body = {"type": event, "job": job.model_dump(mode="json", exclude={"batches_total"})}
    return event, json.dumps(body, separators=(",", ":")).encode()


@shared_task(name=TASK_DELIVER_WEBHOOK, bind=True, ignore_result=True)
def deliver_webhook(self: Task, job_id: str, ended_at: float) -> None:
    """One delivery attempt; on failure the task retries itself later with the same arguments."""
    s = settings()
    redis = store().redis
    attempt = self.request.retries + 1
    # The same attempt arriving twice (Redis re-delivered its message) calls once.
    lock = f"{store().key(job_id)}:webhook-attempt:{attempt}"
    if not redis.set(lock, "1", nx=True, ex=int(2 * s.webhook_timeout_s) + 60):
        logger.info("job %s: webhook attempt %d already made", job_id, attempt)
        return
    raw = redis.hgetall(store().key(job_id))
    if not raw or not raw.get("callback_url") or raw.get(STATE_FIELD) in ("delivered", "failed"):
        return  # deleted meanwhile, or done
    url = raw["callback_url"]
    started = time.perf_counter()
    status_code = error = None
    try:
        addresses = check_callback_url(url, s.webhook_allowed_networks)
        target, host, extensions = pinned_request(url, addresses[0])
        event, body = payload(job_id)
        headers = {
            **host,
            "Content-Type": "application/json",
            "User-Agent": "emoji-video-webhooks/1.0",
            "Emoji-Event": event,
            "Emoji-Delivery": uuid.uuid4().hex,
            "Emoji-Attempt": str(attempt),
            SIGNATURE_HEADER: sign(owner_secret(redis, raw.get("owner") or LEGACY_OWNER), body),
        }
        # No redirects: a public URL answering 307 to an internal address would walk around the check above.
        with httpx.Client(timeout=s.webhook_timeout_s, follow_redirects=False) as client:
            response = client.post(target, content=body, headers=headers, extensions=extensions)
        status_code = response.status_code
        if not 200 <= status_code < 300:
            error = f"the receiver answered {status_code}" + (
                " (redirects are not followed)" if 300 <= status_code < 400 else ""
            )
    except CallbackRefused as exc:
        error = str(exc)
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
    _record(job_id, attempt, started, status_code, error)
    if error is None:
        redis.hset(store().key(job_id), STATE_FIELD, "delivered")
        logger.info("job %s: webhook delivered to %s (attempt %d)", job_id, url, attempt)
        return
    delay = retry_delay_s(attempt, s)
    if time.time() + delay > ended_at + s.webhook_retry_window_s:
        redis.hset(store().key(job_id), STATE_FIELD, "failed")
        logger.warning("job %s: webhook to %s given up after %d attempts: %s", job_id, url, attempt, error)
        return
    redis.hset(store().key(job_id), STATE_FIELD, "retrying")
    logger.info("job %s: webhook attempt %d failed (%s); next in %.1f s", job_id, attempt, error, delay)
    raise self.retry(countdown=delay, max_retries=None)
