"""Celery tasks: thin wrappers (job id and frame range in, retries and acks) around worker.pipeline.

Chain: start_job -> analyze_batch xN -> build_timeline -> render_batch xN -> finish_job. The last batch of a
stage to finish (counted per batch index in Redis) enqueues the next step; a step that runs twice only
overwrites its own files, so duplicates are harmless. A job deleted or failed meanwhile stops quietly.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from functools import lru_cache

from celery import Task

from common.errors import EmojiServiceError, ModelServerError, ModelServerUnavailable, VideoError
from common.jobs import JobStatus, JobStore
from common.queue import TASK_LIVE_FRAME, TASK_START_JOB, VIDEO_QUEUE
from common.storage import LocalStorage
from worker import pipeline
from worker.app import app

# Imported before Celery forks its pool: the client's protos import TensorFlow (seconds, ~600 MB), paid once
# and shared by the pool's processes; each process opens its own gRPC channel on first use.
from worker.model_client import EmotionClient
from worker.settings import WorkerSettings
from worker.webhooks import notify_finished

logger = logging.getLogger(__name__)

TASK_ANALYZE_BATCH = "worker.analyze_batch"
TASK_BUILD_TIMELINE = "worker.build_timeline"
TASK_RENDER_BATCH = "worker.render_batch"
TASK_FINISH_JOB = "worker.finish_job"


class JobGone(Exception):
    """The job was deleted, has failed, or is already done: nothing more to do for it."""


# Per process, created on first use, i.e. after Celery forked its pool (a gRPC channel must not cross a fork).
@lru_cache(maxsize=1)
def settings() -> WorkerSettings:
    return WorkerSettings()


@lru_cache(maxsize=1)
def storage() -> LocalStorage:
    return LocalStorage(settings().storage_dir)


@lru_cache(maxsize=1)
def store() -> JobStore:
    return JobStore.from_url(settings().redis_url, settings().job_ttl_s)


@lru_cache(maxsize=1)
def detector():
    import cv2

    from worker.detection import HaarFaceDetector

    cv2.setNumThreads(settings().opencv_threads)
    return HaarFaceDetector.from_settings(settings())


@lru_cache(maxsize=1)
def classifier():
    return EmotionClient.from_settings(settings())


@lru_cache(maxsize=1)
def overlay():
    from worker.overlay import EmojiOverlay

    s = settings()
    return EmojiOverlay(s.overlay_mode, s.overlay_scale, s.emoji_dir)


def ensure_active(job_id: str) -> None:
    """Raise JobGone unless the job exists and is still queued or running."""
    try:
        status = store().get(job_id).status
    except EmojiServiceError as exc:
        raise JobGone(f"job {job_id} no longer exists") from exc
    if status not in (JobStatus.queued, JobStatus.running):
        raise JobGone(f"job {job_id} is {status.value}")


def fail(job_id: str, code: str, message: str) -> None:
    if store().exists(job_id):
        store().mark_failed(job_id, code, message)
        logger.error("job %s failed: %s: %s", job_id, code, message)
        notify_finished(job_id)


@contextmanager
def job_step(task: Task, job_id: str, what: str):
    """Map errors to the job's fate: gone -> stop quietly, model server down -> retry then fail, bad video or
    model error -> fail with the message, anything else -> fail as internal error."""
    try:
        yield
    except JobGone as exc:
        logger.info("job %s: %s skipped: %s", job_id, what, exc)
        notify_finished(job_id)  # a finished job whose webhook a dead worker never queued gets it now
    except ModelServerUnavailable as exc:
        s = settings()
        retries = task.request.retries
        if retries >= s.model_retries:
            fail(
                job_id,
                exc.code,
                f"the emotion model server did not answer after {retries + 1} tries; try again later ({exc})",
            )
            return
        countdown = min(s.model_retry_backoff_s * 2**retries, s.model_retry_backoff_max_s)
        logger.warning(
            "job %s: %s: model server unavailable, retry %d/%d in %.1f s: %s",
            job_id,
            what,
            retries + 1,
            s.model_retries,
            countdown,
            exc,
        )
        raise task.retry(exc=exc, countdown=countdown, max_retries=s.model_retries) from exc
    except (VideoError, ModelServerError) as exc:
        fail(job_id, exc.code, str(exc))
    except Exception as exc:
        if not store().exists(job_id):
            # Deleted while we worked: our writes may have recreated its folder; remove it again.
            storage().delete_job(job_id)
            logger.info("job %s: %s stopped, the job was deleted", job_id, what)
            return
        logger.exception("job %s: %s failed", job_id, what)
        fail(job_id, "internal_error", f"the worker failed while {what}: {type(exc).__name__}: {exc}")
    else:
        if not store().exists(job_id):
            storage().delete_job(job_id)


@app.task(name=TASK_START_JOB, bind=True)
def start_job(self: Task, job_id: str) -> None:
    """Probe the upload, split it into batches, enqueue their analysis."""
    with job_step(self, job_id, "reading the video"):
        ensure_active(job_id)
        store().mark_running(job_id)
        plan = pipeline.plan_job(storage(), job_id, settings())
        store().update(job_id, frames_total=plan.frames, batches_total=len(plan.batches))
        ensure_active(job_id)
        for index, (start, end) in enumerate(plan.batches):
            analyze_batch.apply_async((job_id, index, start, end), queue=VIDEO_QUEUE)


@app.task(name=TASK_ANALYZE_BATCH, bind=True)
def analyze_batch(self: Task, job_id: str, batch_index: int, start: int, end: int) -> None:
    """Find, follow and classify the faces of frames [start, end); the last batch enqueues the timeline."""
    with job_step(self, job_id, f"analysing frames {start}-{end - 1}"):
        ensure_active(job_id)
        plan = pipeline.load_plan(storage(), job_id)
        if tuple(plan.batches[batch_index]) != (start, end):
            raise JobGone(f"batch {batch_index} ({start}-{end}) is not in the job's plan")
        frames = pipeline.analyze_batch(
            storage(), job_id, batch_index, plan, detector(), classifier(), settings()
        )
        done = store().mark_batch_done(job_id, "analyze", batch_index, frames)
        if done >= len(plan.batches):
            ensure_active(job_id)
            build_timeline.apply_async((job_id,), queue=VIDEO_QUEUE)


@app.task(name=TASK_BUILD_TIMELINE, bind=True)
def build_timeline(self: Task, job_id: str) -> None:
    """Track people over the whole video, smooth, write the timeline; enqueue the render batches."""
    with job_step(self, job_id, "building the timeline"):
        ensure_active(job_id)
        plan = pipeline.load_plan(storage(), job_id)
        model = {"name": settings().model_name, "version": pipeline.model_version_of(storage(), job_id, plan)}
        pipeline.make_timeline(storage(), job_id, plan, settings(), model)
        ensure_active(job_id)
        for index, (start, end) in enumerate(plan.batches):
            render_batch.apply_async((job_id, index, start, end), queue=VIDEO_QUEUE)


@app.task(name=TASK_RENDER_BATCH, bind=True)
def render_batch(self: Task, job_id: str, batch_index: int, start: int, end: int) -> None:
    """Draw the emoji on frames [start, end) and encode the piece; the last batch enqueues the join."""
    with job_step(self, job_id, f"drawing frames {start}-{end - 1}"):
        ensure_active(job_id)
        plan = pipeline.load_plan(storage(), job_id)
        if tuple(plan.batches[batch_index]) != (start, end):
            raise JobGone(f"batch {batch_index} ({start}-{end}) is not in the job's plan")
        frames = pipeline.render_batch(storage(), job_id, batch_index, plan, overlay(), settings())
        done = store().mark_batch_done(job_id, "render", batch_index, frames)
        if done >= len(plan.batches):
            ensure_active(job_id)
            finish_job.apply_async((job_id,), queue=VIDEO_QUEUE)


@app.task(name=TASK_FINISH_JOB, bind=True)
def finish_job(self: Task, job_id: str) -> None:
    """Join the pieces with the original audio into result.mp4 and mark the job succeeded."""
    with job_step(self, job_id, "joining the video"):
        ensure_active(job_id)
        plan = pipeline.load_plan(storage(), job_id)
        pipeline.finish_job(storage(), job_id, plan, settings())
        ensure_active(job_id)
        store().mark_succeeded(job_id)
        logger.info("job %s succeeded", job_id)
        notify_finished(job_id)


@app.task(name=TASK_LIVE_FRAME)
def live_frame(client_id: str, jpeg_b64: str) -> dict:
    """One webcam frame: faces with person ids and the emotion to show (see worker.live)."""
    from worker.live import process_frame

    return process_frame(client_id, jpeg_b64, store().redis, detector(), classifier(), settings())
