"""Jobs: upload a video, follow it, fetch its results, delete it."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import PurePosixPath

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from common import job_files
from common.errors import JobNotFound, MediaRefused, VideoError
from common.jobs import Job, JobStatus, JobStore
from common.media import probe
from common.media_policy import MediaLimits
from common.queue import TASK_START_JOB, VIDEO_QUEUE
from common.storage import LocalStorage
from gateway.deps import CeleryDep, JobIdDep, SettingsDep, StorageDep, StoreDep
from gateway.errors import JobNotReady, ResultMissing
from gateway.schemas import JobCreated, JobLinks, JobPublic, JobsPublic
from gateway.uploads import BodyLimits, check_content_length, stream_upload

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

TERMINAL = (JobStatus.succeeded, JobStatus.failed)

UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary", "description": "the video"}},
                "required": ["file"],
            }
        }
    },
}
ERROR_EXAMPLE = {"application/json": {"example": {"error": {"code": "...", "message": "what to do"}}}}


def load_job(store: JobStore, job_id: str) -> Job:
    try:
        return store.get(job_id)
    except JobNotFound as exc:
        raise JobNotFound(
            f"no job with id {job_id}; it may have been deleted or expired. Upload the video again."
        ) from exc


def result_path(store: JobStore, storage: LocalStorage, job_id: str, name: str):
    """The path of a finished job's file, or the error that says why there is none."""
    job = load_job(store, job_id)
    if job.status is JobStatus.failed:
        reason = job.error.message if job.error else "unknown error"
        raise JobNotReady(f"the job failed ({reason}), so it has no results; upload the video again")
    if job.status is not JobStatus.succeeded:
        raise JobNotReady(
            f"the job is still {job.status.value} ({job.progress:.0%} done); "
            f"try again when its status is 'succeeded' (GET /api/v1/jobs/{job_id})"
        )
    if not storage.exists(job_id, name):
        raise ResultMissing(f"the job's {name} is gone from storage; upload the video again")
    return job, storage.path(job_id, name)


def download_name(job: Job, suffix: str) -> str:
    stem = PurePosixPath(job.filename or "video").stem or "video"
    return f"{stem}-{suffix}"


def result_file(
    store: JobStore, storage: LocalStorage, job_id: str, name: str, media_type: str, suffix: str,
    download: bool,
) -> FileResponse:
    """A finished job's file, shown in the browser or, with `download`, saved under the upload's name."""
    job, path = result_path(store, storage, job_id, name)
    return FileResponse(
        path,
        media_type=media_type,
        filename=download_name(job, suffix) if download else None,
        content_disposition_type="attachment" if download else "inline",
    )


@router.post(
    "",
    status_code=202,
    response_model=JobCreated,
    openapi_extra={"requestBody": UPLOAD_BODY},
    responses={
        413: {"description": "over the upload limit", "content": ERROR_EXAMPLE},
        400: {"description": "an unusable multipart body (e.g. its boundary)", "content": ERROR_EXAMPLE},
        415: {"description": "not a video we can read", "content": ERROR_EXAMPLE},
        422: {
            "description": "not a multipart form with a `file`, an empty file, or a video over one of the "
            "limits (the code names the limit: video_dimensions, frame_pixels, too_many_frames, too_long, "
            "too_many_streams, video_track_count, codec_not_allowed, container_not_allowed)",
            "content": ERROR_EXAMPLE,
        },
        507: {"description": "the server's disk is full", "content": ERROR_EXAMPLE},
    },
)
async def create_job(
    request: Request,
    response: Response,
    settings: SettingsDep,
    store: StoreDep,
    storage: StorageDep,
    celery: CeleryDep,
) -> JobCreated:
    """Upload a video (multipart field `file`); it is checked with ffprobe against the limits on what a video
    may cost, and queued."""
    check_content_length(request.headers.get("content-length"), settings.max_upload_bytes)
    job_id = uuid.uuid4().hex
    dest = storage.path(job_id, job_files.INPUT)
    try:
        upload = await stream_upload(
            request.stream(),
            request.headers.get("content-type"),
            dest,
            settings.max_upload_bytes,
            settings.upload_chunk_bytes,
            BodyLimits(
                settings.upload_max_parts,
                settings.upload_max_field_bytes,
                settings.upload_max_part_header_bytes,
            ),
        )
        try:
            info = await asyncio.to_thread(probe, dest, MediaLimits.from_settings(settings))
        except MediaRefused:
            raise  # its message names the limit, not the stored path
        except VideoError as exc:
            # ffprobe's detail names the stored path; the user knows the file by its own name.
            message = str(exc).replace(f"file:{dest.resolve()}", repr(upload.filename))
            message = message.replace(str(dest.resolve()), repr(upload.filename))
            if "upload" not in message:
                message += (
                    ". Check that the file plays on your computer, or convert it to MP4, and upload it again"
                )
            raise type(exc)(message) from exc
        await asyncio.to_thread(store.create, job_id, upload.filename, info.to_dict())
    except BaseException:
        # Refused, broken off or unreadable: nothing of it stays on disk. Called directly, not in a thread:
        # a cancelled request (client gone) would cancel that await too and leave the file behind.
        storage.delete_job(job_id)
        raise
    try:
        # Nobody reads start_job's result; ignoring it keeps Redis from holding one per job.
        await asyncio.to_thread(
            celery.send_task, TASK_START_JOB, args=[job_id], queue=VIDEO_QUEUE, ignore_result=True
        )
    except BaseException:
        store.delete(job_id)
        storage.delete_job(job_id)
        raise
    logger.info(
        "job %s queued: %r, %dx%d, %d frames", job_id, upload.filename, info.width, info.height, info.frames
    )
    links = JobLinks.for_job(job_id)
    response.headers["Location"] = links.self
    return JobCreated(id=job_id, status=JobStatus.queued, links=links)


@router.get("", response_model=JobsPublic)
def list_jobs(
    store: StoreDep, settings: SettingsDep, limit: int | None = Query(None, ge=1, le=100)
) -> JobsPublic:
    """The most recent jobs, newest first."""
    jobs = []
    for job_id in store.list_ids(limit or settings.recent_jobs_limit):
        try:
            jobs.append(JobPublic.from_job(store.get(job_id)))
        except JobNotFound:
            continue  # its record expired; the index entry is harmless
    return JobsPublic(jobs=jobs)


@router.get("/{job_id}", response_model=JobPublic, responses={404: {"content": ERROR_EXAMPLE}})
def get_job(job_id: JobIdDep, store: StoreDep) -> JobPublic:
    """A job's status and progress (0..1); `error` says what went wrong when it failed."""
    return JobPublic.from_job(load_job(store, job_id))


@router.head("/{job_id}/video", include_in_schema=False)
@router.get(
    "/{job_id}/video",
    response_class=FileResponse,
    responses={
        200: {"content": {"video/mp4": {}}},
        206: {"description": "the requested byte range"},
        409: {"description": "not finished", "content": ERROR_EXAMPLE},
    },
)
def get_video(job_id: JobIdDep, store: StoreDep, storage: StorageDep, download: bool = False) -> FileResponse:
    """The annotated MP4 (HTTP Range supported); `?download=true` asks the browser to save it."""
    return result_file(store, storage, job_id, job_files.RESULT, "video/mp4", "emoji.mp4", download)


@router.head("/{job_id}/timeline", include_in_schema=False)
@router.get(
    "/{job_id}/timeline",
    response_class=FileResponse,
    responses={200: {"content": {"application/json": {}}}, 409: {"content": ERROR_EXAMPLE}},
)
def get_timeline(
    job_id: JobIdDep, store: StoreDep, storage: StorageDep, download: bool = False
) -> FileResponse:
    """The emotion timeline as JSON (schema in docs/timeline.md)."""
    return result_file(
        store, storage, job_id, job_files.TIMELINE_JSON, "application/json", "timeline.json", download
    )


@router.head("/{job_id}/timeline.csv", include_in_schema=False)
@router.get(
    "/{job_id}/timeline.csv",
    response_class=FileResponse,
    responses={200: {"content": {"text/csv": {}}}, 409: {"content": ERROR_EXAMPLE}},
)
def get_timeline_csv(job_id: JobIdDep, store: StoreDep, storage: StorageDep) -> FileResponse:
    """The timeline as CSV, one row per frame and person, as a download."""
    return result_file(
        store, storage, job_id, job_files.TIMELINE_CSV, "text/csv; charset=utf-8", "timeline.csv", True
    )


@router.delete("/{job_id}", status_code=204, responses={404: {"content": ERROR_EXAMPLE}})
def delete_job(job_id: JobIdDep, store: StoreDep, storage: StorageDep) -> Response:
    """Delete a job and all its files."""
    known = store.exists(job_id)
    # Files without a record (a worker's late write, an expired record) go too, but only a job answers 204.
    storage.delete_job(job_id)
    if not known:
        raise JobNotFound(f"no job with id {job_id}; it may already have been deleted")
    store.delete(job_id)
    storage.delete_job(job_id)
    logger.info("job %s deleted", job_id)
    return Response(status_code=204)


def _sse(event: str, data: dict | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data)
    return f"event: {event}\ndata: {payload}\n\n"


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def job_events(
    job_id: JobIdDep, request: Request, store: StoreDep, settings: SettingsDep
) -> StreamingResponse:
    """Server-sent events: a `job` event (the job as JSON) on every change, until it finishes."""
    load_job(store, job_id)  # 404 now rather than an empty stream

    async def events() -> AsyncIterator[str]:
        last = None
        idle = 0.0
        while not await request.is_disconnected():
            try:
                job = await asyncio.to_thread(store.get, job_id)
            except JobNotFound:
                yield _sse("gone", {"message": "the job was deleted"})
                return
            body = JobPublic.from_job(job).model_dump_json()
            if body != last:
                last, idle = body, 0.0
                yield _sse("job", body)
                if job.status in TERMINAL:
                    return
            elif idle >= 15.0:
                idle = 0.0
                yield ": keep-alive\n\n"  # proxies close silent connections
            await asyncio.sleep(settings.events_interval_s)
            idle += settings.events_interval_s

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
