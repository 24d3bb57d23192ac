"""Face detection: the `FaceDetector` protocol and the OpenCV Haar-cascade implementation."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceBoxes:
    """Faces in one image: boxes float32 [N, 4] xyxy in that image's pixels, scores float32 [N] in 0..1."""

    xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))

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
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "scores", scores)

    def __len__(self) -> int:
        return len(self.scores)

    def scaled(self, factor: float) -> FaceBoxes:
        return FaceBoxes(self.xyxy * factor, self.scores)


class FaceDetector(Protocol):
    def detect(self, image_bgr: np.ndarray) -> FaceBoxes:
        """Faces in a BGR image (H, W, 3) uint8 of any size, boxes in its pixels."""

    def detect_near(self, gray: np.ndarray, boxes_xyxy: np.ndarray) -> FaceBoxes:
        """Faces close to known boxes (a cheap search near where faces were); may miss new faces."""


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


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.3) -> np.ndarray:
    """Indices of the boxes to keep, best score first; a box overlapping a kept one is dropped."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    for i in order:
        if not keep or iou_matrix(boxes[i : i + 1], boxes[keep]).max() < iou_threshold:
            keep.append(int(i))
    return np.asarray(keep, np.int64)


# Faces searched near a known box are scaled to about this size: big enough for the cascade, and cheap.
NEAR_FACE_PX = 48


class HaarFaceDetector:
    """OpenCV Haar cascades on a downscaled, equalized copy of the frame.

    Whole-frame scans use the frontal cascade (and the profile cascades if `profiles`); searches near a known
    face also try the face turned by `tilt_angles` and, if `near_profiles`, the profile cascades, so a person
    who tilts or turns their head keeps being found at little cost.
    """

    def __init__(
        self,
        detect_width: int = 640,
        min_face_fraction: float = 0.04,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        profiles: bool = False,
        near_profiles: bool = True,
        min_face_px: int = 20,
        tilt_angles: tuple[float, ...] = (0.0, 25.0, -25.0),
        frontal_cascade: str = "haarcascade_frontalface_alt2.xml",
    ) -> None:
        if detect_width < 64:
            raise ValueError(f"detect_width must be at least 64 px, got {detect_width}")
        if not 0 < min_face_fraction < 1:
            raise ValueError(f"min_face_fraction must be in (0, 1), got {min_face_fraction}")
        if not 1 < scale_factor < 2:
            raise ValueError(f"scale_factor must be in (1, 2), got {scale_factor}")
        self.detect_width = detect_width
        self.min_face_px = min_face_px
        self.tilt_angles = tuple(tilt_angles) or (0.0,)
        self.min_face_fraction = min_face_fraction
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.frontal = self._load(frontal_cascade)
        self.profiles = profiles
        self.near_profiles = near_profiles
        self.profile = self._load("haarcascade_profileface.xml")

    @classmethod
    def from_settings(cls, settings) -> HaarFaceDetector:
        return cls(
            detect_width=settings.detect_width,
            min_face_fraction=settings.min_face_fraction,
            scale_factor=settings.detect_scale_factor,
            min_neighbors=settings.detect_min_neighbors,
            profiles=settings.detect_profiles,
            near_profiles=settings.detect_near_profiles,
            min_face_px=settings.min_face_px,
            tilt_angles=(0.0, *[a for t in settings.tilt_angles for a in (t, -t)]),
            frontal_cascade=settings.frontal_cascade,
        )

    @staticmethod
    def _load(name: str) -> cv2.CascadeClassifier:
        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + name)
        if cascade.empty():
            raise RuntimeError(f"OpenCV could not load {name} from {cv2.data.haarcascades}")
        return cascade

    def _run(
        self, cascade: cv2.CascadeClassifier, image: np.ndarray, min_side: int, max_side: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        rects, neighbours = cascade.detectMultiScale2(
            image,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(min_side, min_side),
            maxSize=(max_side, max_side),
        )
        if len(rects) == 0:
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
        rects = np.asarray(rects, np.float32)
        boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
        n = np.asarray(neighbours, np.float32).reshape(-1)
        # Haar has no probability; more agreeing neighbour windows means a surer face.
        return boxes, n / (n + self.min_neighbors)

    def detect(self, gray: np.ndarray) -> FaceBoxes:
        """Faces in a BGR image (H, W, 3) or a grayscale one (H, W), boxes in its pixels."""
        if gray.ndim == 3 and gray.shape[2] == 3:
            gray = cv2.cvtColor(gray, cv2.COLOR_BGR2GRAY)
        if gray.ndim != 2:
            raise ValueError(f"expected a BGR or grayscale image, got shape {gray.shape}")
        height, width = gray.shape
        scale = min(1.0, self.detect_width / width)
        small = (
            gray
            if scale == 1.0
            else cv2.resize(gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        )
        small = cv2.equalizeHist(small)
        min_side = max(self.min_face_px, round(min(small.shape) * self.min_face_fraction))
        return self._detect_all(small, min_side, 0, self.profiles).scaled(1.0 / scale)

    def _detect_all(
        self, small: np.ndarray, min_side: int, max_side: int = 0, profiles: bool = False
    ) -> FaceBoxes:
        boxes, scores = self._run(self.frontal, small, min_side, max_side)
        if profiles:
            # The profile cascade only knows left-looking faces; the mirror finds right-looking ones.
            left, left_scores = self._run(self.profile, small, min_side, max_side)
            right, right_scores = self._run(self.profile, small[:, ::-1].copy(), min_side, max_side)
            if len(right):
                right = np.stack(
                    [small.shape[1] - right[:, 2], right[:, 1], small.shape[1] - right[:, 0], right[:, 3]],
                    axis=1,
                )
            # Profiles rank below frontal hits of equal support so overlapping frontal boxes win.
            boxes = np.concatenate([boxes, left, right])
            scores = np.concatenate([scores, left_scores * 0.9, right_scores * 0.9])
            if len(boxes) > 1:
                keep = non_max_suppression(boxes, scores)
                boxes, scores = boxes[keep], scores[keep]
        return FaceBoxes(boxes, scores)

    def _detect_tilted(self, roi: np.ndarray, min_side: int, max_side: int) -> FaceBoxes:
        """Faces in a small window, upright first, then with the window turned (heads tilt; Haar does not)."""
        for angle in self.tilt_angles:
            if angle == 0:
                found = self._detect_all(roi, min_side, max_side)
            else:
                centre = (roi.shape[1] / 2, roi.shape[0] / 2)
                matrix = cv2.getRotationMatrix2D(centre, angle, 1.0)
                turned = cv2.warpAffine(
                    roi, matrix, (roi.shape[1], roi.shape[0]), borderMode=cv2.BORDER_REPLICATE
                )
                found = self._detect_all(turned, min_side, max_side)
                if len(found):
                    # Back to the upright window: turn each box's centre back, keep its size.
                    inverse = cv2.invertAffineTransform(matrix)
                    centres = (found.xyxy[:, :2] + found.xyxy[:, 2:]) / 2
                    centres = centres @ inverse[:, :2].T + inverse[:, 2]
                    half = (found.xyxy[:, 2:] - found.xyxy[:, :2]) / 2
                    found = FaceBoxes(
                        np.concatenate([centres - half, centres + half], axis=1), found.scores * 0.95
                    )
            if len(found):
                return found
        if self.near_profiles:
            return self._detect_all(roi, min_side, max_side, profiles=True)
        return FaceBoxes()

    def detect_near(self, gray: np.ndarray, boxes_xyxy: np.ndarray) -> FaceBoxes:
        # Each known face is searched in a window twice its size, scaled so the face is ~NEAR_FACE_PX, over a
        # narrow range of sizes: a few hundred windows instead of the whole frame's many thousands.
        height, width = gray.shape
        found_boxes, found_scores = [], []
        for x1, y1, x2, y2 in np.asarray(boxes_xyxy, np.float64).reshape(-1, 4):
            side = max(x2 - x1, y2 - y1)
            if side <= 0:
                continue
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            rx1, ry1 = int(max(cx - side, 0)), int(max(cy - side, 0))
            rx2, ry2 = int(min(cx + side, width)), int(min(cy + side, height))
            if rx2 - rx1 < 8 or ry2 - ry1 < 8:
                continue
            scale = min(1.0, NEAR_FACE_PX / side)
            roi = gray[ry1:ry2, rx1:rx2]
            if scale < 1.0:
                roi = cv2.resize(
                    roi,
                    (max(1, round(roi.shape[1] * scale)), max(1, round(roi.shape[0] * scale))),
                    interpolation=cv2.INTER_AREA,
                )
            roi = cv2.equalizeHist(roi)
            expected = side * scale
            min_side = max(20, int(expected * 0.6))
            max_side = int(expected * 1.5) + 1
            found = self._detect_tilted(roi, min_side, max_side)
            if len(found):
                found_boxes.append(found.xyxy / scale + np.array([rx1, ry1, rx1, ry1], np.float32))
                found_scores.append(found.scores)
        if not found_boxes:
            return FaceBoxes()
        boxes, scores = np.concatenate(found_boxes), np.concatenate(found_scores)
        keep = non_max_suppression(boxes, scores)
        return FaceBoxes(boxes[keep], scores[keep])
