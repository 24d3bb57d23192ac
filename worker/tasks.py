"""Celery tasks: thin wrappers (job id and frame range in, retries and acks) around worker.pipeline.

Chain: start_job -> analyze_batch xN -> build_timeline -> render_batch xN -> finish_job. The last batch of a
stage to finish (counted per batch index in Redis) enqueues the next step; a step that runs twice only
overwrites its own files, so duplicates are harmless. A job deleted or failed meanwhile stops quietly.

With an object store (EMOJI_STORAGE_URL), each task works in a private scratch folder: `job_step` hands the
pipeline a TaskFiles view that fetches the job's files on first use, the task publishes what it wrote
before it records progress, and the folder is removed when the task ends, however it ends.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import contextmanager
from functools import lru_cache

from celery import Task

from common import logs
from common import storage as storages
from common.errors import (
    EmojiServiceError,
    ModelServerError,
    ModelServerUnavailable,
    StorageError,
    StorageUnavailable,
    VideoError,
)
from common.jobs import JobStatus, JobStore
from common.queue import TASK_LIVE_FRAME, TASK_START_JOB, VIDEO_QUEUE
from worker import metrics, pipeline, scratch
from worker.app import app

# Imported before Celery forks its pool: the client's protos import TensorFlow (seconds, ~600 MB), paid once
# and shared by the pool's processes; each process opens its own gRPC channel on first use.
from worker.model_client import EmotionClient
from worker.settings import WorkerSettings

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
def storage() -> storages.LocalStorage | storages.S3Storage:
    return storages.from_settings(settings())


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
        metrics.JOBS.labels("failed").inc()
        logger.error("job %s failed: %s: %s", job_id, code, message)


def _retry_or_fail(task: Task, job_id: str, what: str, exc: EmojiServiceError, retries_max: int,
                   backoff_s: float, who: str) -> None:
    """Retry the task with exponential backoff, or, after `retries_max` retries, fail the job."""
    s = settings()
    retries = task.request.retries
    if retries >= retries_max:
        fail(job_id, exc.code, f"{who} did not answer after {retries + 1} tries; try again later ({exc})")
        return
    countdown = min(backoff_s * 2**retries, s.model_retry_backoff_max_s)
    logger.warning(
        "job %s: %s: %s unavailable, retry %d/%d in %.1f s: %s",
        job_id, what, who, retries + 1, retries_max, countdown, exc,
    )
    raise task.retry(exc=exc, countdown=countdown, max_retries=retries_max) from exc


@contextmanager
def _task_files(job_id: str):
    """The storage the pipeline uses for this task: the shared folder itself, or a private scratch view
    of the object store (removed at the end, also on failure; a killed worker's is swept at restart)."""
    backend = storage()
    if backend.local:
        yield backend
        return
    from worker.task_files import TaskFiles

    folder = scratch.task_dir(settings().scratch_dir)
    try:
        files = TaskFiles(backend, folder)
        yield files
        if files.fetch_seconds:
            metrics.STORAGE_SECONDS.labels("fetch").observe(files.fetch_seconds)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish(files) -> None:
    """Upload what the task wrote (object store only), before progress is recorded or a step enqueued."""
    if not getattr(files, "publish", None):
        return
    started = time.perf_counter()
    files.publish()
    metrics.STORAGE_SECONDS.labels("upload").observe(time.perf_counter() - started)


@contextmanager
def job_step(task: Task, job_id: str, what: str):
    """Run one step of a job in its files (see _task_files) and map errors to the job's fate: gone -> stop
    quietly, model server or object store down -> retry then fail, bad video, model or storage error ->
    fail with the message, anything else -> fail as internal error. Counts and times every run."""
    name = task.name.rsplit(".", 1)[-1]
    token = logs.current_job_id.set(job_id)
    started = time.perf_counter()
    outcome = "failed"
    try:
        with _task_files(job_id) as files:
            yield files
        outcome = "succeeded"
    except JobGone as exc:
        outcome = "skipped"
        logger.info("job %s: %s skipped: %s", job_id, what, exc)
    except ModelServerUnavailable as exc:
        s = settings()
        outcome = "retried"
        _retry_or_fail(task, job_id, what, exc, s.model_retries, s.model_retry_backoff_s,
                       "the emotion model server")
        outcome = "failed"
    except StorageUnavailable as exc:
        s = settings()
        outcome = "retried"
        _retry_or_fail(task, job_id, what, exc, s.storage_retries, s.storage_retry_backoff_s,
                       "the object store")
        outcome = "failed"
    except (VideoError, ModelServerError, StorageError) as exc:
        fail(job_id, exc.code, str(exc))
    except Exception as exc:
        if not store().exists(job_id):
            # Deleted while we worked: our writes may have recreated its files; remove them again.
            storage().delete_job(job_id)
            outcome = "skipped"
            logger.info("job %s: %s stopped, the job was deleted", job_id, what)
            return
        logger.exception("job %s: %s failed", job_id, what)
        fail(job_id, "internal_error", f"the worker failed while {what}: {type(exc).__name__}: {exc}")
    else:
        if not store().exists(job_id):
            storage().delete_job(job_id)
    finally:
        metrics.TASKS.labels(name, outcome).inc()
        metrics.TASK_SECONDS.labels(name).observe(time.perf_counter() - started)
        logs.current_job_id.reset(token)


@app.task(name=TASK_START_JOB, bind=True)
def start_job(self: Task, job_id: str) -> None:
    """Probe the upload, split it into batches, enqueue their analysis."""
    with job_step(self, job_id, "reading the video") as files:
        ensure_active(job_id)
        store().mark_running(job_id)
        plan = pipeline.plan_job(files, job_id, settings())
        publish(files)
        # With an object store the gateway cannot probe the upload (it never has it on disk): this does.
        video = json.dumps(plan.info.to_dict())
        store().update(job_id, frames_total=plan.frames, batches_total=len(plan.batches), video=video)
        ensure_active(job_id)
        for index, (start, end) in enumerate(plan.batches):
            analyze_batch.apply_async((job_id, index, start, end), queue=VIDEO_QUEUE)


@app.task(name=TASK_ANALYZE_BATCH, bind=True)
def analyze_batch(self: Task, job_id: str, batch_index: int, start: int, end: int) -> None:
    """Find, follow and classify the faces of frames [start, end); the last batch enqueues the timeline."""
    with job_step(self, job_id, f"analysing frames {start}-{end - 1}") as files:
        ensure_active(job_id)
        plan = pipeline.load_plan(files, job_id)
        if tuple(plan.batches[batch_index]) != (start, end):
            raise JobGone(f"batch {batch_index} ({start}-{end}) is not in the job's plan")
        frames = pipeline.analyze_batch(
            files, job_id, batch_index, plan, detector(), classifier(), settings()
        )
        publish(files)
        metrics.FRAMES.labels("analyze").inc(frames)
        done = store().mark_batch_done(job_id, "analyze", batch_index, frames)
        if done >= len(plan.batches):
            ensure_active(job_id)
            build_timeline.apply_async((job_id,), queue=VIDEO_QUEUE)


@app.task(name=TASK_BUILD_TIMELINE, bind=True)
def build_timeline(self: Task, job_id: str) -> None:
    """Track people over the whole video, smooth, write the timeline; enqueue the render batches."""
    with job_step(self, job_id, "building the timeline") as files:
        ensure_active(job_id)
        plan = pipeline.load_plan(files, job_id)
        model = {"name": settings().model_name, "version": pipeline.model_version_of(files, job_id, plan)}
        pipeline.make_timeline(files, job_id, plan, settings(), model)
        publish(files)
        ensure_active(job_id)
        for index, (start, end) in enumerate(plan.batches):
            render_batch.apply_async((job_id, index, start, end), queue=VIDEO_QUEUE)


@app.task(name=TASK_RENDER_BATCH, bind=True)
def render_batch(self: Task, job_id: str, batch_index: int, start: int, end: int) -> None:
    """Draw the emoji on frames [start, end) and encode the piece; the last batch enqueues the join."""
    with job_step(self, job_id, f"drawing frames {start}-{end - 1}") as files:
        ensure_active(job_id)
        plan = pipeline.load_plan(files, job_id)
        if tuple(plan.batches[batch_index]) != (start, end):
            raise JobGone(f"batch {batch_index} ({start}-{end}) is not in the job's plan")
        frames = pipeline.render_batch(files, job_id, batch_index, plan, overlay(), settings())
        publish(files)
        metrics.FRAMES.labels("render").inc(frames)
        done = store().mark_batch_done(job_id, "render", batch_index, frames)
        if done >= len(plan.batches):
            ensure_active(job_id)
            finish_job.apply_async((job_id,), queue=VIDEO_QUEUE)


@app.task(name=TASK_FINISH_JOB, bind=True)
def finish_job(self: Task, job_id: str) -> None:
    """Join the pieces with the original audio into result.mp4 and mark the job succeeded."""
    with job_step(self, job_id, "joining the video") as files:
        ensure_active(job_id)
        plan = pipeline.load_plan(files, job_id)
        pipeline.finish_job(files, job_id, plan, settings())
        # The result is uploaded whole before the job says it succeeded: nothing half-written is served.
        publish(files)
        ensure_active(job_id)
        store().mark_succeeded(job_id)
        metrics.JOBS.labels("succeeded").inc()
        logger.info("job %s succeeded", job_id)


@app.task(name=TASK_LIVE_FRAME)
def live_frame(client_id: str, jpeg_b64: str) -> dict:
    """One webcam frame: faces with person ids and the emotion to show (see worker.live)."""
    from worker.live import process_frame

    started = time.perf_counter()
    answer = process_frame(client_id, jpeg_b64, store().redis, detector(), classifier(), settings())
    metrics.LIVE_FRAMES.inc()
    metrics.TASK_SECONDS.labels("live_frame").observe(time.perf_counter() - started)
    return answer
