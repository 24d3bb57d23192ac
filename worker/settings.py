"""The worker's settings: every value has a local default and an EMOJI_* environment variable."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from common.settings import REPO_ROOT, CommonSettings


class WorkerSettings(CommonSettings):
    # Frames per analyze/render task; a multiple of detect_every so detection frames line up across batches.
    batch_frames: int = Field(120, ge=1)
    # Scan the whole frame for faces on every k-th frame and interpolate boxes in between (1 = every frame).
    detect_every: int = Field(2, ge=1)
    # BlazeFace variant (worker/detection.py): "full_range" finds faces near and far, "short_range" (4x
    # cheaper) only faces close to the camera.
    detect_model: Literal["full_range", "short_range"] = "full_range"
    # Lowest face score kept (MediaPipe's own threshold).
    detect_min_score: float = Field(0.5, gt=0, lt=1)
    # Besides the whole frame, scan overlapping squares, this many across the frame's short side (0 = none):
    # finds faces too small for one whole-frame pass (a crowd). 1 = three squares on a 16:9 frame, 4 scans.
    detect_tile_rows: int = Field(1, ge=0)
    # Decode for analysis without the deblocking filter (faster; the pixels differ slightly, faces do not).
    fast_analysis_decode: bool = True
    # ffmpeg's decoder threads per batch (0 = ffmpeg's choice): the pool's processes already share the cores,
    # and one thread per decode wastes the least CPU on frame threading.
    decode_threads: int = Field(1, ge=0)
    # Frames are kept for cropping at most this wide; faces stay far above the model's 48 px.
    analysis_max_width: int = Field(1280, ge=64)
    # OpenCV's own threads per worker process; the pool's processes already share the cores.
    opencv_threads: int = Field(1, ge=0)

    # Tracking: a person keeps their id through this long without a matching face.
    track_max_miss_ms: float = Field(1000.0, ge=0)
    track_min_iou: float = Field(0.2, ge=0, le=1)
    # A track with fewer detector hits than this is dropped as a false detection.
    track_min_detections: int = Field(2, ge=1)

    # Smoothing: time constant of the per-person exponential average of the probabilities.
    smoothing_ms: float = Field(500.0, ge=0)
    # Hysteresis: another emotion must lead the shown one by this much, for this long, to replace it.
    hysteresis_margin: float = Field(0.10, ge=0, le=1)
    hysteresis_hold_ms: float = Field(300.0, ge=0)

    # Crops per Predict call (2.3 KB each): far below gRPC's 4 MiB default message limit.
    predict_batch: int = Field(512, ge=1)
    # Model server down: retries with exponential backoff (2, 4, 8, ... s, at most the max), then the job
    # fails. The defaults wait about 6 minutes in all (at least half that with jitter) before giving up.
    model_retries: int = Field(10, ge=0)
    model_retry_backoff_s: float = Field(2.0, ge=0)
    model_retry_backoff_max_s: float = Field(60.0, ge=0)
    # Each wait is drawn between half and all of its backoff, so batches that failed together do not all
    # come back in the same second.
    model_retry_jitter: bool = True
    # A damaged video whose decoder gave fewer frames than it has succeeds with a warning naming the frames
    # lost, unless more than this share of them is lost: then the job fails with `video_damaged`.
    max_lost_frames_fraction: float = Field(0.5, ge=0, le=1)

    # Emoji placement: "badge" at the face's upper-right corner (the face stays visible) or "cover".
    overlay_mode: Literal["badge", "cover"] = "badge"
    overlay_scale: float = Field(0.6, gt=0, le=3)
    emoji_dir: str = str(REPO_ROOT / "emojis")

    x264_preset: str = "veryfast"
    # x264's own default quality (the plain transcode the benchmark compares with); 20 costs ~10% more CPU.
    x264_crf: int = Field(23, ge=0, le=51)
    # Audio codecs that go into MP4 unchanged; anything else is re-encoded to AAC.
    mp4_audio_codecs: tuple[str, ...] = ("aac", "mp3", "ac3", "eac3", "alac")
    # Wall-clock deadline of each ffmpeg process (enforced while blocked, see common/processes.py); below the
    # task's soft time limit, so a stuck decoder fails the job with `timed_out` before Celery steps in.
    ffmpeg_timeout_s: float = Field(480.0, gt=0)

    # Live webcam frames: per-client tracking state lives in Redis this long after the last frame.
    live_state_ttl_s: int = Field(60, ge=1)
    live_max_jpeg_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    # Live frames are scanned whole, without tiles (detect_tile_rows) by default: faces in front of a webcam
    # are large, and each row of tiles would cost 2-3 more network runs against the 100 ms budget.
    live_detect_tile_rows: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _ffmpeg_within_task_limit(self) -> WorkerSettings:
        if self.ffmpeg_timeout_s >= self.task_soft_time_limit_s:
            raise ValueError(
                f"ffmpeg_timeout_s ({self.ffmpeg_timeout_s}) must be below task_soft_time_limit_s "
                f"({self.task_soft_time_limit_s})"
            )
        return self

    @model_validator(mode="after")
    def _batch_multiple_of_k(self) -> WorkerSettings:
        if self.batch_frames % self.detect_every:
            raise ValueError(
                f"batch_frames ({self.batch_frames}) must be a multiple of detect_every ({self.detect_every})"
            )
        return self
