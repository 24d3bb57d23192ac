"""Face detection: the `FaceDetector` protocol and YuNet run by OpenCV's own `cv2.FaceDetectorYN`.

YuNet (Wu, Peng, Yu, "YuNet: A Tiny Millisecond-level Face Detector", 2023; trained on WIDER FACE) gives a
box, a score and five landmarks per face. Its ONNX file ships in worker/models/ (origin and licences in
NOTICE and worker/models/SOURCE.md); its sha256 is checked when it is loaded.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceBoxes:
    """Faces in one image: boxes float32 [N, 4] xyxy in that image's pixels, scores float32 [N] in 0..1."""

    xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    # Five points per face [N, 5, 2] (x, y): the person's right eye, left eye, nose tip, right and left mouth
    # corner (YuNet's order); None where the detector gives none.
    landmarks: np.ndarray | None = None

    def __post_init__(self) -> None:
        xyxy = (
            np.asarray(self.xyxy, np.float32).reshape(-1, 4)
            if np.size(self.xyxy)
            else np.zeros((0, 4), np.float32)
        )
        scores = np.asarray(self.scores, np.float32).reshape(-1)
        if len(scores) != len(xyxy):
            raise ValueError(f"expected one score per box: {len(xyxy)} boxes, {len(scores)} scores")
        if len(xyxy) and np.any(xyxy[:, 2:] <= xyxy[:, :2]):
            raise ValueError(f"expected boxes with x2 > x1 and y2 > y1, got {xyxy.tolist()}")
        if self.landmarks is not None:
            landmarks = np.asarray(self.landmarks, np.float32).reshape(-1, 5, 2)
            if len(landmarks) != len(xyxy):
                raise ValueError(f"expected five landmarks per box: {len(xyxy)} boxes, {len(landmarks)} sets")
            object.__setattr__(self, "landmarks", landmarks)
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "scores", scores)

    def __len__(self) -> int:
        return len(self.scores)

    def scaled(self, factor: float) -> FaceBoxes:
        landmarks = None if self.landmarks is None else self.landmarks * factor
        return FaceBoxes(self.xyxy * factor, self.scores, landmarks)

    def clipped(self, width: float, height: float) -> FaceBoxes:
        """The boxes cut to a `width` x `height` image, those left under a pixel wide or high dropped (a box
        scaled up from a small copy can overshoot the frame by the rounding of the copy's size)."""
        xyxy = np.clip(self.xyxy, 0, np.array([width, height, width, height], np.float32))
        inside = np.all(xyxy[:, 2:] - xyxy[:, :2] >= 1, axis=1)
        landmarks = None if self.landmarks is None else self.landmarks[inside]
        return FaceBoxes(xyxy[inside], self.scores[inside], landmarks)

    @property
    def eyes(self) -> np.ndarray | None:
        """[N, 2, 2]: each face's (right eye, left eye) as (x, y), or None without landmarks."""
        return None if self.landmarks is None else self.landmarks[:, :2]


class FaceDetector(Protocol):
    def detect(self, image_bgr: np.ndarray) -> FaceBoxes:
        """Faces in a uint8 BGR image (H, W, 3) of any size, boxes in its pixels, clipped to it."""


def check_bgr(image: np.ndarray) -> None:
    """Raise ValueError unless `image` is a non-empty uint8 (H, W, 3) array."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected a numpy uint8 BGR image (H, W, 3), got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 BGR image, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a BGR image of shape (H, W, 3), got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected a non-empty image, got shape {image.shape}")


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in `a` [N,4] with every box in `b` [M,4] (xyxy)."""
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)), np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-6)


# The checksum guards against a damaged or swapped file, which would otherwise detect worse without saying so.
MODELS_DIR = Path(__file__).resolve().parent / "models"


@dataclass(frozen=True)
class YuNetModel:
    filename: str
    sha256: str


YUNET_MODELS = {
    # 75,856 parameters; WIDER FACE val AP 0.892 / 0.883 / 0.811 (easy / medium / hard).
    "yunet_n": YuNetModel(
        "yunet_n_640_640.onnx", "25a606a145a5b6d7271ae138fbd00eba91dad8b83222ae3f2c7ecd0f4a7b0e31"
    ),
    # 54,608 parameters; AP 0.887 / 0.871 / 0.768; OpenCV Zoo's face_detection_yunet_2023mar.onnx.
    "yunet_s": YuNetModel(
        "yunet_s_640_640.onnx", "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
    ),
}


# The size the worker ships and runs (worker/models/; chosen by bench/bench_detection.py, docs/benchmarks.md).
DETECTOR_MODEL = "yunet_n"


def checked_model_file(path: Path, sha256: str) -> Path:
    """`path`, once its sha256 is the expected one; RuntimeError saying what to do otherwise."""
    if not path.is_file():
        raise RuntimeError(
            f"face detector model {path} is missing: it ships in the repository (worker/models/)"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise RuntimeError(
            f"face detector model {path} has sha256 {digest}, expected {sha256}: the file is damaged or "
            "not the one this code was measured with; restore it from the repository "
            "(git checkout worker/models)"
        )
    return path


def shipped_model_file() -> Path:
    """The worker's model file, checked (the worker calls this when it starts, so a damaged or swapped file
    stops it there with what to do, not at its first job)."""
    spec = YUNET_MODELS[DETECTOR_MODEL]
    return checked_model_file(MODELS_DIR / spec.filename, spec.sha256)


class YuNetDetector:
    """YuNet through cv2.FaceDetectorYN on the whole image, shrunk to at most `width` pixels wide: boxes,
    scores and five landmarks per face. The network is fully convolutional: it runs at the image's own size,
    no letterbox, no tiles."""

    def __init__(
        self,
        model: str = "yunet_n",
        min_score: float = 0.6,
        nms_iou: float = 0.3,
        width: int = 640,
        path: Path | None = None,
    ) -> None:
        if model not in YUNET_MODELS:
            raise ValueError(f"model must be one of {sorted(YUNET_MODELS)}, got {model!r}")
        if not 0 < min_score < 1:
            raise ValueError(f"min_score must be in (0, 1), got {min_score}")
        if not 0 < nms_iou < 1:
            raise ValueError(f"nms_iou must be in (0, 1), got {nms_iou}")
        if width < 32:
            raise ValueError(f"width must be 32 or more, got {width}")
        spec = YUNET_MODELS[model]
        self.path = checked_model_file(path or MODELS_DIR / spec.filename, spec.sha256)
        self.min_score, self.nms_iou, self.width = min_score, nms_iou, width
        self.net = cv2.FaceDetectorYN.create(str(self.path), "", (width, width), min_score, nms_iou, 5000)
        self.input_size = (width, width)

    def detect(self, image_bgr: np.ndarray) -> FaceBoxes:
        check_bgr(image_bgr)
        height, width = image_bgr.shape[:2]
        scale = min(1.0, self.width / width)
        if scale < 1:
            size = (self.width, max(1, round(height * scale)))
            image_bgr = cv2.resize(image_bgr, size, interpolation=cv2.INTER_AREA)
        size = (image_bgr.shape[1], image_bgr.shape[0])
        if size != self.input_size:  # the priors are rebuilt for each new size: only when it changes
            self.net.setInputSize(size)
            self.input_size = size
        _, rows = self.net.detect(image_bgr)
        if rows is None or not len(rows):
            return FaceBoxes()
        rows = np.asarray(rows, np.float32)
        points = rows[:, :14] / scale
        xyxy = np.concatenate([points[:, :2], points[:, :2] + points[:, 2:4]], axis=1)
        return FaceBoxes(xyxy, rows[:, 14], points[:, 4:14].reshape(-1, 5, 2)).clipped(width, height)


# Where no tracker confirms a faint face over several scans (a photo, a live frame answered at once), a face
# must score this much. Between the videos' detect_min_score (0.5) and this, YuNet's boxes on the labelled
# set were faint far faces and small patterns in about equal numbers (docs/benchmarks.md).
UNCONFIRMED_MIN_SCORE = 0.6


def unconfirmed_min_score(settings) -> float:
    return max(settings.detect_min_score, UNCONFIRMED_MIN_SCORE)


def make_detector(settings, width: int | None = None, confirmed: bool = True) -> FaceDetector:
    """The configured face detector, on as many OpenCV threads as the settings say (one per worker process:
    the pool's processes already share the cores). It never shrinks what the worker's `ScanSchedule` hands
    it (at most `detect_fine_width` wide); `width` caps it lower (the live path scans webcam frames, whose
    faces are large, smaller). Without a tracker to confirm them (`confirmed` False) faint faces are left out.
    """
    cv2.setNumThreads(settings.opencv_threads)
    width = settings.fine_scan_width if width is None else width
    min_score = settings.detect_min_score if confirmed else unconfirmed_min_score(settings)
    return YuNetDetector(DETECTOR_MODEL, min_score, width=width)


# Scans narrower than this are not worth making: YuNet's priors and the resize cost more than they save.
MIN_SCAN_WIDTH = 128


class ScanSchedule:
    """Chooses how wide each scan of one video's frames is, and runs it.

    YuNet's cost grows with the pixels scanned, and it finds a face `min_side` pixels high about as surely
    as a larger one. So each scan is the narrowest of a quarter, half, all of `width`, or `fine_width`, at
    which the smallest face of the scan before would still be `min_side` pixels high: a close-up is scanned
    at a quarter of the width (a sixteenth of the pixels), a crowd whose faces are too small for `width` at
    `fine_width`. A
    scan that found nothing is at half width. Every `full_every`-th scan number is at least `width`, so a
    new face smaller than those in view is found within that many scans, and the first scan of a run is at
    `fine_width` (faces from the first frame). The turn follows the scan's number, not a count kept here, so
    every batch scans the same frames the same way once its pre-roll has warmed it up.

    `scan_frame` does it all for a BGR frame. The video worker instead asks `width_for`, converts the
    decoded planes straight to that width, and hands the copy to `scan`.
    """

    def __init__(
        self,
        detector: FaceDetector,
        width: int = 640,
        fine_width: int = 960,
        full_every: int = 5,
        min_side: float = 30.0,
    ) -> None:
        if full_every < 1:
            raise ValueError(f"full_every must be 1 or more, got {full_every}")
        if not MIN_SCAN_WIDTH <= width <= fine_width:
            raise ValueError(f"expected {MIN_SCAN_WIDTH} <= width <= fine_width, got {width}, {fine_width}")
        self.detector, self.full_every, self.min_side = detector, full_every, min_side
        self.width, self.fine_width = width, fine_width
        self.first = True
        # The smallest face of the last scan, its side as a fraction of the frame's width (None: no face).
        self.smallest: float | None = None

    def width_for(self, number: int, frame_width: int) -> int:
        """The width to scan scan number `number` at, for frames `frame_width` pixels wide (never wider)."""
        fine, base = min(frame_width, self.fine_width), min(frame_width, self.width)
        if self.first:
            return fine
        ladder = [w for w in (base // 4, base // 2) if w >= MIN_SCAN_WIDTH] + [base, fine]
        needed = base // 2 if self.smallest is None else self.min_side / self.smallest
        if number % self.full_every == 0:
            needed = max(needed, base)
        return next((w for w in ladder if w >= needed), fine)

    def continue_from(self, smallest: float | None) -> None:
        """Take up a run whose last scan's smallest face was `smallest` high, as a fraction of the frame's
        width (None: it found none); the live path does so with a client's faces of its last frame."""
        self.first, self.smallest = False, smallest

    def scan_frame(self, image_bgr: np.ndarray, number: int) -> FaceBoxes:
        """The faces in a whole BGR frame, scan number `number`, shrunk (area averaging: a photo may be
        4000 px wide) to the width this scan is due; boxes and landmarks in the frame's pixels."""
        height, width = image_bgr.shape[:2]
        scan_width = self.width_for(number, width)
        copy = image_bgr
        if scan_width != width:
            size = (scan_width, max(1, round(height * scan_width / width)))
            copy = cv2.resize(image_bgr, size, interpolation=cv2.INTER_AREA)
        return self.scan(copy).scaled(width / scan_width).clipped(width, height)

    def scan(self, image_bgr: np.ndarray) -> FaceBoxes:
        """The faces in `image_bgr`, a copy of the frame made `width_for` wide; boxes in its pixels."""
        found = self.detector.detect(image_bgr)
        sides = np.minimum(found.xyxy[:, 2] - found.xyxy[:, 0], found.xyxy[:, 3] - found.xyxy[:, 1])
        self.first = False
        self.smallest = float(sides.min()) / image_bgr.shape[1] if len(sides) else None
        return found
