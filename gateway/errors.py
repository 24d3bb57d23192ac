"""Errors as the API shows them: every error body is {"error": {"code", "message"}}.

`common.errors` says what went wrong; this module alone decides the HTTP status, so routes just raise.
"""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import (
    EmojiServiceError,
    JobNotFound,
    MediaRefused,
    ModelServerError,
    ModelServerUnavailable,
    StorageError,
    StorageFull,
    StorageUnavailable,
    UploadTooLarge,
    VideoError,
)

logger = logging.getLogger(__name__)


class BadUpload(VideoError):
    """The request is not a multipart form with a `file` field, or the file is empty."""

    code = "bad_upload"


class MalformedRequest(BadUpload):
    """The request cannot even be parsed as the form it claims to be (e.g. an unusable multipart boundary)."""

    code = "bad_request"


class UploadLimit(UploadTooLarge):
    """One of the limits on a multipart body other than the file's size: parts, a field's size, headers."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class JobNotReady(EmojiServiceError):
    """The job's results do not exist yet (still running) or never will (failed)."""

    code = "job_not_ready"


class ResultMissing(EmojiServiceError):
    """The job says it succeeded but its file is gone from storage."""

    code = "result_missing"


class OtherKindOfResult(JobNotFound):
    """A photo job asked for its video, or a video job for its photo (404; the message says where to look)."""

    code = "no_such_result"


class QueueUnavailable(EmojiServiceError):
    """Redis (the queue and the job records) did not answer."""

    code = "queue_unavailable"


class Unauthorized(EmojiServiceError):
    """No valid API key where one is needed, or a key that is unknown, revoked or malformed."""

    code = "unauthorized"
    headers = {"WWW-Authenticate": 'Bearer realm="emoji-video"'}


class QuotaExceeded(EmojiServiceError):
    """One of the owner's limits is reached; `code` names it and Retry-After says when to try again."""

    def __init__(self, code: str, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_s = max(1, int(retry_after_s + 0.999))
        self.headers = {"Retry-After": str(self.retry_after_s)}


class BadRequestField(EmojiServiceError):
    """A header or form field other than the file is not acceptable (Idempotency-Key, callback_url)."""

    code = "invalid_request"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code:
            self.code = code


class RequestInProgress(EmojiServiceError):
    """The first request with the same Idempotency-Key has not finished yet."""

    code = "idempotency_key_in_progress"
    headers = {"Retry-After": "2"}


# Most specific first: the first class the error is an instance of decides.
STATUS_BY_ERROR: tuple[tuple[type[EmojiServiceError], int], ...] = (
    (Unauthorized, 401),
    (QuotaExceeded, 429),
    (BadRequestField, 422),
    (RequestInProgress, 409),
    (UploadTooLarge, 413),
    (MalformedRequest, 400),
    (BadUpload, 422),
    (MediaRefused, 422),
    (VideoError, 415),
    (JobNotFound, 404),
    (JobNotReady, 409),
    (ResultMissing, 410),
    (QueueUnavailable, 503),
    (ModelServerUnavailable, 503),
    (ModelServerError, 502),
    (StorageUnavailable, 503),
    (StorageError, 502),
    (StorageFull, 507),
)

HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "upload_too_large",
    416: "range_not_satisfiable",
    422: "invalid_request",
}


def status_for(exc: EmojiServiceError) -> int:
    """The HTTP status for one of our errors; 500 for one without a mapping."""
    return next((status for cls, status in STATUS_BY_ERROR if isinstance(exc, cls)), 500)


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def install_error_handlers(app: FastAPI) -> None:
    """Make every error, ours or the framework's, answer with the one error body."""

    @app.exception_handler(EmojiServiceError)
    async def _service_error(request: Request, exc: EmojiServiceError) -> JSONResponse:
        status = status_for(exc)
        level = logging.WARNING if status >= 500 else logging.INFO
        logger.log(level, "%s %s -> %s %s: %s", request.method, request.url.path, status, exc.code, exc)
        headers = getattr(exc, "headers", None)
        return JSONResponse(error_body(exc.code, str(exc)), status_code=status, headers=headers)

    @app.exception_handler(redis.RedisError)
    @app.exception_handler(OperationalError)
    async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s: Redis unreachable: %s", request.method, request.url.path, exc)
        message = (
            "the job queue (Redis) is not reachable; try again in a minute, or ask the operator to start it"
        )
        return JSONResponse(error_body(QueueUnavailable.code, message), status_code=503)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "the request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"there is nothing at {request.url.path}; see /docs for the API"
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', 'invalid')}"
            for err in exc.errors()
        )
        return JSONResponse(error_body("invalid_request", f"the request is not valid ({problems})"), 422)
