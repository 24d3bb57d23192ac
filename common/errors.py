"""One short hierarchy of errors, mapped at the edges: to HTTP codes in the gateway, to retries in tasks."""

import errno


class EmojiServiceError(Exception):
    """Base of every error this service raises on purpose; `code` is the stable machine-readable name."""

    code = "internal_error"


class VideoError(EmojiServiceError):
    """The uploaded file is not a video we can read; the user must send another file."""

    code = "invalid_video"


class UploadTooLarge(VideoError):
    code = "upload_too_large"


class JobNotFound(EmojiServiceError):
    code = "job_not_found"


class ModelServerUnavailable(EmojiServiceError):
    """The model server did not answer (down, loading, or past the deadline); worth retrying."""

    code = "model_server_unavailable"


class ModelServerError(EmojiServiceError):
    """The model server answered with an error that retrying will not fix (wrong input, unknown model)."""

    code = "model_server_error"


class MediaRefused(VideoError):
    """The video is readable but over one of the limits on what a job may cost (see common/media_policy.py);
    `code` names the limit, the message its value."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class StorageFull(EmojiServiceError):
    """The disk (or the process's file-size limit) is full; nothing the user sent is wrong."""

    code = "storage_full"


class TimedOut(EmojiServiceError):
    """An external process or a task ran past its wall-clock deadline and was stopped."""

    code = "timed_out"


class ResourceExhausted(EmojiServiceError):
    """The job's worker died again and again (out of memory, a decoder crash): it will not be tried again."""

    code = "resource_exhausted"


# Errors of a full disk, a full quota, or a file over the process's RLIMIT_FSIZE.
STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def is_storage_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in STORAGE_FULL_ERRNOS
