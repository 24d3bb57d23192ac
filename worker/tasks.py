"""Celery tasks: thin wrappers (job id and frame range in, retries and acks) around worker.steps.

Chain: start_job -> process_batch xN (in parallel, any worker) -> finish_job. The batch that records the
last one (counted per batch index in Redis) enqueues the finish, and so does any later delivery of a recorded
batch, in case its first run died in between; a step that runs twice only overwrites its own files, so
duplicates are harmless. A job deleted or failed meanwhile stops quietly.

Passing faults (a busy batch, the model server or the object store down) are retried, each cause with its
own count and limit (RetryRule), so waiting for a busy batch never uses up the model server's tries.

Costs are bounded: every task has Celery's soft and hard time limits (common/queue.py) and every ffmpeg a
deadline; a batch runs once at a time (worker/batch_lock.py); a task whose worker keeps dying fails its job
with `resource_exhausted` once more than `max_lost_workers` deliveries of it died, instead of coming back
forever.

With an object store (EMOJI_STORAGE_URL), each task works in a private scratch folder: `job_step` hands the
pipeline a TaskFiles view that fetches the job's files on first use, the task publishes what it wrote
before it records progress, and the folder is removed when the task ends, however it ends.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery import Task, signals
from celery.utils.time import get_exponential_backoff_interval

from common import job_files, logs
from common import storage as storages
from common.errors import (
    EmojiServiceError,
    ModelServerError,
    ModelServerUnavailable,
    ResourceExhausted,
    StorageError,
    StorageFull,
    StorageUnavailable,
    TimedOut,
    VideoError,
    is_storage_full,
)
from common.jobs import JobStatus, JobStore, JobWarning
from common.queue import TASK_LIVE_FRAME, TASK_PHOTO_JOB, TASK_START_JOB, VIDEO_QUEUE
from common.render_options import RenderOptions
from worker import metrics, scratch, steps
from worker.app import app
from worker.batch_lock import BatchLock, LockLost
from worker.detection import shipped_model_file

# Imported before Celery forks its pool: the client's protos import TensorFlow (seconds, ~600 MB), paid once
# and shared by the pool's processes; each process opens its own gRPC channel on first use.
from worker.model_client import EmotionClient
from worker.settings import WorkerSettings
from worker.video_io import remove_stale_temps
from worker.webhooks import notify_finished

logger = logging.getLogger(__name__)

TASK_PROCESS_BATCH = "worker.process_batch"
TASK_FINISH_JOB = "worker.finish_job"
# The keyword in which a retried task carries its retries so far, per cause (see RetryRule).
RETRIED = "retried"


class JobGone(Exception):
    """The job was deleted, has failed, or is already done: nothing more to do for it."""


class BatchBusy(Exception):
    """Another run of the same batch holds its lock (Redis handed the task out twice): try again later."""


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


# A damaged or swapped face-detector file stops the worker as it starts, with what to do.
shipped_model_file()


@lru_cache(maxsize=1)
def detector():
    from worker.detection import make_detector

    return make_detector(settings())


@lru_cache(maxsize=1)
def live_detector():
    from worker.detection import make_detector

    # A live frame is answered at once: no later scan confirms a faint face.
    return make_detector(settings(), width=settings().live_detect_width, confirmed=False)


@lru_cache(maxsize=1)
def classifier():
    return EmotionClient.from_settings(settings())


@lru_cache(maxsize=4)
def overlay(options: RenderOptions):
    """The overlay for a job's render options (a few combinations, each made once per process)."""
    from worker.overlay import EmojiOverlay

    s = settings()
    return EmojiOverlay(options.style, s.overlay_scale, s.emoji_dir, labels=options.labels)


def ensure_active(job_id: str) -> None:
    """Raise JobGone unless the job exists and is still queued or running."""
    try:
        status = store().get(job_id).status
    except EmojiServiceError as exc:
        raise JobGone(f"job {job_id} no longer exists") from exc
    if status not in (JobStatus.queued, JobStatus.running):
        raise JobGone(f"job {job_id} is {status.value}")


def fail(job_id: str, code: str, message: str) -> None:
    # Conditional in Redis: a deleted job is not re-created, a finished one keeps its outcome.
    if store().mark_failed(job_id, code, message):
        metrics.JOBS.labels("failed").inc()
        logger.error("job %s failed: %s: %s", job_id, code, message)
        notify_finished(job_id)


def retry_countdown(
    retries: int, s: WorkerSettings, rng: random.Random | None = None, first_s: float | None = None
) -> float:
    """Seconds before retry number `retries` + 1: exponential from `first_s` (the model server's backoff by
    default), capped, and (with jitter) drawn between half and all of that, so batches that failed together
    come back spread out."""
    first = s.model_retry_backoff_s if first_s is None else first_s
    full = get_exponential_backoff_interval(first, retries, s.model_retry_backoff_max_s, full_jitter=False)
    if not s.model_retry_jitter:
        return float(full)
    return full / 2 + (rng or random).uniform(0, full / 2)


@dataclass(frozen=True)
class RetryRule:
    """How one passing cause is retried: its own count (carried in the task's RETRIED keyword, so that
    waiting for a busy batch never uses up the model server's or the object store's tries), its limit
    (None: no limit), its wait before retry number n + 1, and the job's error message once it gives up."""

    cause: str
    limit: int | None
    wait_s: Callable[[int], float]
    gave_up: str = ""


def retry_rule(exc: Exception, s: WorkerSettings) -> RetryRule | None:
    """The rule for a passing fault; None for anything that is not one."""
    if isinstance(exc, BatchBusy):
        # No limit: the other run ends within its hard time limit, and its lock with it.
        return RetryRule("batch_busy", None, lambda n: max(1.0, s.task_time_limit_s / 4))
    if isinstance(exc, ModelServerUnavailable):
        return RetryRule(
            "model_server", s.model_retries, lambda n: retry_countdown(n, s),
            "the emotion model server did not answer after {tries} tries; try again later ({exc})",
        )
    if isinstance(exc, StorageUnavailable):
        return RetryRule(
            "storage", s.storage_retries, lambda n: retry_countdown(n, s, first_s=s.storage_retry_backoff_s),
            "the object store did not answer after {tries} tries; try again later ({exc})",
        )
    return None


def retry_or_fail(task: Task, job_id: str, what: str, exc: Exception, rule: RetryRule) -> Exception | None:
    """The Retry to raise for `exc` (its cause's count goes up by one), or None once the cause's limit is
    reached and the job has failed."""
    counts = dict(task.request.kwargs.get(RETRIED) or {})
    done = counts.get(rule.cause, 0)
    if rule.limit is not None and done >= rule.limit:
        fail(job_id, getattr(exc, "code", "internal_error"), rule.gave_up.format(tries=done + 1, exc=exc))
        return None
    countdown = rule.wait_s(done)
    limit = "" if rule.limit is None else f"/{rule.limit}"
    logger.warning("job %s: %s: %s retry %d%s in %.1f s: %s", job_id, what, rule.cause, done + 1, limit,
                   countdown, exc)
    counts[rule.cause] = done + 1
    kwargs = {**task.request.kwargs, RETRIED: counts}
    # max_retries=None with the task's own max_retries=None: Celery sets no limit, the rule does.
    return task.retry(exc=exc, countdown=countdown, kwargs=kwargs, throw=False)


# Errors that fail the job with their own code and message.
FAILS_AS_SAID = (VideoError, ModelServerError, TimedOut, StorageFull, ResourceExhausted, StorageError)


def settle(task: Task, job_id: str, what: str, exc: Exception) -> tuple[str, Exception | None]:
    """The job's fate after `exc` ended a step: the outcome to count and, to retry, the Retry to raise.
    Gone -> stop quietly; a passing fault -> retry by its rule, then fail; bad video, model error or a
    refusing object store -> fail with the message; too slow -> `timed_out`; disk full -> `storage_full`;
    anything else -> `internal_error`."""
    if isinstance(exc, JobGone):
        logger.info("job %s: %s skipped: %s", job_id, what, exc)
        notify_finished(job_id)  # a finished job whose webhook a dead worker never queued gets it now
        return "skipped", None
    if isinstance(exc, LockLost):
        logger.warning("job %s: %s stopped without writing: %s", job_id, what, exc)
        return "skipped", None
    rule = retry_rule(exc, settings())
    if rule:
        retry = retry_or_fail(task, job_id, what, exc, rule)
        return ("retried" if retry else "failed"), retry
    if isinstance(exc, FAILS_AS_SAID):
        fail(job_id, exc.code, str(exc))
    elif isinstance(exc, SoftTimeLimitExceeded):
        fail(job_id, TimedOut.code, f"the worker took longer than {settings().task_soft_time_limit_s} s "
             f"while {what} (EMOJI_TASK_SOFT_TIME_LIMIT_S) and stopped; try a shorter video")
    elif is_storage_full(exc):
        fail(job_id, StorageFull.code, f"the disk is full ({exc.strerror}) while {what}; try again later")
    elif not store().exists(job_id):
        logger.info("job %s: %s stopped, the job was deleted", job_id, what)
        return "skipped", None
    else:
        logger.exception("job %s: %s failed", job_id, what)
        fail(job_id, "internal_error", f"the worker failed while {what}: {type(exc).__name__}: {exc}")
    return "failed", None


@contextmanager
def counted_delivery(job_id: str, key: str, what: str):
    """Count the task's deliveries under `key`: one that starts after `max_lost_workers` deliveries whose
    worker died fails the job with `resource_exhausted` (the step's own first check then stops it). The
    count comes down on every end this process sees (a retry too); never when the process is killed."""
    lost = store().count_delivery(job_id, key) - 1
    try:
        if lost > settings().max_lost_workers:
            fail(
                job_id,
                ResourceExhausted.code,
                f"the worker processing this video died {lost} times while {what} (out of memory or a "
                f"decoder crash; limit EMOJI_MAX_LOST_WORKERS={settings().max_lost_workers}); "
                "try a shorter or smaller video",
            )
        yield
    finally:
        store().end_delivery(job_id, key)


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


def task_key(task: Task, *parts) -> str:
    return ":".join([task.name.rsplit(".", 1)[-1], *(str(p) for p in parts)])


@contextmanager
def job_step(task: Task, job_id: str, what: str, key: str | None = None):
    """Run one step of a job in its files (see _task_files), its deliveries counted (counted_delivery),
    and settle the job's fate from whatever ends it (settle). Counts and times every run
    (worker/metrics.py); every line logged meanwhile names the job."""
    name = task.name.rsplit(".", 1)[-1]
    token = logs.current_job_id.set(job_id)
    started = time.perf_counter()
    outcome = "failed"
    try:
        with counted_delivery(job_id, key or task_key(task), what), _task_files(job_id) as files:
            yield files
        outcome = "succeeded"
    except Exception as exc:
        outcome, retry = settle(task, job_id, what, exc)
        if retry:
            raise retry from exc
    finally:
        if not store().exists(job_id):
            # Deleted while we worked (or before): our writes may have re-created its files; remove them.
            storage().delete_job(job_id)
        metrics.TASKS.labels(name, outcome).inc()
        metrics.TASK_SECONDS.labels(name).observe(time.perf_counter() - started)
        logs.current_job_id.reset(token)


@contextmanager
def batch_lock(job_id: str, stage: str, batch_index: int, outputs):
    """Hold the batch's lock while it runs (BatchBusy if another run has it), after removing the temporary
    files of a run that was killed; yields the fencing check to call before writing. (With an object store
    a run's temporary files live in its own scratch folder, which goes with it.)"""
    lock = BatchLock(store(), job_id, stage, batch_index, settings().task_time_limit_s + 30)
    if not lock.acquire():
        raise BatchBusy(f"{stage} batch {batch_index} is running elsewhere")
    try:
        for output in outputs if storage().local else ():
            remove_stale_temps(storage().path(job_id, output))
        yield lock.check
    finally:
        lock.release()


def batch_outputs(batch_index: int) -> list[str]:
    """The files one batch writes (each through a temporary name beside it)."""
    return [job_files.batch_record(batch_index), job_files.piece(batch_index)]


@signals.task_failure.connect
def _hard_time_limit(sender=None, task_id=None, exception=None, args=None, **_) -> None:
    """Celery killed a task's process at the hard time limit (in the worker's main process): the task will
    not report anything itself, so its job fails here, and a killed batch's half-written files go too."""
    if not (isinstance(exception, TimeLimitExceeded) and args and isinstance(args[0], str)):
        return
    job_id = args[0]
    fail(
        job_id,
        TimedOut.code,
        f"the worker took longer than {settings().task_time_limit_s} s (EMOJI_TASK_TIME_LIMIT_S) and "
        "was stopped; try a shorter video",
    )
    if getattr(sender, "name", None) == TASK_PROCESS_BATCH and len(args) > 1 and storage().local:
        # The killed run still holds the batch's lock, so no other run is writing these names now.
        for output in batch_outputs(args[1]):
            remove_stale_temps(storage().path(job_id, output))


# max_retries=None: Celery counts every retry of a task as one (request.retries) and would cap them all
# together; each cause has its own limit instead (retry_rule). `retried` is those counts (RETRIED).
@app.task(name=TASK_START_JOB, bind=True, max_retries=None)
def start_job(self: Task, job_id: str, retried: dict | None = None) -> None:
    """Probe the upload, split it into batches, enqueue them."""
    with job_step(self, job_id, "reading the video") as files:
        if not store().mark_running(job_id):
            raise JobGone(f"job {job_id} is gone or finished")
        plan = steps.plan_job(files, job_id, settings(), store().get(job_id).options)
        publish(files)
        # With an object store the gateway cannot probe the upload (it never has it on disk): this does.
        video = json.dumps(plan.info.to_dict())
        store().update(job_id, frames_total=plan.frames, batches_total=len(plan.batches), video=video)
        if plan.timestamps_repaired:
            store().add_warning(job_id, "timestamps", JobWarning(
                code="timestamps_repaired",
                message="the video's timestamps repeat or go back (e.g. a file joined to itself); the "
                "frames were timed from the frame rate instead",
            ))
        ensure_active(job_id)
        for index, (start, end) in enumerate(plan.batches):
            process_batch.apply_async((job_id, index, start, end), queue=VIDEO_QUEUE)


@app.task(name=TASK_PROCESS_BATCH, bind=True, max_retries=None)
def process_batch(
    self: Task, job_id: str, batch_index: int, start: int, end: int, retried: dict | None = None
) -> None:
    """Analyse frames [start, end), draw their emoji, encode the piece; the last batch enqueues the finish."""
    outputs = batch_outputs(batch_index)
    with (
        job_step(self, job_id, f"processing frames {start}-{end - 1}", task_key(self, batch_index)) as files,
        batch_lock(job_id, "batch", batch_index, outputs) as fence,
    ):
        ensure_active(job_id)
        if store().batch_done(job_id, batch_index):
            # A run that recorded this batch may have died before it queued the finish: queue it again.
            total = store().get(job_id).batches_total
            finish_when_complete(job_id, store().batches_done(job_id), total)
            raise JobGone(f"batch {batch_index} is done already")
        plan = steps.load_plan(files, job_id)
        if tuple(plan.batches[batch_index]) != (start, end):
            raise JobGone(f"batch {batch_index} ({start}-{end}) is not in the job's plan")
        record = steps.run_batch(
            files, job_id, batch_index, plan, detector(), classifier(), overlay(plan.options), settings(),
            fence=fence,
        )
        frames = len(record.frames)
        if frames < end - start:
            lost = JobWarning(
                code="frames_lost",
                message=f"frames {start + frames}-{end - 1} could not be decoded (the file is damaged "
                "there); they are missing from the video and the timeline",
                frames=[start + frames, end - 1],
            )
            store().add_warning(job_id, f"batch:{batch_index}", lost)
        # The record and the piece are in the store before the batch counts as done.
        publish(files)
        fence()
        metrics.FRAMES.labels("batch").inc(frames)
        done = store().mark_batch_done(job_id, batch_index, frames)
        finish_when_complete(job_id, done, len(plan.batches))


def finish_when_complete(job_id: str, done: int, total: int) -> None:
    """Queue the finish once every batch is recorded: from the batch that recorded the last one, and again
    from any later delivery of a recorded batch (its first run may have died before queueing it; a finish
    that runs twice is harmless, only the first marks the job done)."""
    if total and done >= total:
        ensure_active(job_id)
        finish_job.apply_async((job_id,), queue=VIDEO_QUEUE)


def check_frames_lost(job_id: str, plan: steps.Plan) -> None:
    """Fail a job that lost more of its frames than `max_lost_frames_fraction` (damaged file); fewer lost
    frames leave a `frames_lost` warning (added by the batch) and the job goes on."""
    decoded = store().frames_decoded(job_id)
    lost = plan.frames - decoded
    if lost and lost > settings().max_lost_frames_fraction * plan.frames:
        raise VideoError(
            f"only {decoded} of the video's {plan.frames} frames could be decoded; the file is damaged "
            f"(more than EMOJI_MAX_LOST_FRAMES_FRACTION={settings().max_lost_frames_fraction} lost). "
            "Upload an undamaged copy"
        )


@app.task(name=TASK_FINISH_JOB, bind=True, max_retries=None)
def finish_job(self: Task, job_id: str, retried: dict | None = None) -> None:
    """Stitch person ids, write the timeline, join the pieces with the original audio; mark the job done."""
    with job_step(self, job_id, "joining the video") as files:
        ensure_active(job_id)
        plan = steps.load_plan(files, job_id)
        check_frames_lost(job_id, plan)
        steps.finish_job(files, job_id, plan, settings(), settings().model_name)
        # The result is uploaded whole before the job says it succeeded: nothing half-written is served.
        publish(files)
        if not store().mark_succeeded(job_id):
            raise JobGone(f"job {job_id} was deleted or finished meanwhile")
        metrics.JOBS.labels("succeeded").inc()
        logger.info("job %s succeeded", job_id)
        notify_finished(job_id)


@app.task(name=TASK_PHOTO_JOB, bind=True, max_retries=None)
def photo_job(self: Task, job_id: str, retried: dict | None = None) -> None:
    """A photo, in one step: check its header again, decode it upright, draw its emoji, write the timeline."""
    from worker.photo import run_photo

    with job_step(self, job_id, "processing the photo") as files:
        if not store().mark_running(job_id):
            raise JobGone(f"job {job_id} is gone or finished")
        options = store().get(job_id).options
        info, plan, _ = run_photo(files, job_id, detector(), classifier(), overlay(options), settings())
        plan = plan.model_copy(update={"options": options})  # the timeline records how it was drawn
        steps.write_job_timeline(files, job_id, plan, settings(), settings().model_name)
        publish(files)
        ensure_active(job_id)
        store().update(job_id, frames_total=1, batches_total=1, video=json.dumps(info.to_dict()))
        store().mark_batch_done(job_id, 0, 1)
        store().mark_succeeded(job_id)
        metrics.JOBS.labels("succeeded").inc()
        metrics.FRAMES.labels("batch").inc()
        logger.info("job %s succeeded", job_id)
        notify_finished(job_id)


@app.task(name=TASK_LIVE_FRAME)
def live_frame(client_id: str, jpeg_b64: str) -> dict:
    """One webcam frame: faces with person ids and the emotion to show (see worker.live)."""
    from worker.live import process_frame

    started = time.perf_counter()
    answer = process_frame(client_id, jpeg_b64, store().redis, live_detector(), classifier(), settings())
    metrics.LIVE_FRAMES.inc()
    metrics.TASK_SECONDS.labels("live_frame").observe(time.perf_counter() - started)
    return answer
