"""The Celery app as both sides see it: the gateway only sends tasks by name, the worker registers them.

Reliability settings live here so the sender and the worker cannot disagree: a task is acknowledged only
after it ran (acks_late), a task whose worker process died goes back to the queue (reject_on_worker_lost),
a worker takes one task at a time (prefetch 1), and Redis hands an unacknowledged task to another worker
after the visibility timeout. Every task has a soft and a hard time limit below that timeout, so a task is
never still running when Redis hands it to a second worker.
"""

from __future__ import annotations

import json
import re

import redis
from celery import Celery

from common.settings import CommonSettings

VIDEO_QUEUE = "video"
# Webcam frames go to their own queue and worker so a long video never delays them.
LIVE_QUEUE = "live"
# Webhook deliveries (light, network-bound): their own queue, consumed by the video workers.
WEBHOOK_QUEUE = "webhooks"

TASK_START_JOB = "worker.start_job"
# A photo: one task does it all (check, analyse, draw, timeline); see worker/photo.py.
TASK_PHOTO_JOB = "worker.photo_job"
TASK_LIVE_FRAME = "worker.live_frame"
TASK_DELIVER_WEBHOOK = "worker.deliver_webhook"


def first_task(media: dict | None) -> str:
    """The task that starts a job (from the gateway, or again from the reconciler): the photo task for a
    photo (`media`, the job's `video` record, has kind "image"), else the video chain's first step."""
    return TASK_PHOTO_JOB if (media or {}).get("kind") == "image" else TASK_START_JOB


def make_celery(settings: CommonSettings | None = None) -> Celery:
    settings = settings or CommonSettings()
    app = Celery("emoji", broker=settings.redis_url, backend=settings.redis_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=VIDEO_QUEUE,
        task_routes={TASK_LIVE_FRAME: {"queue": LIVE_QUEUE}, TASK_DELIVER_WEBHOOK: {"queue": WEBHOOK_QUEUE}},
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_expires=3600,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # Look for tasks of dead workers often (kombu's default is every ~100 s), so they come back
            # about one visibility timeout after the death, not minutes later.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
        },
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_time_limit_s,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


JOB_ID = re.compile(r"\b[0-9a-f]{32}\b")


def pending_job_ids(client: redis.Redis, queues: tuple[str, ...] = (VIDEO_QUEUE,)) -> set[str]:
    """Job ids named by a task that is waiting in a queue or delivered and not yet acknowledged (running, or
    held for a retry's countdown): the jobs that still have a task somewhere.

    Reads kombu's Redis layout: one list per queue and priority ("video", "video\x06\x163", ...) and the
    "unacked" hash of delivered messages; each message's headers carry the task's arguments.
    """
    messages: list[str] = []
    for queue in queues:
        for key in client.scan_iter(match=f"{queue}*", count=1000):
            if client.type(key) in ("list", b"list"):
                messages += client.lrange(key, 0, -1)
    messages += [v for v in client.hvals("unacked")]
    ids: set[str] = set()
    for raw in messages:
        try:
            message = json.loads(raw)
            if isinstance(message, list):  # unacked entries are [message, exchange, routing key]
                message = message[0]
            args = message.get("headers", {}).get("argsrepr") or ""
        except (ValueError, AttributeError, IndexError, TypeError):
            continue
        # argsrepr is "('<job id>', ...)" or "['<job id>']"; a job id is 32 hex digits.
        ids.update(JOB_ID.findall(args))
    return ids
