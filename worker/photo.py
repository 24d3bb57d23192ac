"""A photo job: the upload checked again and decoded upright, then analysed and drawn as one video frame is
(worker.batch_pass's detection copy size, scan schedule (its first scan: the fine width), face crop,
classifier, smoother and overlay), and written back in its own format with the same timeline document as a
video's, holding one frame.

Two things differ from a video frame, on purpose. A photo has no second frame, so no face waits for the
tracker's confirmation (`track_min_detections`): every face found gets its emoji, and so a face must score
what an unconfirmed one needs (worker.detection.UNCONFIRMED_MIN_SCORE). And the detector's copy is
shrunk with area averaging (ScanSchedule.scan_frame): a photo is often 4000 px wide, and bilinear shrinking
(cheap enough for video, where it runs on every frame) would skip most of its pixels.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import time
from pathlib import Path

import cv2
import numpy as np

from common import job_files
from common.errors import VideoError
from common.face_crop import crop_faces
from common.images import IMAGE_FORMATS, ImageInfo, ImageLimits, probe_image
from common.media import VideoInfo
from common.storage import LocalStorage
from worker.batch_pass import StageClock, emoji_faces, face_record, scan_schedule
from worker.classifier import EmotionClassifier, classify, model_version
from worker.detection import FaceDetector, unconfirmed_min_score
from worker.overlay import EmojiOverlay, sprite
from worker.plan import Plan
from worker.records import BatchRecord, FrameRecord, write_atomically
from worker.settings import WorkerSettings
from worker.smoothing import EmotionSmoother
from worker.video_io import atomic_target

logger = logging.getLogger(__name__)

JPEG_QUALITY = 92
WEBP_QUALITY = 90


def load_photo(path: Path, limits: ImageLimits):
    """(the photo upright as a Pillow image, RGB or RGBA; its checked header; its ICC profile or None). The
    header is checked before a pixel is decoded, and Pillow's own bomb guard is held to the same limit."""
    from PIL import Image, ImageOps

    info = probe_image(path, limits)
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    with Image.open(path, formats=[IMAGE_FORMATS[info.format].pillow]) as image:
        icc = image.info.get("icc_profile") if image.mode in ("RGB", "RGBA") else None
        try:
            image.load()
        except (OSError, ValueError) as exc:
            raise VideoError(
                f"the photo cannot be decoded ({exc}); it is damaged, upload another copy"
            ) from exc
        upright = ImageOps.exif_transpose(image)
    mode = "RGBA" if info.has_alpha else "RGB"
    return (upright if upright.mode == mode else upright.convert(mode)), info, icc


def analyse_photo(
    bgr: np.ndarray, detector: FaceDetector, classifier: EmotionClassifier, settings: WorkerSettings
) -> FrameRecord:
    """The photo's faces, emotions and emoji, found as a video's first frame would be (see the module)."""
    found = scan_schedule(detector, settings).scan_frame(bgr, 0)
    sure = found.scores >= unconfirmed_min_score(settings)
    boxes, scores = np.asarray(found.xyxy[sure], np.float64), found.scores[sure]
    # Person ids left to right, as people read a group photo.
    order = np.argsort((boxes[:, 0] + boxes[:, 2]) / 2, kind="stable")
    boxes, scores = boxes[order], scores[order]
    probabilities = classify(classifier, crop_faces(bgr, boxes), settings.predict_batch)
    smoother = EmotionSmoother(settings.smoothing_ms, settings.hysteresis_margin, settings.hysteresis_hold_ms)
    faces = [
        face_record(track, box, score, True, raw, smoother, 0.0)
        for track, (box, score, raw) in enumerate(zip(boxes, scores, probabilities, strict=True), start=1)
    ]
    return FrameRecord(index=0, t_ms=0.0, faces=faces)


def bgr_of(image) -> tuple[np.ndarray, np.ndarray | None]:
    """A Pillow RGB or RGBA image as (BGR array, alpha or None): what the detector and the overlay take."""
    pixels = np.asarray(image)
    if pixels.shape[2] == 4:
        return cv2.cvtColor(pixels, cv2.COLOR_RGBA2BGR), np.ascontiguousarray(pixels[:, :, 3])
    return cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), None


def draw_photo(
    overlay: EmojiOverlay, bgr: np.ndarray, alpha: np.ndarray | None, frame: FrameRecord
) -> np.ndarray:
    """The photo with its emoji: `bgr` drawn on in place, or with transparency a BGRA copy where the emoji is
    composited over the photo's own alpha, so a badge over a transparent corner stays visible."""
    faces = emoji_faces(frame.faces)
    if alpha is None:
        return overlay.draw_bgr(bgr, faces)
    bgra = np.dstack([bgr, alpha])
    height, width = bgra.shape[:2]
    for (_, emotion), (x, y, side) in zip(
        faces, overlay.placements([b for b, _ in faces], (width, height)), strict=True
    ):
        composite_over(bgra, sprite(emotion, side, "bgr", overlay.emoji_dir), x, y)
    return bgra


def composite_over(bgra: np.ndarray, icon, x: int, y: int) -> None:
    """Porter-Duff "over" of a sprite onto a BGRA image with straight alpha, on the sprite's region only."""
    height, width = bgra.shape[:2]
    side = icon.colour.shape[0]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + side, width), min(y + side, height)
    if x1 <= x0 or y1 <= y0:
        return
    region = bgra[y0:y1, x0:x1].astype(np.float32)
    a = icon.alpha[y0 - y : y1 - y, x0 - x : x1 - x]
    colour = icon.colour[y0 - y : y1 - y, x0 - x : x1 - x]
    below = region[:, :, 3:4] / 255.0
    out_alpha = a + below * (1 - a)
    out = (colour * a + region[:, :, :3] * below * (1 - a)) / np.maximum(out_alpha, 1e-6)
    bgra[y0:y1, x0:x1, :3] = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    bgra[y0:y1, x0:x1, 3] = np.clip(out_alpha[:, :, 0] * 255 + 0.5, 0, 255).astype(np.uint8)


def save_photo(drawn_bgr: np.ndarray, info: ImageInfo, icc: bytes | None, target: Path) -> None:
    """Write the drawn photo in the upload's format, upright, with no metadata but its colour profile (no
    EXIF: no camera, place or time; the orientation is already in the pixels)."""
    from PIL import Image

    mode, raw = ("RGBA", "BGRA") if drawn_bgr.shape[2] == 4 else ("RGB", "BGR")
    height, width = drawn_bgr.shape[:2]
    # Pillow reads the BGR(A) bytes as they are: no whole-image copy to reorder the channels.
    image = Image.frombuffer(mode, (width, height), np.ascontiguousarray(drawn_bgr), "raw", raw, 0, 1)
    options: dict = {"icc_profile": icc} if icc else {}
    if info.format == "jpeg":
        options |= {"quality": JPEG_QUALITY}
    elif info.format in ("webp", "heif"):
        options |= {"quality": WEBP_QUALITY}
    temporary = atomic_target(target)
    try:
        image.save(temporary, format=IMAGE_FORMATS[info.format].pillow, **options)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def photo_plan(info: ImageInfo) -> Plan:
    """The plan of a one-frame "video", so the timeline is written by the same code as a video's: the photo
    is one frame at 0 ms shown for one second (face time and shares read as for a video)."""
    video = VideoInfo(
        width=info.width,
        height=info.height,
        fps=1.0,
        frames=1,
        duration_s=1.0,
        has_audio=False,
        audio_codec=None,
        video_codec=info.format,
        format_name=info.format,
    )
    return Plan(
        info=video,
        timestamps_ms=[0.0],
        keyframes=[0],
        batches=[(0, 1)],
        video_start_s=0.0,
        container_start_s=0.0,
        output_size=(info.width, info.height),
    )


def run_photo(
    storage: LocalStorage,
    job_id: str,
    detector: FaceDetector,
    classifier: EmotionClassifier,
    overlay: EmojiOverlay,
    settings: WorkerSettings,
) -> tuple[ImageInfo, Plan, BatchRecord]:
    """Check, decode, analyse and draw the job's photo: writes result.<ext> and batches/00000.json (the
    caller writes the timeline from it)."""
    started, usage, clock = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF), StageClock()
    image, info, icc = load_photo(storage.path(job_id, job_files.INPUT), ImageLimits.from_settings(settings))
    bgr, alpha = bgr_of(image)
    clock.lap("decode")
    frame = analyse_photo(bgr, detector, classifier, settings)
    clock.lap("analyse")
    drawn = draw_photo(overlay, bgr, alpha, frame)
    clock.lap("draw")
    save_photo(drawn, info, icc, storage.path(job_id, job_files.photo_result(info.format)))
    clock.lap("encode")
    now = resource.getrusage(resource.RUSAGE_SELF)
    cpu = {
        **{k: round(v, 4) for k, v in clock.cpu_s.items()},
        "total": round(now.ru_utime + now.ru_stime - usage.ru_utime - usage.ru_stime, 4),
    }
    record = BatchRecord(
        batch_index=0,
        start=0,
        end=1,
        preroll=[],
        frames=[frame],
        model_version=model_version(classifier) if frame.faces else None,
        crops=len(frame.faces),
        cpu_s=cpu,
        wall_s=round(time.perf_counter() - started, 3),
        peak_rss_mib=round(now.ru_maxrss / 1024, 1),
        worker=f"{socket.gethostname()}:{os.getpid()}",
    )
    write_atomically(storage.path(job_id, job_files.batch_record(0)), record.model_dump_json())
    logger.info(
        "job %s: %s photo %dx%d, %d faces in %.2f s wall (%s)",
        job_id,
        info.format,
        info.width,
        info.height,
        len(frame.faces),
        record.wall_s,
        ", ".join(f"{k} {v:.3f}" for k, v in cpu.items()),
    )
    return info, photo_plan(info), record
