"""Jobs: upload a video, follow it, fetch its results, delete it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from pydantic import ValidationError

from common import job_files
from common.errors import JobNotFound, MediaRefused, UploadTooLarge, VideoError
from common.images import IMAGE_FORMATS, ImageLimits, probe_image
from common.jobs import Job, JobChanges, JobStatus, JobStore
from common.media import SNIFF_BYTES, media_kind, probe
from common.media_policy import MediaLimits
from common.queue import VIDEO_QUEUE, first_task
from common.render_options import RenderOptions
from common.storage import LocalStorage, S3Storage, Writer
from common.webhooks import CallbackRefused, check_callback_url, delivery_state
from gateway import metrics
from gateway.auth import Owner, current_owner
from gateway.deps import CeleryDep, JobIdDep, SettingsDep, StorageDep, StoreDep
from gateway.downloads import content_disposition, ranged_response
from gateway.errors import BadRequestField, JobNotReady, OtherKindOfResult, ResultMissing
from gateway.form_fields import FormFields
from gateway.idempotency import Idempotency, checked_key
from gateway.quotas import Quotas
from gateway.schemas import JobCreated, JobLinks, JobPublic, JobsPublic, UrlJob
from gateway.settings import GatewaySettings
from gateway.uploads import MULTIPART_OVERHEAD_BYTES, BodyLimits, check_content_length, stream_upload
from gateway.url_fetch import FetchLimits, UrlTooLarge, fetch_url

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
OwnerDep = Annotated[Owner, Depends(current_owner)]

TERMINAL = (JobStatus.succeeded, JobStatus.failed)

FORM_FIELDS = {
    "callback_url": {
        "type": "string",
        "format": "uri",
        "description": "POSTed the job (JSON, signed) when it succeeds or fails",
    },
    "style": {"type": "string", "enum": ["badge", "cover"], "description": "badge (default) or cover"},
    "labels": {"type": "boolean", "description": "the emotion's name under each emoji"},
}
UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": "the video or the photo"},
                    **FORM_FIELDS,
                },
                "required": ["file"],
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "url": {"type": "string", "format": "uri", "description": "the video's https:// URL"},
                    **FORM_FIELDS,
                },
                "required": ["url"],
            }
        },
    },
}
ERROR_EXAMPLE = {"application/json": {"example": {"error": {"code": "...", "message": "what to do"}}}}


def not_found(job_id: str) -> JobNotFound:
    return JobNotFound(
        f"no job with id {job_id}; it may have been deleted or expired. Upload the video again."
    )


def body_limits(settings) -> BodyLimits:
    return BodyLimits(
        settings.upload_max_parts, settings.upload_max_field_bytes, settings.upload_max_part_header_bytes
    )


def load_job(store: JobStore, job_id: str, owner: Owner) -> Job:
    """The job if `owner` made it; another owner's job is "not found", word for word like a missing one."""
    if store.owner_of(job_id) != owner.id:
        raise not_found(job_id)
    try:
        return store.get(job_id)
    except JobNotFound as exc:
        raise not_found(job_id) from exc


def public(store: JobStore, job: Job) -> JobPublic:
    return JobPublic.from_job(job, webhook=delivery_state(store.redis, store.key(job.id), job.id))


def finished_job(store: JobStore, job_id: str, owner: Owner) -> Job:
    """The caller's job if it has succeeded, or the error that says why it has no results."""
    job = load_job(store, job_id, owner)
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
    job_id: str, name: str, media_type: str, suffix: str, download: bool, owner: Owner,
) -> Response:
    """A finished job's file, shown in the browser or, with `download`, saved under the upload's name.

    Range requests work on every path: FileResponse for the local folder; for an object store either a
    ranged read streamed through here, or (EMOJI_DOWNLOAD_REDIRECT) a redirect to a presigned URL that the
    store answers itself. Downloads under the upload's name are always streamed: the name is a response
    header the presigned URL would have to override, which not every S3 service accepts.
    """
    job = finished_job(store, job_id, owner)
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
    """In front of an object-store upload: refuses at the first bytes a file that is no video container and
    no photo, so the store never receives it and the user gets a 415 at once (the worker still probes the
    rest); `kind` is then "video" or "image"."""

    def __init__(self, out: Writer) -> None:
        self.out, self.head, self.checked, self.kind = out, b"", False, None

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
        self.kind = media_kind(self.head)
        if self.kind is None:
            raise VideoError(
                "the file is not a video we can read (supported: MP4, MOV, MKV, WebM, AVI, MPEG-TS, FLV; "
                "photos: JPEG, PNG, WebP, HEIC); check that it plays on your computer, or convert it to "
                "MP4, and upload it again"
            )

    def close(self) -> None:
        if not self.checked:
            self._check()
        self.out.close()

    def abort(self) -> None:
        self.out.abort()


class DigestWriter:
    """In front of the upload's writer (or none: a repeated Idempotency-Key's file is only compared): the
    SHA-256 of what passed, so an object-store upload never has to be read back to be hashed."""

    def __init__(self, out: Writer | None = None) -> None:
        self.out, self.sha256 = out, hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.sha256.update(data)
        if self.out is not None:
            self.out.write(data)

    def close(self) -> None:
        if self.out is not None:
            self.out.close()

    def abort(self) -> None:
        if self.out is not None:
            self.out.abort()

    def hexdigest(self) -> str:
        return self.sha256.hexdigest()


async def probe_upload(path, filename: str, settings: GatewaySettings) -> dict:
    """What the stored upload is, checked against the limits: a photo by its header (common/images.py), else
    a video by ffprobe; the errors name the user's file, not our path."""
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    if media_kind(head) == "image":
        info = await asyncio.to_thread(probe_image, path, ImageLimits.from_settings(settings))
        return info.to_dict()
    try:
        return (await asyncio.to_thread(probe, path, MediaLimits.from_settings(settings))).to_dict()
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


@dataclass
class Received:
    """What came in for a new job: the video in storage and the request's other fields."""

    filename: str
    size: int
    # SHA-256 of what an Idempotency-Key repeat must match: the file, or for a URL job the request.
    digest: str
    callback_url: str | None
    options: RenderOptions


def is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


async def read_url_job(request: Request, max_bytes: int) -> tuple[UrlJob, RenderOptions]:
    """The JSON body of a URL job, at most `max_bytes`, and its render options, checked before anything
    is counted or fetched."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise BadRequestField(
                f"the JSON body is larger than {max_bytes} bytes; send {{\"url\": \"https://...\"}}",
                code="invalid_request",
            )
    try:
        job = UrlJob.model_validate_json(bytes(body))
        return job, job.options()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise BadRequestField(
            f"the JSON body is not a URL job ({problems}); send {{\"url\": \"https://...\"}}, or upload "
            "the file as multipart/form-data",
            code="invalid_request",
        ) from exc
    except ValueError as exc:
        raise BadRequestField(str(exc), code="invalid_option") from exc


def checked_options(style: str | None, labels: str | None) -> RenderOptions:
    try:
        return RenderOptions.from_fields(style, labels)
    except ValueError as exc:
        raise BadRequestField(str(exc), code="invalid_option") from exc


def request_digest(job: UrlJob) -> str:
    return hashlib.sha256(job.model_dump_json().encode()).hexdigest()


class JobIntake:
    """One new job from its first byte to its task: counted against the owner's limits, received into
    storage (an upload streamed, or a URL fetched), checked, recorded and queued. `undo` takes back all of
    it, so a refused request leaves nothing behind and counts for nothing."""

    def __init__(
        self, request: Request, settings: GatewaySettings, store: JobStore, storage, celery, owner: Owner,
        idempotency_key: str | None,
    ) -> None:
        self.request, self.settings, self.store, self.storage = request, settings, store, storage
        self.celery, self.owner = celery, owner
        self.quotas: Quotas = request.app.state.quotas
        self.idempotency: Idempotency = request.app.state.idempotency
        self.key = checked_key(idempotency_key) if idempotency_key is not None else None
        self.job_id = uuid.uuid4().hex
        self.sniffer: SniffingWriter | None = None  # an object-store upload's: what its first bytes are

    async def claim(self) -> bool:
        """Claim the Idempotency-Key; False when an earlier request holds it (answer with its job)."""
        if self.key is None:
            return True
        return await asyncio.to_thread(self.idempotency.claim, self.owner.id, self.key, self.job_id) is None

    async def reserve(self) -> int:
        """Count the request against the owner's limits; the most bytes its video may bring."""
        length = self.request.headers.get("content-length") or ""
        declared = int(length) if length.isdigit() else 0
        await asyncio.to_thread(self.quotas.hit_upload, self.owner)
        await asyncio.to_thread(self.quotas.reserve_active, self.owner, self.job_id)
        room = await asyncio.to_thread(
            self.quotas.room_for, self.owner, max(declared - MULTIPART_OVERHEAD_BYTES, 0)
        )
        return self.settings.max_upload_bytes if room is None else min(self.settings.max_upload_bytes, room)

    async def _writer(self) -> DigestWriter:
        out: Writer = await asyncio.to_thread(self.storage.writer, self.job_id, job_files.INPUT)
        if not self.storage.local:
            out = self.sniffer = SniffingWriter(out)
        return DigestWriter(out)

    async def _beyond(self, cap: int, exc: Exception) -> Exception:
        """The error for a video stopped at `cap`: `exc` at the upload limit; at what is left of the owner's
        storage, the quota's error, which says so."""
        if cap == self.settings.max_upload_bytes:
            return exc
        return await asyncio.to_thread(self.quotas.storage_full, self.owner, cap + 1)

    async def receive_upload(self, cap: int) -> Received:
        """Stream the multipart `file` into storage; the small fields are read on the side."""
        content_type = self.request.headers.get("content-type")
        fields = FormFields(content_type, ("callback_url", "style", "labels"))
        hashed = await self._writer()
        try:
            upload = await stream_upload(
                fields.tee(self.request.stream()), content_type, hashed, cap,
                self.settings.upload_chunk_bytes, body_limits(self.settings),
            )
        except UploadTooLarge as exc:
            raise await self._beyond(cap, exc) from None
        options = checked_options(fields.get("style"), fields.get("labels"))
        return Received(upload.filename, upload.size, hashed.hexdigest(), fields.get("callback_url"), options)

    async def fetch(self, job: UrlJob, options: RenderOptions, cap: int) -> Received:
        """Fetch the video at `job.url` into storage, through the URL guard (gateway/url_fetch.py)."""
        hashed = await self._writer()
        try:
            fetched = await fetch_url(job.url, hashed, FetchLimits.from_settings(self.settings, cap))
        except UrlTooLarge as exc:
            raise await self._beyond(cap, exc) from None
        return Received(fetched.filename, fetched.size, request_digest(job), job.callback_url, options)

    async def register(self, received: Received) -> dict:
        """Check the callback, probe the stored upload against the limits, record the job; what it is (a
        video as ffprobe found it, a photo by its header; with an object store only a photo's kind, from
        its first bytes: the worker probes it first thing, with the same limits)."""
        if received.callback_url:
            try:
                await asyncio.to_thread(
                    check_callback_url, received.callback_url, self.settings.webhook_allowed_networks
                )
            except CallbackRefused as exc:
                raise BadRequestField(f"{exc}", code="callback_url_refused") from exc
        if self.storage.local:
            path = self.storage.path(self.job_id, job_files.INPUT)
            video = await probe_upload(path, received.filename, self.settings)
        else:
            video = {"kind": "image"} if self.sniffer and self.sniffer.kind == "image" else {}
        await asyncio.to_thread(self.quotas.add_stored, self.owner, self.job_id, received.size)
        await asyncio.to_thread(
            self.store.create_for, self.owner.id, self.job_id, received.filename, video,
            callback_url=received.callback_url, **received.options.to_record(),
        )
        return video

    async def queue(self, video: dict) -> None:
        """Send the job's first task (a video's or a photo's, common.queue.first_task)."""
        try:
            # Nobody reads the task's result; ignoring it keeps Redis from holding one per job.
            await asyncio.to_thread(
                self.celery.send_task, first_task(video), args=[self.job_id], queue=VIDEO_QUEUE,
                ignore_result=True,
            )
        except BaseException:
            self.store.delete(self.job_id)
            self.undo()
            raise

    async def complete(self, digest: str) -> None:
        if self.key is not None:
            await asyncio.to_thread(self.idempotency.complete, self.owner.id, self.key, self.job_id, digest)

    def undo(self) -> None:
        """Nothing of a refused job stays. Called directly, not in a thread: a cancelled request (client
        gone) would cancel that await too and leave the file behind."""
        self.storage.delete_job(self.job_id)
        _forget_quietly(self.quotas, self.idempotency, self.owner, self.job_id, self.key)


@router.post(
    "",
    status_code=202,
    response_model=JobCreated,
    openapi_extra={"requestBody": UPLOAD_BODY},
    responses={
        401: {"description": "no valid API key where one is needed", "content": ERROR_EXAMPLE},
        409: {"description": "the first request with this Idempotency-Key is still running",
              "content": ERROR_EXAMPLE},
        413: {"description": "over the upload limit", "content": ERROR_EXAMPLE},
        400: {"description": "an unusable multipart body (e.g. its boundary)", "content": ERROR_EXAMPLE},
        415: {"description": "not a video or photo we can read", "content": ERROR_EXAMPLE},
        422: {
            "description": "not a multipart form with a `file` (nor JSON with a `url`), an empty file, a "
            "refused callback_url, an unknown style or labels value (invalid_option), a refused or failed "
            "URL (url_scheme_refused, url_address_refused, url_redirect_refused, url_too_large, "
            "url_timed_out, url_unreachable, url_http_error, ...), an Idempotency-Key used before with "
            "another file, or a video over one of the limits (the code names the limit: video_dimensions, "
            "frame_pixels, too_many_frames, too_long, too_many_streams, video_track_count, "
            "codec_not_allowed, container_not_allowed; for a photo image_dimensions, image_pixels)",
            "content": ERROR_EXAMPLE,
        },
        429: {"description": "over one of the owner's limits (see Retry-After)", "content": ERROR_EXAMPLE},
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
    owner: OwnerDep,
    idempotency_key: Annotated[
        str | None,
        Header(description="the same key (and file) again within 24 h answers with the same job"),
    ] = None,
) -> JobCreated:
    """Upload a video or a photo (multipart field `file`, optional `callback_url`, `style`, `labels`), or
    give a video's URL (JSON `{"url": ...}`, the same optional fields); it is checked against the limits on
    what it may cost (a video with ffprobe, a photo by its header), and queued. The job belongs to the
    caller: its API key, its browser session, or the shared local owner."""
    check_content_length(request.headers.get("content-length"), settings.max_upload_bytes)
    url_job = await read_url_job(request, settings.upload_max_field_bytes) if is_json(request) else None
    intake = JobIntake(request, settings, store, storage, celery, owner, idempotency_key)
    if not await intake.claim():
        return await _replay(request, response, settings, intake, url_job[0] if url_job else None)
    try:
        cap = await intake.reserve()
        received = await (intake.fetch(*url_job, cap) if url_job else intake.receive_upload(cap))
        metrics.UPLOAD_BYTES.inc(received.size)
        video = await intake.register(received)
    except BaseException:
        metrics.UPLOADS.labels("refused").inc()
        intake.undo()
        raise
    await intake.queue(video)
    await intake.complete(received.digest)
    metrics.UPLOADS.labels("accepted").inc()
    logger.info(
        "job %s queued for %s: %r, %d bytes, %s, %s",
        intake.job_id, owner.id, received.filename, received.size, received.options, video or "to be probed",
    )
    links = JobLinks.for_job(intake.job_id, video)
    response.headers["Location"] = links.self
    return JobCreated(id=intake.job_id, status=JobStatus.queued, links=links)


def _forget_quietly(
    quotas: Quotas, idempotency: Idempotency, owner: Owner, job_id: str, idempotency_key: str | None
) -> None:
    """Undo a refused upload's counts; a Redis error here must not hide the refusal's own error."""
    try:
        quotas.release(owner, job_id)
        if idempotency_key is not None:
            idempotency.release(owner.id, idempotency_key, job_id)
    except Exception:
        logger.warning("could not release the counts of refused job %s", job_id, exc_info=True)


async def _replay(
    request: Request, response: Response, settings, intake: JobIntake, url_job: UrlJob | None
) -> JobCreated:
    """A repeated Idempotency-Key: the same file (read only to hash it, never stored) or the same URL
    request answers with the first job."""
    if url_job is not None:
        digest = request_digest(url_job)
    else:
        hashed = DigestWriter()
        await stream_upload(
            request.stream(), request.headers.get("content-type"), hashed,
            settings.max_upload_bytes, settings.upload_chunk_bytes, body_limits(settings),
        )
        digest = hashed.hexdigest()
    claim = await asyncio.to_thread(intake.idempotency.wait_done, intake.owner.id, intake.key)
    if claim.sha256 != digest:
        raise BadRequestField(
            "this Idempotency-Key was used for another file or URL; use a new key for a new upload",
            code="idempotency_key_reused",
        )
    links = JobLinks.for_job(claim.job_id)
    response.headers["Location"] = links.self
    response.headers["Idempotent-Replayed"] = "true"
    logger.info("job %s: upload repeated with the same Idempotency-Key, answered again", claim.job_id)
    return JobCreated(id=claim.job_id, status=JobStatus.queued, links=links)


@router.get("", response_model=JobsPublic)
def list_jobs(
    store: StoreDep, settings: SettingsDep, owner: OwnerDep, limit: int | None = Query(None, ge=1, le=100)
) -> JobsPublic:
    """Your most recent jobs (only the caller's own), newest first."""
    jobs = []
    for job_id in store.list_ids_for(owner.id, limit or settings.recent_jobs_limit):
        try:
            jobs.append(public(store, store.get(job_id)))
        except JobNotFound:
            continue  # its record expired; the index entry is harmless
    return JobsPublic(jobs=jobs)


@router.get("/{job_id}", response_model=JobPublic, responses={404: {"content": ERROR_EXAMPLE}})
def get_job(job_id: JobIdDep, store: StoreDep, owner: OwnerDep) -> JobPublic:
    """A job's status and progress (0..1); `error` says what went wrong when it failed; `webhook` the
    deliveries to its callback_url."""
    return public(store, load_job(store, job_id, owner))


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
    owner: OwnerDep, download: bool = False,
) -> Response:
    """The annotated MP4 (HTTP Range supported); `?download=true` asks the browser to save it."""
    if is_photo(load_job(store, job_id, owner)):
        raise OtherKindOfResult(f"this job is a photo; its result is at GET /api/v1/jobs/{job_id}/image")
    return result_file(
        request, store, storage, settings, job_id, job_files.RESULT, "video/mp4", "emoji.mp4", download, owner
    )


def is_photo(job: Job) -> bool:
    return (job.video or {}).get("kind") == "image"


@router.head("/{job_id}/image", include_in_schema=False)
@router.get(
    "/{job_id}/image",
    response_class=FileResponse,
    responses={
        200: {"content": {f.media_type: {} for f in IMAGE_FORMATS.values()}},
        404: {"description": "no such job, or the job is a video", "content": ERROR_EXAMPLE},
        409: {"description": "not finished", "content": ERROR_EXAMPLE},
    },
)
def get_image(
    request: Request, job_id: JobIdDep, store: StoreDep, storage: StorageDep, settings: SettingsDep,
    owner: OwnerDep, download: bool = False,
) -> Response:
    """A photo job's photo with its emoji, in the upload's format (JPEG, PNG, WebP, HEIC); `?download=true`
    asks the browser to save it."""
    job = load_job(store, job_id, owner)
    if not is_photo(job):
        raise OtherKindOfResult(f"this job is a video; its result is at GET /api/v1/jobs/{job_id}/video")
    image = IMAGE_FORMATS.get(job.video.get("format", ""))
    if image is None:  # an object-store upload the worker has not checked yet
        finished_job(store, job_id, owner)
        raise ResultMissing("the job's photo is gone from storage; upload the photo again")
    return result_file(
        request, store, storage, settings, job_id, job_files.photo_result(image.name), image.media_type,
        f"emoji.{image.extension}", download, owner,
    )


@router.head("/{job_id}/timeline", include_in_schema=False)
@router.get(
    "/{job_id}/timeline",
    response_class=FileResponse,
    responses={200: {"content": {"application/json": {}}}, 409: {"content": ERROR_EXAMPLE}},
)
def get_timeline(
    request: Request, job_id: JobIdDep, store: StoreDep, storage: StorageDep, settings: SettingsDep,
    owner: OwnerDep, download: bool = False,
) -> Response:
    """The emotion timeline as JSON (schema in docs/timeline.md)."""
    return result_file(
        request, store, storage, settings, job_id, job_files.TIMELINE_JSON, "application/json",
        "timeline.json", download, owner,
    )


@router.head("/{job_id}/timeline.csv", include_in_schema=False)
@router.get(
    "/{job_id}/timeline.csv",
    response_class=FileResponse,
    responses={200: {"content": {"text/csv": {}}}, 409: {"content": ERROR_EXAMPLE}},
)
def get_timeline_csv(
    request: Request, job_id: JobIdDep, store: StoreDep, storage: StorageDep, settings: SettingsDep,
    owner: OwnerDep,
) -> Response:
    """The timeline as CSV, one row per frame and person, as a download."""
    return result_file(
        request, store, storage, settings, job_id, job_files.TIMELINE_CSV, "text/csv; charset=utf-8",
        "timeline.csv", True, owner,
    )


@router.delete("/{job_id}", status_code=204, responses={404: {"content": ERROR_EXAMPLE}})
def delete_job(
    request: Request, job_id: JobIdDep, store: StoreDep, storage: StorageDep, owner: OwnerDep
) -> Response:
    """Delete a job and all its files."""
    known_owner = store.owner_of(job_id)
    if known_owner is None:
        # Files without a record (a late write, an expired record) go too, but only a job answers 204.
        storage.delete_job(job_id)
    if known_owner != owner.id:
        # Another owner's job: "not found" too, and its files stay.
        raise JobNotFound(f"no job with id {job_id}; it may already have been deleted")
    store.delete(job_id)
    store.forget_owned(owner.id, job_id)
    request.app.state.quotas.release(owner, job_id)
    storage.delete_job(job_id)
    logger.info("job %s deleted by %s", job_id, owner.id)
    return Response(status_code=204)


# A silent stream gets a comment line this often: proxies close connections that say nothing.
KEEP_ALIVE_S = 15.0


def _sse(event: str, data: dict | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data)
    return f"event: {event}\ndata: {payload}\n\n"


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def job_events(
    job_id: JobIdDep, request: Request, store: StoreDep, settings: SettingsDep, owner: OwnerDep
) -> StreamingResponse:
    """Server-sent events: a `job` event (the job as JSON) on every change, until it finishes.

    The stream reads the job when the store says it changed (the job's pub/sub channel), so progress and
    the end arrive at once and an idle page costs nothing; it also reads it every `events_interval_s` in
    case a notice was missed (Redis restarted, a write from outside the store)."""
    await asyncio.to_thread(load_job, store, job_id, owner)  # 404 now rather than an empty stream

    async def events() -> AsyncIterator[str]:
        last = None
        quiet_since = time.monotonic()
        async with JobChanges(settings.redis_url, store.changes_channel(job_id)) as changes:
            while not await request.is_disconnected():
                try:
                    job = await asyncio.to_thread(store.get, job_id)
                except JobNotFound:
                    yield _sse("gone", {"message": "the job was deleted"})
                    return
                body = (await asyncio.to_thread(public, store, job)).model_dump_json()
                if body != last:
                    last, quiet_since = body, time.monotonic()
                    yield _sse("job", body)
                    if job.status in TERMINAL:
                        return
                elif time.monotonic() - quiet_since >= KEEP_ALIVE_S:
                    quiet_since = time.monotonic()
                    yield ": keep-alive\n\n"  # proxies close silent connections
                await changes.wait(settings.events_interval_s)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
