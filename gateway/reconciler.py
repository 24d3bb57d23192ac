"""Finding jobs whose tasks are gone: the record says queued or running, but no task names the job.

It happens when Redis restarts without its data on disk (or from an older snapshot), or when someone
flushes the queue: the records come back, the tasks do not, and the jobs would wait forever. Such a job
is re-queued from its first step (its finished batches forgotten; every step may run twice), at most
`reconcile_max_requeues` times, then it fails with `tasks_lost`.

It runs in the gateway, not in a Celery beat: the gateway is always up when anyone can look at a job, the
stack has no beat process to add, and with several gateways a short Redis lock lets one of them do each
round.
"""

from __future__ import annotations

import asyncio
import logging

from celery import Celery

from common.errors import JobNotFound
from common.jobs import JobStore
from common.queue import TASK_DELIVER_WEBHOOK, VIDEO_QUEUE, WEBHOOK_QUEUE, first_task, pending_job_ids
from common.webhooks import queue_delivery

log = logging.getLogger(__name__)

LOCK_KEY = "emoji:reconciler"
TASKS_LOST = "tasks_lost"


def reconcile(store: JobStore, celery: Celery, grace_s: float, max_requeues: int) -> dict[str, list[str]]:
    """One round: {"requeued": [...], "failed": [...]} for the jobs found without tasks."""
    found: dict[str, list[str]] = {"requeued": [], "failed": []}
    stale = [job_id for job_id, _, idle_s in store.active_jobs() if idle_s > grace_s]
    if not stale:
        return found
    pending = pending_job_ids(store.redis)
    for job_id in stale:
        if job_id in pending:
            continue  # waiting in a long queue, or held for a retry: not lost
        requeues = store.redis.hincrby(store.key(job_id), "requeues", 1)
        if requeues > max_requeues:
            message = (
                f"the job's tasks were lost {requeues} times (the queue restarted without them); "
                "upload the video again"
            )
            if store.mark_failed(job_id, TASKS_LOST, message):
                found["failed"].append(job_id)
                _queue_webhook(store, celery, job_id)
            continue
        try:
            first = first_task(store.get(job_id).video)
        except JobNotFound:
            continue  # deleted meanwhile
        store.reset_batches(job_id)
        store.update(job_id)  # a new sign of life, so the next round waits out the grace again
        celery.send_task(first, args=[job_id], queue=VIDEO_QUEUE, ignore_result=True)
        found["requeued"].append(job_id)
    if found["requeued"] or found["failed"]:
        log.warning("jobs without tasks: re-queued %s, failed %s", found["requeued"], found["failed"])
    return found


def _queue_webhook(store: JobStore, celery: Celery, job_id: str) -> None:
    """A job failed here has no worker step left to send its webhook: send it from here (once)."""

    def send(ended_at: float) -> None:
        celery.send_task(
            TASK_DELIVER_WEBHOOK, args=[job_id, ended_at], queue=WEBHOOK_QUEUE, ignore_result=True
        )

    try:
        queue_delivery(store.redis, store.key(job_id), send, store.ttl_s)
    except Exception:
        log.warning("job %s: could not queue its webhook", job_id, exc_info=True)


async def reconcile_forever(
    store: JobStore, celery: Celery, interval_s: float, grace_s: float, max_requeues: int
) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            # One gateway per round: the lock expires before the next round starts.
            if await asyncio.to_thread(store.redis.set, LOCK_KEY, "1", nx=True, px=int(interval_s * 900)):
                await asyncio.to_thread(reconcile, store, celery, grace_s, max_requeues)
        except Exception:  # Redis down: try again next round, the gateway carries on
            log.warning("reconciling jobs failed; next try in %.0f s", interval_s, exc_info=True)
