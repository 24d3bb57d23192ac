"""Jobs: upload a video, follow it, fetch its results, delete it."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import PurePosixPath

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse

from common.errors import JobNotFound, MediaRefused, VideoError
from common.jobs import Job, JobStatus, JobStore
from common.media import SNIFF_BYTES, looks_like_video, probe
from common.media_policy import MediaLimits
from common.queue import TASK_START_JOB, VIDEO_QUEUE
from common.storage import LocalStorage, S3Storage, Writer
from gateway import metrics
from gateway.deps import CeleryDep, JobIdDep, SettingsDep, StorageDep, StoreDep
from gateway.downloads import content_disposition, ranged_response
from gateway.errors import JobNotReady, ResultMissing
from gateway.schemas import JobCreated, JobLinks, JobPublic, JobsPublic
from gateway.settings import GatewaySettings
from gateway.uploads import BodyLimits, check_content_length, stream_upload

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

INPUT_NAME = "input"
VIDEO_NAME = "result.mp4"
TIMELINE_NAME = "timeline.json"
TIMELINE_CSV_NAME = "timeline.csv"
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


def finished_job(store: JobStore, job_id: str) -> Job:
    """A job that has succeeded, or the error that says why it has no results."""
    job = load_job(store, job_id)
    if job.status is JobStatus.failed:
        reason = job.error.message if job.error else "unknown error"
        raise JobNotReady(f"the job failed ({reason}), so it has no results; upload the video again")
    if job.status is not JobStatus.succeeded:
        raise JobNotReady(
            f"the job is still {job.status.value} ({job.progress:.0%} done); "
            f"try again when its status is 'succeeded' (GET /api/v1/jobs/{job_id})"
        )
    return job


def download_name(job: Job, suffix: str) -> str:
    stem = PurePosixPath(job.filename or "video").stem or "video"
    return f"{stem}-{suffix}"


def result_file(
    request: Request, store: JobStore, storage: LocalStorage | S3Storage, settings: GatewaySettings,
    job_id: str, name: str, media_type: str, suffix: str, download: bool,
) -> Response:
    """A finished job's file, shown in the browser or, with `download`, saved under the upload's name.

    Range requests work on every path: FileResponse for the local folder; for an object store either a
    ranged read streamed through here, or (EMOJI_DOWNLOAD_REDIRECT) a redirect to a presigned URL that the
    store answers itself. Downloads under the upload's name are always streamed: the name is a response
    header the presigned URL would have to override, which not every S3 service accepts.
    """
    job = finished_job(store, job_id)
    filename = download_name(job, suffix) if download else None
    if storage.local:
        if not storage.exists(job_id, name):
            raise ResultMissing(f"the job's {name} is gone from storage; upload the video again")
        return FileResponse(
            storage.path(job_id, name),
            media_type=media_type,
            filename=filename,
            content_disposition_type="attachment" if download else "inline",
        )
    size = storage.size(job_id, name)
    if size is None:
        raise ResultMissing(f"the job's {name} is gone from storage; upload the video again")
    disposition = content_disposition("attachment" if download else "inline", filename)
    if settings.download_redirect and not download:
        return RedirectResponse(storage.presign(job_id, name, settings.presign_ttl_s), status_code=307)
    return ranged_response(request, storage, job_id, name, size, media_type, disposition)


class SniffingWriter:
    """In front of an object-store upload: refuses at the first bytes a file that is no video container,
    so the store never receives it and the user gets a 415 at once (the worker still probes the rest)."""

    def __init__(self, out: Writer) -> None:
        self.out, self.head, self.checked = out, b"", False

    def write(self, data: bytes) -> None:
        if not self.checked:
            self.head += data[: SNIFF_BYTES - len(self.head)]
            if len(self.head) < SNIFF_BYTES:
                self.out.write(data)
                return
            self._check()
        self.out.write(data)

    def _check(self) -> None:
        self.checked = True
        if not looks_like_video(self.head):
            raise VideoError(
                "the file is not a video we can read (supported: MP4, MOV, MKV, WebM, AVI, MPEG-TS, FLV); "
                "check that it plays on your computer, or convert it to MP4, and upload it again"
            )

    def close(self) -> None:
        if not self.checked:
            self._check()
        self.out.close()

    def abort(self) -> None:
        self.out.abort()


async def probe_upload(path, filename: str, limits: MediaLimits):
    """ffprobe the stored upload against the limits; its errors name the user's file, not our path."""
    try:
        return await asyncio.to_thread(probe, path, limits)
    except MediaRefused:
        raise  # its message names the limit, not the stored path
    except VideoError as exc:
        message = str(exc).replace(f"file:{path.resolve()}", repr(filename))
        message = message.replace(str(path.resolve()), repr(filename))
        if "upload" not in message:
            message += (
                ". Check that the file plays on your computer, or convert it to MP4, and upload it again"
            )
        raise type(exc)(message) from exc


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
    try:
        out = await asyncio.to_thread(storage.writer, job_id, INPUT_NAME)
        if not storage.local:
            out = SniffingWriter(out)
        upload = await stream_upload(
            request.stream(),
            request.headers.get("content-type"),
            out,
            settings.max_upload_bytes,
            settings.upload_chunk_bytes,
            BodyLimits(
                settings.upload_max_parts,
                settings.upload_max_field_bytes,
                settings.upload_max_part_header_bytes,
            ),
        )
        metrics.UPLOAD_BYTES.inc(upload.size)
        if storage.local:
            path = storage.path(job_id, INPUT_NAME)
            video = (await probe_upload(path, upload.filename, MediaLimits.from_settings(settings))).to_dict()
        else:
            # The upload went straight to the object store and ffprobe reads only local files: the worker
            # probes it first thing (start_job), with the same limits; an unreadable file or one over a
            # limit fails the job with the same code the gateway would have answered.
            video = {}
        await asyncio.to_thread(store.create, job_id, upload.filename, video)
    except BaseException:
        metrics.UPLOADS.labels("refused").inc()
        # Refused, broken off or unreadable: nothing of it stays. Called directly, not in a thread: a
        # cancelled request (client gone) would cancel that await too and leave the file behind.
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
    metrics.UPLOADS.labels("accepted").inc()
    logger.info(
        "job %s queued: %r, %d bytes, %s", job_id, upload.filename, upload.size, video or "to be probed"
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
def get_video(
    request: Request, job_id: JobIdDep, store: StoreDep, storage: StorageDep, settings: SettingsDep,
    download: bool = False,
) -> Response:
    """The annotated MP4 (HTTP Range supported); `?download=true` asks the browser to save it."""
    return result_file(
        request, store, storage, settings, job_id, VIDEO_NAME, "video/mp4", "emoji.mp4", download
    )


@router.head("/{job_id}/timeline", include_in_schema=False)
@router.get(
    "/{job_id}/timeline",
    response_class=FileResponse,
    responses={200: {"content": {"application/json": {}}}, 409: {"content": ERROR_EXAMPLE}},
)
def get_timeline(
    request: Request, job_id: JobIdDep, store: StoreDep, storage: StorageDep, settings: SettingsDep,
    download: bool = False,
) -> Response:
    """The emotion timeline as JSON (schema in docs/timeline.md)."""
    return result_file(
        request, store, storage, settings, job_id, TIMELINE_NAME, "application/json", "timeline.json",
        download,
    )


@router.head("/{job_id}/timeline.csv", include_in_schema=False)
@router.get(
    "/{job_id}/timeline.csv",
    response_class=FileResponse,
    responses={200: {"content": {"text/csv": {}}}, 409: {"content": ERROR_EXAMPLE}},
)
def get_timeline_csv(
    request: Request, job_id: JobIdDep, store: StoreDep, storage: StorageDep, settings: SettingsDep
) -> Response:
    """The timeline as CSV, one row per frame and person, as a download."""
    return result_file(
        request, store, storage, settings, job_id, TIMELINE_CSV_NAME, "text/csv; charset=utf-8",
        "timeline.csv", download=True,
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
