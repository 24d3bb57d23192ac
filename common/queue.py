"""The Celery app as both sides see it: the gateway only sends tasks by name, the worker registers them.

Reliability settings live here so the sender and the worker cannot disagree: a task is acknowledged only
after it ran (acks_late), a task whose worker process died goes back to the queue (reject_on_worker_lost),
a worker takes one task at a time (prefetch 1), and Redis hands an unacknowledged task to another worker
after the visibility timeout (keep it above the longest task).
"""

from __future__ import annotations

from celery import Celery

from common.settings import CommonSettings

VIDEO_QUEUE = "video"
# Webcam frames go to their own queue and worker so a long video never delays them.
LIVE_QUEUE = "live"
# Webhook deliveries (light, network-bound): their own queue, consumed by the video workers.
WEBHOOK_QUEUE = "webhooks"

TASK_START_JOB = "worker.start_job"
TASK_LIVE_FRAME = "worker.live_frame"
TASK_DELIVER_WEBHOOK = "worker.deliver_webhook"


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
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app
