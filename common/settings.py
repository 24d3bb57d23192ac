"""Settings shared by every service; each service's own settings class extends `CommonSettings`.

Every value has a safe local default and an environment variable (prefix EMOJI_, e.g. EMOJI_REDIS_URL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.media import ALLOWED_INPUT_FORMATS

REPO_ROOT = Path(__file__).resolve().parent.parent


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMOJI_", extra="ignore")

    # Redis: Celery's broker and results, and the job records.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # One folder per job (upload, pieces, results) when storage_url is empty; shared by every process.
    storage_dir: Path = REPO_ROOT / "var" / "storage"
    # Empty: job files in storage_dir. "s3://bucket/prefix": in an S3-compatible object store (below), and
    # nothing is shared between machines but Redis and the bucket.
    storage_url: str = ""
    # The S3 API's address, e.g. http://127.0.0.1:8333 for SeaweedFS or MinIO; empty: AWS S3 itself.
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    # Credentials; both empty: boto3's own chain (AWS_* variables, an instance or pod role).
    s3_access_key_id: str = ""
    s3_secret_access_key: SecretStr = SecretStr("")
    # "path" for SeaweedFS and MinIO (http://host/bucket/key), "virtual" or "auto" for AWS.
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    # Size of the parts of multipart uploads: the most an upload holds in memory (S3's minimum is 5 MiB).
    s3_part_bytes: int = Field(8 * 1024 * 1024, ge=5 * 1024 * 1024)
    # Seconds to wait for the object store to connect or answer before the call counts as failed.
    s3_timeout_s: float = Field(10.0, gt=0)
    # Private working folder of this process (with an object store, a worker's task copies its inputs here
    # and removes them when it ends); never shared.
    scratch_dir: Path = REPO_ROOT / "var" / "scratch"

    # Log lines as plain text, or as one JSON object per line (job id as a field) for log collectors.
    log_format: Literal["text", "json"] = "text"

    # The model server, gRPC: TF Serving or `python -m model_server`, the client cannot tell which.
    model_server_address: str = "127.0.0.1:8500"
    # The model's name in the server's config.
    model_name: str = "emotion"
    # The SavedModel signature and its tensors: uint8 faces [N,48,48,1] in, float32 probabilities [N,7] out.
    model_signature: str = "serving_default"
    # Input tensor of the signature.
    model_input_key: str = "faces"
    # Output tensor of the signature.
    model_output_key: str = "probabilities"
    # Deadline of every gRPC call to the model server.
    model_timeout_s: float = 10.0
    # gRPC's default receive limit is 4 MiB; requests are split to stay under it.
    grpc_max_message_bytes: int = 4 * 1024 * 1024

    # Redis re-delivers a task whose worker died after this many seconds: keep it above the longest task.
    visibility_timeout_s: int = 600
    # Every task gets SoftTimeLimitExceeded after this long (the job fails with `timed_out`)...
    task_soft_time_limit_s: int = Field(540, ge=1)
    # ...and its process is killed after this long; both stay below the visibility timeout, so Redis never
    # hands a task that is still running to a second worker.
    task_time_limit_s: int = Field(570, ge=1)
    # A task whose worker died (OOM kill, decoder crash) more often than this fails its job with
    # `resource_exhausted` instead of coming back forever.
    max_lost_workers: int = Field(3, ge=0)
    # How long Redis keeps a finished job's record; the gateway's storage sweep then removes its files.
    job_ttl_s: int = 7 * 24 * 3600

    # Webhooks (callback_url): the gateway checks the address at submit, the worker again before each POST.
    # Networks a callback may reach although private or loopback, comma-separated CIDRs (tests: 127.0.0.1/32).
    webhook_allowed_networks: str = ""
    # Seconds one delivery attempt may take (connect, send, answer).
    webhook_timeout_s: float = 10.0
    # Retries wait base * 2^n seconds, at most max_delay (and below the visibility timeout, or Redis would
    # hand the waiting task to a second worker), until window seconds after the job ended.
    webhook_retry_base_s: float = 30.0
    webhook_retry_max_delay_s: float = 3600.0
    webhook_retry_window_s: float = 24 * 3600.0

    # What one upload may cost (common/media_policy.py): checked on ffprobe's answer before queueing.
    # Largest width and height, either way round (portrait videos too).
    max_video_width: int = Field(4096, ge=16)
    max_video_height: int = Field(4096, ge=16)
    # Pixels per frame (decode memory and time grow with it): 3840x2160.
    max_frame_pixels: int = Field(3840 * 2160, ge=256)
    # Pixels of one live webcam frame, read from its JPEG header before anyone decodes it (1920x1080).
    live_max_frame_pixels: int = Field(1920 * 1080, ge=256)
    # Frames and duration of the video track (20 minutes; 30 minutes at 30 fps).
    max_video_frames: int = Field(54_000, ge=1)
    max_video_duration_s: float = Field(1200.0, gt=0)
    # Streams of every kind (video, audio, subtitles, data, attachments) in the container.
    max_streams: int = Field(8, ge=1)
    # Video codecs as ffprobe names them; others (ProRes, raw video, ...) are refused.
    allowed_video_codecs: tuple[str, ...] = (
        "h264", "hevc", "mpeg4", "vp8", "vp9", "av1", "mpeg2video", "mpeg1video", "mjpeg", "h263",
        "flv1", "theora", "msmpeg4v2", "msmpeg4v3", "wmv1", "wmv2", "wmv3", "vc1",
    )
    # Containers (ffmpeg's demuxer names); ffmpeg never opens any other kind of file for an upload.
    allowed_containers: tuple[str, ...] = ALLOWED_INPUT_FORMATS
    # What one photo may cost (common/images.py), read from its header before anything decodes it: the
    # longer side, and the pixels (50 MP: a phone's full-resolution 48-50 MP mode; 12 MP is the usual).
    max_image_side: int = Field(12_000, ge=16)
    max_image_pixels: int = Field(50_000_000, ge=256)

    @model_validator(mode="after")
    def _time_limits_in_order(self):
        if not self.task_soft_time_limit_s < self.task_time_limit_s < self.visibility_timeout_s:
            raise ValueError(
                "time limits must satisfy task_soft_time_limit_s < task_time_limit_s < visibility_timeout_s"
                f" (got {self.task_soft_time_limit_s}, {self.task_time_limit_s}, "
                f"{self.visibility_timeout_s}): "
                "a task still running past the visibility timeout is handed to a second worker"
            )
        return self
