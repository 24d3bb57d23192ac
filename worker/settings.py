"""The worker's settings: every value has a local default and an EMOJI_* environment variable."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from common.settings import REPO_ROOT, CommonSettings


class WorkerSettings(CommonSettings):
    # Frames per batch task, about (cuts move to where a pre-roll starts on a keyframe; see worker.plan).
    batch_frames: int = Field(150, ge=1)
    # Each batch first analyses this much video before its first frame, not drawn, so tracking and smoothing
    # enter it warm (see worker.batch_pass).
    preroll_ms: float = Field(1000.0, ge=0)
    # A frame is drawn once this much video after it is analysed: detector gaps shorter than this are
    # bridged, one-frame false detections dropped. 450 ms holds 3-4 scans at `detect_every` 4, so a faint
    # face has time to be found on the scans in a row that confirm it (track_min_detections).
    lookahead_ms: float = Field(450.0, ge=0)
    # Scan for faces on every k-th frame and interpolate boxes in between (1 = every frame); the frames
    # between take the nearer scan's emotion. The detector is the biggest cost after encoding: with YuNet
    # every 4th frame (7.5 scans a second at 30 fps) gives the crowd clip as many faces with an emoji and
    # person ids as every 3rd, at three quarters of the cost; every 6th splits more ids (docs/benchmarks.md).
    detect_every: int = Field(4, ge=1)
    # The detector (YuNet, worker/detection.py) scans the whole frame, shrunk (never upscaled) to a width
    # chosen per scan by worker.detection.ScanSchedule: a quarter, half or all of this one while the faces
    # in view allow it, and all of it at least on every 5th scan (docs/benchmarks.md).
    detect_width: int = Field(640, ge=128)
    # Scans while a face is too small for detect_width (under 30 px there) are this wide: a crowd's far
    # faces; close-ups are scanned at a half or a quarter of detect_width (worker.detection.ScanSchedule).
    detect_fine_width: int = Field(960, ge=128)
    # Lowest face score kept: below it YuNet's boxes are mostly patterns (docs/benchmarks.md). Between 0.5
    # and 0.6 are faint far faces and some patterns: the tracker draws a face that faint only once it is
    # found on track_min_detections scans in a row (photos and live frames, which nothing confirms, keep
    # 0.6: worker.detection.UNCONFIRMED_MIN_SCORE).
    detect_min_score: float = Field(0.5, gt=0, lt=1)
    # Decoder and encoder threads per batch (0 = the library's choice). A worker runs one batch per process
    # and as many processes as cores, so one thread each wastes the least CPU on threading.
    decode_threads: int = Field(1, ge=0)
    encode_threads: int = Field(1, ge=0)
    # OpenCV's own threads per worker process; the pool's processes already share the cores.
    opencv_threads: int = Field(1, ge=0)

    # Tracking: a person keeps their id through this long without a matching face.
    track_max_miss_ms: float = Field(1000.0, ge=0)
    track_min_iou: float = Field(0.2, ge=0, le=1)
    # A track not found on this many scans in a row is dropped as a false detection (a poster or the back
    # of a head comes and goes between scans; a face is found scan after scan), unless one of its hits
    # scored at least track_sure_score: such a face is drawn from the first frame it is found on.
    track_min_detections: int = Field(2, ge=1)
    track_sure_score: float = Field(0.85, gt=0, le=1)

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
    # lost, unless more than this share of them is lost: then the job fails with `invalid_video`.
    max_lost_frames_fraction: float = Field(0.5, ge=0, le=1)

    # Object store down or failing: retries with the backoff above, then the job fails (storage_unavailable).
    storage_retries: int = Field(5, ge=0)
    storage_retry_backoff_s: float = Field(2.0, ge=0)

    # Prometheus metrics of the whole pool on this port of the main process (0: none).
    metrics_port: int = Field(9808, ge=0, le=65535)

    # A badge's size as a fraction of the face (each job chooses badge or cover, common/render_options.py).
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
    # Live frames are scanned this wide: faces in front of a webcam are large (a face 60 px high in a
    # 640x480 frame is still 30 px at 320, which YuNet finds), and the scan's cost grows with the area.
    live_detect_width: int = Field(320, ge=64)

    # The main process touches this file every health_interval_s while Redis answers (container health
    # checks look at its age); empty: no file.
    health_file: Path | None = None
    health_interval_s: float = Field(10.0, gt=0)

    @property
    def fine_scan_width(self) -> int:
        """The widest scan the worker makes (detect_fine_width, or detect_width if that is set wider)."""
        return max(self.detect_width, self.detect_fine_width)

    @model_validator(mode="after")
    def _ffmpeg_within_task_limit(self) -> WorkerSettings:
        if self.ffmpeg_timeout_s >= self.task_soft_time_limit_s:
            raise ValueError(
                f"ffmpeg_timeout_s ({self.ffmpeg_timeout_s}) must be below task_soft_time_limit_s "
                f"({self.task_soft_time_limit_s})"
            )
        return self
