"""One webcam frame: decode, detect, classify, track and smooth per client (state in Redis, so any live
worker can serve any frame of any client)."""

from __future__ import annotations

import base64
import binascii
import json
import re
import time

import cv2
import numpy as np
import redis

from common.classes import EMOTIONS
from common.errors import VideoError
from common.face_crop import crop_faces
from common.jpeg import JpegHeaderError, check_frame_size
from worker.classifier import EmotionClassifier, classify
from worker.detection import MIN_SCAN_WIDTH, FaceBoxes, FaceDetector, ScanSchedule
from worker.settings import WorkerSettings
from worker.smoothing import EmotionSmoother
from worker.tracking import IouTracker

STATE_PREFIX = "emoji:live:"
# A client's faces found this recently stand in for "the scan before" when its next frame's width is chosen.
RECENT_MS = 250.0
# Every this-many-th frame of a client is scanned at the full live width, to find a new face smaller than
# those in view (about a second at 25 frames a second): rarer than 1 in 20, so the p95 latency is that of
# the half-width scans.
LIVE_FULL_EVERY = 25
CLIENT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def decode_jpeg(jpeg_b64: str, max_bytes: int, max_pixels: int) -> np.ndarray:
    """The frame as BGR (the detector needs colour); VideoError if it is not a JPEG or declares more than
    `max_pixels` pixels (checked on its header, before decoding)."""
    if not isinstance(jpeg_b64, str) or not jpeg_b64:
        raise VideoError("send the frame as a base64-encoded JPEG string")
    if jpeg_b64.startswith("data:"):
        jpeg_b64 = jpeg_b64.partition(",")[2]
    if len(jpeg_b64) > max_bytes * 4 // 3 + 4:
        raise VideoError(f"the frame is larger than {max_bytes} bytes; send a smaller JPEG")
    try:
        data = base64.b64decode(jpeg_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VideoError("the frame is not valid base64; send a base64-encoded JPEG") from exc
    try:
        check_frame_size(data, max_pixels)
    except JpegHeaderError as exc:
        raise VideoError(str(exc)) from exc
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:  # OpenCV's own size cap (worker/__init__.py), should the header check miss
        raise VideoError("the frame is too large for the decoder; send JPEGs of about 640x480") from exc
    if image is None:
        raise VideoError("the frame is not an image OpenCV can read; send a JPEG")
    return image


def scan_live_frame(
    detector: FaceDetector, image: np.ndarray, tracker: IouTracker, count: int, now_ms: float, width: int
) -> FaceBoxes:
    """Faces in one webcam frame, scanned as a video's frames are (worker.detection.ScanSchedule) with the
    client's faces of its last frames standing in for the scan before: at half of `width` while every face
    in view is large, at all of it on a client's first frame, on every LIVE_FULL_EVERY-th, and while a face
    is small."""
    width = max(MIN_SCAN_WIDTH, min(width, image.shape[1]))
    scanner = ScanSchedule(detector, width=width, fine_width=width, full_every=LIVE_FULL_EVERY)
    if count:
        recent = [track.box for track in tracker.tracks if now_ms - track.last_ms <= RECENT_MS]
        sides = [min(box[2] - box[0], box[3] - box[1]) for box in recent]
        scanner.continue_from(min(sides) / image.shape[1] if sides else None)
    return scanner.scan_frame(image, count)


def process_frame(
    client_id: str,
    jpeg_b64: str,
    client: redis.Redis,
    detector: FaceDetector,
    classifier: EmotionClassifier,
    settings: WorkerSettings,
    now_ms: float | None = None,
) -> dict:
    """The live-frame result contract: size, faces with person ids and shown emotion, timings."""
    if not isinstance(client_id, str) or not CLIENT_ID.fullmatch(client_id):
        raise VideoError("client_id must be 1-128 letters, digits or _.:-")
    t0 = time.perf_counter()
    image = decode_jpeg(jpeg_b64, settings.live_max_jpeg_bytes, settings.live_max_frame_pixels)
    t1 = time.perf_counter()
    now_ms = time.time() * 1000.0 if now_ms is None else now_ms
    key = STATE_PREFIX + client_id
    tracker, smoother, count = _load_client_state(client, key, settings)
    t1b = time.perf_counter()
    # A whole-frame scan on every frame (a few ms): no need to follow faces between scans.
    found = scan_live_frame(detector, image, tracker, count, now_ms, settings.live_detect_width)
    t2 = time.perf_counter()
    probabilities = classify(classifier, crop_faces(image, found.xyxy), settings.predict_batch)
    t3 = time.perf_counter()
    ids = tracker.update(found.xyxy, now_ms)
    faces = [
        _face_entry(person_id, box, score, probs, smoother.update(person_id, probs, now_ms)[1])
        for person_id, box, score, probs in zip(ids, found.xyxy, found.scores, probabilities, strict=False)
    ]
    smoother.forget_older_than(now_ms - settings.track_max_miss_ms)
    client.set(
        key,
        json.dumps({"tracker": tracker.to_dict(), "smoother": smoother.to_dict(), "count": count + 1}),
        ex=settings.live_state_ttl_s,
    )
    t4 = time.perf_counter()
    return {
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "faces": faces,
        "timings_ms": {
            "decode": round((t1 - t0) * 1000, 2),
            "detect": round((t2 - t1b) * 1000, 2),
            "classify": round((t3 - t2) * 1000, 2),
            "total": round((t4 - t0) * 1000, 2),
        },
    }


def _load_client_state(
    client: redis.Redis, key: str, settings: WorkerSettings
) -> tuple[IouTracker, EmotionSmoother, int]:
    """This client's tracker, smoother and frame count from Redis (fresh ones for a new client)."""
    tracker = IouTracker(min_iou=settings.track_min_iou, max_miss_ms=settings.track_max_miss_ms)
    smoother = EmotionSmoother(settings.smoothing_ms, settings.hysteresis_margin, settings.hysteresis_hold_ms)
    count = 0
    raw_state = client.get(key)
    if raw_state:
        state = json.loads(raw_state)
        tracker.load_state(state.get("tracker", {}))
        smoother.load_state(state.get("smoother", {}))
        count = int(state.get("count", 0))
    return tracker, smoother, count


def _face_entry(person_id: int, box: np.ndarray, score: float, probs: np.ndarray, shown: int) -> dict:
    """One face of the result: its person id, box, score, raw and shown emotion, probabilities."""
    return {
        "person_id": int(person_id),
        "box_xyxy": [round(float(v), 1) for v in box],
        "score": round(float(score), 4),
        "emotion": EMOTIONS[int(np.argmax(probs))],
        "probabilities": {e: round(float(p), 4) for e, p in zip(EMOTIONS, probs, strict=False)},
        "shown_emotion": EMOTIONS[shown],
    }
