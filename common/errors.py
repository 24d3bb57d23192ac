"""One short hierarchy of errors, mapped at the edges: to HTTP codes in the gateway, to retries in tasks."""


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


class StorageUnavailable(EmojiServiceError):
    """The object store did not answer or failed on its side (connection refused, timeout, 5xx); worth
    retrying."""

    code = "storage_unavailable"


class StorageError(EmojiServiceError):
    """The object store refused for a reason retrying will not fix: no such bucket, wrong credentials."""

    code = "storage_error"
