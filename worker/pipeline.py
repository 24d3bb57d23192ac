"""The job's steps as plain functions (the Celery tasks in worker/tasks.py are thin wrappers around them).

plan_job -> analyze_batch (each batch) -> make_timeline -> render_batch (each batch) -> finish_job.
Every step reads and writes files under the job's folder only and overwrites its own outputs atomically, so
any step may run twice.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from common.classes import NUM_CLASSES
from common.errors import EmojiServiceError, ModelServerError, VideoError
from common.face_crop import FACE_SIZE, crop_faces
from common.media import VideoInfo, _run_ffprobe, frame_timestamps_ms, probe
from common.media_policy import MediaLimits
from common.storage import LocalStorage
from worker.detection import FaceDetector
from worker.overlay import EmojiOverlay
from worker.settings import WorkerSettings
from worker.smoothing import EmotionSmoother
from worker.timeline import build_timeline, write_csv, write_json
from worker.tracking import IouTracker
from worker.video_io import PieceWriter, even, join_pieces, read_frames

logger = logging.getLogger(__name__)

INPUT = "input"
PLAN = "analysis/plan.json"
TIMELINE_JSON = "timeline.json"
TIMELINE_CSV = "timeline.csv"
RESULT = "result.mp4"


class EmotionClassifier(Protocol):
    model_version: str | int | None

    def predict(self, faces: np.ndarray) -> np.ndarray:
        """Probabilities float32 [N, 7] for faces uint8 [N, 48, 48, 1]."""


def analysis_name(batch_index: int) -> str:
    return f"analysis/{batch_index:05d}.json"


def piece_name(batch_index: int) -> str:
    return f"pieces/{batch_index:05d}.mp4"


@dataclass(frozen=True)
class Plan:
    """What every step of a job needs to know, computed once by `plan_job` and kept in analysis/plan.json."""

    info: VideoInfo
    timestamps_ms: list[float]
    batches: list[tuple[int, int]]
    # Where the video stream starts relative to the container (ffmpeg's -ss counts from the container).
    video_start_s: float
    container_start_s: float
    analysis_size: tuple[int, int]
    output_size: tuple[int, int]
    detect_every: int
    # The decoder's pixel format and range, so analysis can take the luma plane as decoded (see read_frames).
    pix_fmt: str | None = None
    full_range: bool = False
    # The file's timestamps repeated or went back (e.g. an MPEG-TS joined to itself): they were counted
    # afresh from the frame rate, and the job decodes in one batch (seeking by time would be ambiguous).
    timestamps_repaired: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return len(self.timestamps_ms)

    def to_dict(self) -> dict:
        return {
            "info": self.info.to_dict(),
            "timestamps_ms": self.timestamps_ms,
            "batches": [list(b) for b in self.batches],
            "video_start_s": self.video_start_s,
            "container_start_s": self.container_start_s,
            "analysis_size": list(self.analysis_size),
            "output_size": list(self.output_size),
            "detect_every": self.detect_every,
            "pix_fmt": self.pix_fmt,
            "full_range": self.full_range,
            "timestamps_repaired": self.timestamps_repaired,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        return cls(
            info=VideoInfo.from_dict(data["info"]),
            timestamps_ms=[float(t) for t in data["timestamps_ms"]],
            batches=[(int(a), int(b)) for a, b in data["batches"]],
            video_start_s=float(data["video_start_s"]),
            container_start_s=float(data["container_start_s"]),
            analysis_size=tuple(data["analysis_size"]),
            output_size=tuple(data["output_size"]),
            detect_every=int(data["detect_every"]),
            pix_fmt=data.get("pix_fmt"),
            full_range=bool(data.get("full_range", False)),
            timestamps_repaired=bool(data.get("timestamps_repaired", False)),
        )

    def seek(self, start: int) -> tuple[float, int]:
        """(seconds for ffmpeg's input -ss, frames to drop after it) to start decoding exactly at `start`."""
        if start <= 0:
            return 0.0, 0
        # Seek half-way between two distinct timestamps so rounding cannot land on the wrong frame.
        j = start
        while j > 1 and self.timestamps_ms[j] - self.timestamps_ms[j - 1] < 1.0:
            j -= 1
        middle_ms = (self.timestamps_ms[j - 1] + self.timestamps_ms[j]) / 2
        return middle_ms / 1000.0 + self.video_start_s - self.container_start_s, start - j

    def decode_window(self, start: int) -> tuple[float, float | None, int]:
        """(demuxer seek in s from the container's start, stream time in s to keep frames from, frames to drop
        after that) to decode from exactly `start` (see read_frames' `cut_s`).

        The demuxer lands on the last keyframe at or before the seek; seeking just past the first frame's own
        time (not half a frame before it, which ffmpeg's accurate seek needs) keeps a batch that starts on a
        keyframe from decoding the whole group of pictures before it.
        """
        if start <= 0:
            return 0.0, None, 0
        seek_s, skip = self.seek(start)
        j = start - skip
        times = self.timestamps_ms
        later = next((t for t in times[j + 1 :] if t - times[j] >= 1.0), None)
        # A little past frame j, well before the next distinct frame, so rounding cannot land beyond it.
        past_ms = times[j] + (min(1.0, (later - times[j]) / 4) if later is not None else 1.0)
        demux_s = past_ms / 1000.0 + self.video_start_s - self.container_start_s
        cut_s = (times[j - 1] + times[j]) / 2000.0 + self.video_start_s
        return demux_s, cut_s, skip


def _stream_starts(path: Path, format_name: str) -> tuple[float, float, str | None, bool]:
    """(video stream start s, container start s, decoded pixel format, whether its range is full)."""
    data = _run_ffprobe(
        path,
        "-select_streams",
        "v:0",
        "-show_entries",
        "stream=start_time,pix_fmt,color_range:format=start_time",
    )
    stream_info = (data.get("streams") or [{}])[0]
    stream = stream_info.get("start_time")
    container = data.get("format", {}).get("start_time")
    video_start = float(stream) if stream not in (None, "N/A") else 0.0
    container_start = float(container) if container not in (None, "N/A") else video_start
    pix_fmt = stream_info.get("pix_fmt") or None
    full_range = stream_info.get("color_range") == "pc" or (pix_fmt or "").startswith("yuvj")
    return video_start, container_start, pix_fmt, full_range


def keyframe_indices(path: Path, timestamps_ms: list[float]) -> list[int]:
    """Indices (display order, as in `timestamps_ms`) of the video's keyframes, where a decode can start."""
    data = _run_ffprobe(
        path, "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags:stream=start_time"
    )
    start = float((data.get("streams") or [{}])[0].get("start_time") or 0.0)
    index = {t: i for i, t in enumerate(timestamps_ms)}
    keys = set()
    for packet in data.get("packets", []):
        if "K" in (packet.get("flags") or "") and packet.get("pts_time") not in (None, "N/A"):
            # The same rounding as frame_timestamps_ms, so the times match exactly.
            i = index.get(round((float(packet["pts_time"]) - start) * 1000.0, 3))
            if i is not None:
                keys.add(i)
    return sorted(keys)


def plan_batches(frames: int, keyframes: list[int], size: int) -> list[tuple[int, int]]:
    """Frame ranges of about `size` frames. Decoding a batch starts at the keyframe before it, so where
    keyframes are further apart than a batch (a cut there would decode a whole batch of frames only to reach
    its start) the batch ends at the next keyframe instead, if that keeps it within 3x `size`."""
    batches: list[tuple[int, int]] = []
    keys = sorted(k for k in keyframes if 0 < k < frames)
    start = 0
    while start < frames:
        end = min(start + size, frames)
        if end < frames:
            before = [k for k in keys if k <= end]
            previous = before[-1] if before else 0
            if end - previous >= size:
                following = next((k for k in keys if k > end), frames)
                if following - start <= 3 * size:
                    end = following
                elif previous > start:
                    end = previous
        batches.append((start, end))
        start = end
    return batches


def plan_job(storage: LocalStorage, job_id: str, settings: WorkerSettings) -> Plan:
    """Probe the upload, read every frame's timestamp, split into batches; writes analysis/plan.json."""
    source = storage.path(job_id, INPUT)
    if not source.exists():
        raise VideoError("the uploaded file is missing; upload the video again")
    # The gateway checked the limits already; checked again here as the plan is what the work will cost.
    info = probe(source, MediaLimits.from_settings(settings))
    timestamps = frame_timestamps_ms(source)
    if not timestamps:
        raise VideoError("the video has no frames; upload a video that plays")
    video_start, container_start, pix_fmt, full_range = _stream_starts(source, info.format_name)
    repaired = not strictly_increasing(timestamps)
    if repaired:
        timestamps = [round(timestamps[0] + i * 1000.0 / info.fps, 3) for i in range(len(timestamps))]
        batches = [(0, len(timestamps))]
    else:
        batches = plan_batches(len(timestamps), keyframe_indices(source, timestamps), settings.batch_frames)
    out_w, out_h = even(info.width), even(info.height)
    analysis_w = even(min(info.width, settings.analysis_max_width))
    analysis_h = even(round(info.height * analysis_w / info.width))
    plan = Plan(
        info,
        timestamps,
        batches,
        video_start,
        container_start,
        (analysis_w, analysis_h),
        (out_w, out_h),
        settings.detect_every,
        pix_fmt,
        full_range,
        repaired,
    )
    write_json(storage.path(job_id, PLAN), plan.to_dict())
    logger.info(
        "job %s: %dx%d %.3f fps, %d frames in %d batches",
        job_id,
        info.width,
        info.height,
        info.fps,
        plan.frames,
        len(batches),
    )
    return plan


def strictly_increasing(times: list[float]) -> bool:
    """Whether every frame has its own time (sorted packet times repeat when a stream restarts its clock)."""
    return all(b > a for a, b in zip(times, times[1:], strict=False))


def load_plan(storage: LocalStorage, job_id: str) -> Plan:
    return Plan.from_dict(json.loads(storage.path(job_id, PLAN).read_text()))


def classify(classifier: EmotionClassifier, faces: np.ndarray, per_call: int) -> np.ndarray:
    """Probabilities [N, 7] for all crops, in as few Predict calls as the per-call limit allows."""
    if not len(faces):
        return np.zeros((0, NUM_CLASSES), np.float32)
    parts = [classifier.predict(faces[i : i + per_call]) for i in range(0, len(faces), per_call)]
    probabilities = np.concatenate(parts).astype(np.float32)
    if probabilities.shape != (len(faces), NUM_CLASSES):
        raise ModelServerError(
            f"expected probabilities of shape {(len(faces), NUM_CLASSES)}, got {probabilities.shape}"
        )
    return probabilities


def _model_version(classifier: EmotionClassifier) -> str | None:
    try:
        version = classifier.model_version
    except EmojiServiceError:
        return None
    return None if version is None else str(version)


def model_version_of(storage: LocalStorage, job_id: str, plan: Plan) -> str | None:
    """The model version that classified the job's faces, as the batches recorded it (None without faces)."""
    for index in range(len(plan.batches)):
        version = json.loads(storage.path(job_id, analysis_name(index)).read_text()).get("model_version")
        if version is not None:
            return version
    return None


def detection_frames(start: int, count: int, every: int) -> list[int]:
    """Local indices to detect on: every k-th frame of the video, plus the batch's first and last."""
    chosen = {i for i in range(count) if (start + i) % every == 0}
    return sorted(chosen | ({0, count - 1} if count else set()))


def detect_faces(
    frames_yuv: list[np.ndarray], size: tuple[int, int], start: int, every: int, detector: FaceDetector
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Detections {local index: (boxes, scores)}: a whole-frame scan, in colour, on each detection frame."""
    detections = {}
    for i in detection_frames(start, len(frames_yuv), every):
        found = detector.detect(yuv420p_to_bgr(frames_yuv[i], size))
        detections[i] = (found.xyxy, found.scores)
    return detections


def yuv420p_to_bgr(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    return cv2.cvtColor(frame.reshape(height * 3 // 2, width), cv2.COLOR_YUV2BGR_I420)


def follow_faces(
    detections: dict[int, tuple[np.ndarray, np.ndarray]],
    times_ms: list[float],
    count: int,
    max_miss_ms: float,
    min_iou: float,
) -> list[list[tuple[np.ndarray, float, bool]]]:
    """Faces for every frame of a batch from detections on some of them: boxes of one face are linked across
    detection frames (surviving misses up to `max_miss_ms`) and interpolated linearly in between."""
    tracker = IouTracker(min_iou=min_iou, max_miss_ms=max_miss_ms)
    observations: dict[int, list[tuple[int, np.ndarray, float]]] = {}
    for i in sorted(detections):
        boxes, scores = detections[i]
        for track_id, box, score in zip(tracker.update(boxes, times_ms[i]), boxes, scores, strict=False):
            observations.setdefault(track_id, []).append((i, np.asarray(box, np.float64), float(score)))
    faces: list[list[tuple[np.ndarray, float, bool]]] = [[] for _ in range(count)]
    for obs in observations.values():
        for (i0, b0, s0), (i1, b1, s1) in zip(obs, obs[1:], strict=False):
            faces[i0].append((b0, s0, True))
            span = times_ms[i1] - times_ms[i0]
            for i in range(i0 + 1, i1):
                w = (times_ms[i] - times_ms[i0]) / span if span > 0 else (i - i0) / (i1 - i0)
                faces[i].append((b0 + w * (b1 - b0), s0 + w * (s1 - s0), False))
        i_last, b_last, s_last = obs[-1]
        faces[i_last].append((b_last, s_last, True))
    return faces


def analyze_batch(
    storage: LocalStorage,
    job_id: str,
    batch_index: int,
    plan: Plan,
    detector: FaceDetector,
    classifier: EmotionClassifier,
    settings: WorkerSettings,
    fence=None,
) -> int:
    """Decode the batch's frames (yuv420p: half the memory of BGR), find and follow faces, classify every
    crop; writes analysis/<batch>.json and returns the frames analysed. `fence` (a fencing check) runs before
    the write and may raise to stop it."""
    start, end = plan.batches[batch_index]
    source = storage.path(job_id, INPUT)
    aw, ah = plan.analysis_size
    seek_s, cut_s, skip = plan.decode_window(start)
    t0 = time.perf_counter()
    frames = list(
        read_frames(
            source,
            plan.info.format_name,
            aw,
            ah,
            "yuv420p",
            end - start,
            seek_s,
            skip,
            source_size=(plan.info.width, plan.info.height),
            timeout_s=settings.ffmpeg_timeout_s,
            fast=settings.fast_analysis_decode,
            threads=settings.decode_threads,
            cut_s=cut_s,
        )
    )
    count = len(frames)
    times = plan.timestamps_ms[start : start + count]
    t1 = time.perf_counter()
    detections = detect_faces(frames, (aw, ah), start, plan.detect_every, detector)
    t2 = time.perf_counter()
    faces = follow_faces(detections, times, count, settings.track_max_miss_ms, settings.track_min_iou)
    crops = [
        crop_faces(yuv420p_to_bgr(frames[i], (aw, ah)), [box for box, _, _ in faces[i]])
        for i in range(count)
        if faces[i]
    ]
    stacked = np.concatenate(crops) if crops else np.zeros((0, FACE_SIZE, FACE_SIZE, 1), np.uint8)
    t3 = time.perf_counter()
    probabilities = classify(classifier, stacked, settings.predict_batch)
    t4 = time.perf_counter()
    version = _model_version(classifier) if len(stacked) else None
    # Boxes go back to the displayed frame's pixels, the coordinates of the timeline and the render.
    to_display = plan.info.width / aw
    out_frames, k = [], 0
    for i in range(count):
        out_faces = []
        for box, score, detected in faces[i]:
            out_faces.append(
                {
                    "box_xyxy": [round(float(v) * to_display, 2) for v in box],
                    "score": round(score, 4),
                    "detected": detected,
                    "probabilities": [round(float(p), 5) for p in probabilities[k]],
                }
            )
            k += 1
        out_frames.append({"index": start + i, "t_ms": times[i], "faces": out_faces})
    timings = {
        "decode_ms": (t1 - t0) * 1000,
        "detect_ms": (t2 - t1) * 1000,
        "crop_ms": (t3 - t2) * 1000,
        "classify_ms": (t4 - t3) * 1000,
    }
    if fence is not None:
        fence()
    write_json(
        storage.path(job_id, analysis_name(batch_index)),
        {
            "batch_index": batch_index,
            "start": start,
            "end": start + count,
            "frames": out_frames,
            "detection_frames": len(detections),
            "crops": int(len(stacked)),
            "model_version": version,
            "timings_ms": {k: round(v, 1) for k, v in timings.items()},
        },
    )
    logger.info(
        "job %s: analysed batch %d (frames %d-%d, %d crops): decode %.0f ms, detect %.0f ms on %d frames, "
        "crop %.0f ms, classify %.0f ms",
        job_id,
        batch_index,
        start,
        start + count - 1,
        len(stacked),
        timings["decode_ms"],
        timings["detect_ms"],
        len(detections),
        timings["crop_ms"],
        timings["classify_ms"],
    )
    return count


def make_timeline(
    storage: LocalStorage, job_id: str, plan: Plan, settings: WorkerSettings, model: dict
) -> dict:
    """Stitch the batches' analyses into one timeline (global tracking, smoothing); writes JSON and CSV."""
    frames: list[dict] = []
    for index in range(len(plan.batches)):
        frames.extend(json.loads(storage.path(job_id, analysis_name(index)).read_text())["frames"])
    info = plan.info
    video = {
        "width": info.width,
        "height": info.height,
        "fps": round(info.fps, 6),
        "frames": len(frames),
        "duration_s": info.duration_s,
        "has_audio": info.has_audio,
    }
    used = {
        "detect_every": settings.detect_every,
        "detect_model": settings.detect_model,
        "detect_tile_rows": settings.detect_tile_rows,
        "smoothing_ms": settings.smoothing_ms,
        "hysteresis_margin": settings.hysteresis_margin,
        "hysteresis_hold_ms": settings.hysteresis_hold_ms,
        "track_max_miss_ms": settings.track_max_miss_ms,
        "track_min_detections": settings.track_min_detections,
    }
    timeline = build_timeline(
        job_id,
        video,
        frames,
        model,
        used,
        tracker=IouTracker(min_iou=settings.track_min_iou, max_miss_ms=settings.track_max_miss_ms),
        smoother=EmotionSmoother(
            settings.smoothing_ms, settings.hysteresis_margin, settings.hysteresis_hold_ms
        ),
        min_detections=settings.track_min_detections,
    )
    write_json(storage.path(job_id, TIMELINE_JSON), timeline)
    write_csv(storage.path(job_id, TIMELINE_CSV), timeline)
    logger.info("job %s: timeline of %d frames, %d people", job_id, len(frames), len(timeline["people"]))
    return timeline


def render_batch(
    storage: LocalStorage,
    job_id: str,
    batch_index: int,
    plan: Plan,
    overlay: EmojiOverlay,
    settings: WorkerSettings,
    timeline: dict | None = None,
    fence=None,
) -> int:
    """Decode the batch's frames (yuv420p), draw each face's shown emoji, encode pieces/<batch>.mp4."""
    start, end = plan.batches[batch_index]
    if timeline is None:
        timeline = json.loads(storage.path(job_id, TIMELINE_JSON).read_text())
    by_index = {f["index"]: f["faces"] for f in timeline["frames"][start:end]}
    if len(by_index) < end - start:  # frames may be missing at a damaged tail; do not trust positions
        by_index = {f["index"]: f["faces"] for f in timeline["frames"] if start <= f["index"] < end}
    width, height = plan.output_size
    sx, sy = width / plan.info.width, height / plan.info.height
    matrix = "bt709" if height >= 720 else "bt601"
    seek_s, cut_s, skip = plan.decode_window(start)
    writer = PieceWriter(
        storage.path(job_id, piece_name(batch_index)),
        width,
        height,
        plan.info.fps,
        settings.x264_preset,
        settings.x264_crf,
        settings.ffmpeg_timeout_s,
    )
    t0 = time.perf_counter()
    try:
        for offset, frame in enumerate(
            read_frames(
                storage.path(job_id, INPUT),
                plan.info.format_name,
                width,
                height,
                "yuv420p",
                end - start,
                seek_s,
                skip,
                source_size=(plan.info.width, plan.info.height),
                timeout_s=settings.ffmpeg_timeout_s,
                threads=settings.decode_threads,
                cut_s=cut_s,
            )
        ):
            faces = by_index.get(start + offset, [])
            if faces:
                boxes = [
                    (
                        (
                            f["box_xyxy"][0] * sx,
                            f["box_xyxy"][1] * sy,
                            f["box_xyxy"][2] * sx,
                            f["box_xyxy"][3] * sy,
                        ),
                        f["shown_emotion"],
                    )
                    for f in faces
                ]
                overlay.draw_yuv420p(frame, width, height, boxes, matrix)
            writer.write(frame)
        frames = writer.close(before_replace=fence)
    except BaseException:
        writer.abort()
        raise
    logger.info(
        "job %s: rendered batch %d (%d frames) in %.0f ms",
        job_id,
        batch_index,
        frames,
        (time.perf_counter() - t0) * 1000,
    )
    return frames


def finish_job(storage: LocalStorage, job_id: str, plan: Plan, settings: WorkerSettings) -> Path:
    """Join our pieces in order, add the original audio, write result.mp4 atomically (faststart)."""
    pieces = [storage.path(job_id, piece_name(i)) for i in range(len(plan.batches))]
    missing = [p.name for p in pieces if not p.exists()]
    if missing:
        raise RuntimeError(f"job {job_id}: pieces {missing} are missing; cannot join")
    target = storage.path(job_id, RESULT)
    t0 = time.perf_counter()
    join_pieces(
        pieces,
        storage.path(job_id, INPUT),
        plan.info.format_name,
        target,
        plan.info.audio_codec if plan.info.has_audio else None,
        tuple(settings.mp4_audio_codecs),
        video_offset_s=max(plan.video_start_s - plan.container_start_s, 0.0),
        timeout_s=settings.ffmpeg_timeout_s,
    )
    logger.info(
        "job %s: joined %d pieces into %s in %.0f ms",
        job_id,
        len(pieces),
        target.name,
        (time.perf_counter() - t0) * 1000,
    )
    return target
