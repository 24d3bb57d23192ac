"""The BlazeFace detector on real images: faces shipped inside installed packages, and the shared photos
labelled by hand (bench/detection_labels.json; skipped without ../shared)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.data import astronaut, coffee

from worker.detection import (
    BLAZEFACE_MODELS,
    BlazeFaceDetector,
    TileScan,
    blazeface_file,
    decode_boxes,
    iou_matrix,
    make_detector,
    sigmoid_scores,
    ssd_anchors,
    weighted_nms,
)
from worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parent.parent
LABELS = REPO / "bench" / "detection_labels.json"
MEDIA = REPO.parent / "shared" / "data" / "media"
# The astronaut's face as a person draws it (forehead to chin, ear to ear) in skimage's 512x512 image.
ASTRONAUT_FACE = (180, 70, 275, 180)


@pytest.fixture(scope="module")
def detector() -> BlazeFaceDetector:
    return make_detector(WorkerSettings())


@pytest.fixture(scope="module")
def astronaut_bgr() -> np.ndarray:
    return np.ascontiguousarray(astronaut()[:, :, ::-1])


def test_finds_the_astronaut_face_and_nothing_else(detector, astronaut_bgr):
    found = detector.detect(astronaut_bgr)
    assert len(found) == 1
    assert iou_matrix(found.xyxy, [ASTRONAUT_FACE])[0, 0] > 0.5
    assert found.scores[0] > 0.8


@pytest.mark.parametrize("model", sorted(BLAZEFACE_MODELS))
def test_no_face_on_a_cup_of_coffee(model):
    assert len(BlazeFaceDetector(model).detect(np.ascontiguousarray(coffee()[:, :, ::-1]))) == 0


def test_grayscale_content_in_a_colour_image_still_works(detector, astronaut_bgr):
    gray = cv2.cvtColor(cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    assert len(detector.detect(gray)) == 1


@pytest.mark.parametrize(("width", "height", "x", "y"), [(1000, 600, 450, 50), (600, 1100, 40, 550)])
def test_boxes_come_back_in_the_frame_pixels_whatever_its_shape(detector, astronaut_bgr, width, height, x, y):
    frame = np.full((height, width, 3), 40, np.uint8)
    frame[y : y + 512, x : x + 512] = astronaut_bgr
    found = detector.detect(frame)
    expected = np.array(ASTRONAUT_FACE) + [x, y, x, y]
    assert len(found) == 1 and iou_matrix(found.xyxy, [expected])[0, 0] > 0.5


def test_tiles_find_a_face_too_small_for_one_pass_and_map_it_back():
    # A 90 px face in a 1920x1080 frame is 9 px in the 192 px whole-frame input: too small (the model needs
    # about 12). In a 1080 px square tile it is 16 px: tiles find it, and the box lands where it was pasted.
    face = cv2.resize(np.ascontiguousarray(astronaut()[:, :, ::-1]), (480, 480), interpolation=cv2.INTER_AREA)
    frame = np.full((1080, 1920, 3), 90, np.uint8)
    frame[500:980, 1300:1780] = face
    expected = np.array(ASTRONAUT_FACE) * 480 / 512 + [1300, 500, 1300, 500]
    assert len(BlazeFaceDetector(tile_rows=0).detect(frame)) == 0
    tiled = BlazeFaceDetector(tile_rows=1).detect(frame)
    assert len(tiled) == 1 and iou_matrix(tiled.xyxy, [expected])[0, 0] > 0.4


class TilesAsked(BlazeFaceDetector):
    """The real detector, noting which tiles each scan asked for."""

    def __init__(self) -> None:
        super().__init__(tile_rows=1)
        self.asked: list[set[int]] = []

    def detect(self, image_bgr, tiles=None):
        self.asked.append(set(range(len(self.tiles(*image_bgr.shape[:2])))) if tiles is None else set(tiles))
        return super().detect(image_bgr, tiles)


def small_face_frame(present: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """1920x1080 with a 90 px face (found only by the rightmost of the three tiles), and where it is."""
    frame = np.full((1080, 1920, 3), 90, np.uint8)
    if present:
        face = cv2.resize(
            np.ascontiguousarray(astronaut()[:, :, ::-1]), (480, 480), interpolation=cv2.INTER_AREA
        )
        frame[500:980, 1300:1780] = face
    return frame, np.array(ASTRONAUT_FACE) * 480 / 512 + [1300, 500, 1300, 500]


def test_detect_scans_only_the_tiles_it_is_given():
    detector = BlazeFaceDetector(tile_rows=1)
    frame, expected = small_face_frame()
    assert len(detector.tiles(1080, 1920)) == 3
    assert len(detector.detect(frame, tiles=[0, 1])) == 0
    found = detector.detect(frame, tiles=[2])
    assert len(found) == 1 and iou_matrix(found.xyxy, [expected])[0, 0] > 0.4
    assert detector.tiles_needed(found.xyxy, 1080, 1920) == {2}
    assert detector.tiles_needed([[0, 0, 600, 600]], 1080, 1920) == set()  # large: the whole frame finds it


def test_tile_scan_discovers_a_small_face_in_turn_then_follows_it_and_lets_go_after_it_leaves():
    spy = TilesAsked()
    scan = TileScan(spy, hold=3)
    with_face, expected = small_face_frame()
    empty, _ = small_face_frame(present=False)
    assert len(scan.scan(empty, 0)) == 0 and spy.asked == [{0, 1, 2}]  # the first scan looks everywhere
    spy.asked.clear()
    counts = [len(scan.scan(with_face, n)) for n in range(1, 6)]
    assert counts == [0, 1, 1, 1, 1]  # tile 2's turn comes at scan 2; from then on it is held
    assert spy.asked == [{1}, {2}, {2, 0}, {2, 1}, {2}]
    spy.asked.clear()
    assert [len(scan.scan(empty, n)) for n in range(6, 11)] == [0] * 5
    assert spy.asked == [{0, 2}, {1, 2}, {2}, {0}, {1}]  # held for 3 scans after the last sighting


def test_tile_scan_finds_small_faces_on_its_first_scan():
    with_face, expected = small_face_frame()
    found = TileScan(BlazeFaceDetector(tile_rows=1)).scan(with_face, 7)
    assert len(found) == 1 and iou_matrix(found.xyxy, [expected])[0, 0] > 0.4


def test_tile_scan_asks_for_the_same_tiles_whatever_scan_it_starts_at():
    with_face, _ = small_face_frame()
    early, late = TilesAsked(), TilesAsked()
    early_scan, late_scan = TileScan(early), TileScan(late)
    for n in range(12):
        early_scan.scan(with_face, n)
        if n >= 4:
            late_scan.scan(with_face, n)
    # Once the late one has had a turn at every tile, both ask the same.
    assert early.asked[4 + 3 :] == late.asked[3:]


def test_a_face_cut_by_the_frame_edge_gets_a_box_clipped_to_the_frame(detector, astronaut_bgr):
    cut = np.ascontiguousarray(astronaut_bgr[:, 215:])  # the left third of the face is outside
    found = detector.detect(cut)
    assert len(found) == 1
    x1, y1, x2, y2 = found.xyxy[0]
    assert x1 == 0 and 0 <= y1 < y2 <= cut.shape[0] and 40 < x2 <= cut.shape[1]


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((0, 10, 3), np.uint8), "non-empty"),
        (np.zeros((100, 100), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((100, 100, 4), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((100, 100, 3), np.float32), "uint8"),
        ([[0, 0, 0]], "numpy"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(detector, image, message):
    with pytest.raises(ValueError, match=message):
        detector.detect(image)


@pytest.mark.parametrize(
    ("model", "anchors"), [("full_range", 48 * 48), ("short_range", 16 * 16 * 2 + 8 * 8 * 6)]
)
def test_anchor_grid_matches_the_model_outputs(model, anchors):
    spec = BLAZEFACE_MODELS[model]
    grid = ssd_anchors(spec)
    assert grid.shape == (anchors, 2)
    first_cell = 0.5 * spec.strides[0] / spec.input_size
    assert grid[0] == pytest.approx([first_cell, first_cell])
    assert grid[-1] == pytest.approx([1 - 0.5 * spec.strides[-1] / spec.input_size] * 2)
    # Row-major: x runs fastest.
    assert grid[1, 1] == grid[0, 1] or spec.anchors_per_cell > 1
    assert BlazeFaceDetector(model).anchors.shape[0] == anchors


def test_box_decoding_centres_on_the_anchor_plus_offset():
    anchors = np.array([[0.25, 0.5], [0.75, 0.75]], np.float32)
    raw = np.zeros((2, 16), np.float32)
    raw[0, :4] = [0, 0, 48, 96]  # no offset, 48x96 input pixels
    raw[1, :4] = [19.2, -19.2, 19.2, 19.2]
    boxes = decode_boxes(raw, anchors, 192)
    assert boxes[0] == pytest.approx([0.125, 0.25, 0.375, 0.75])
    assert boxes[1] == pytest.approx([0.8, 0.6, 0.9, 0.7])
    assert sigmoid_scores(np.array([0.0, 1000.0, -1000.0])) == pytest.approx([0.5, 1.0, 0.0], abs=1e-6)


def test_weighted_nms_averages_overlapping_boxes_by_score():
    boxes = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.3, 0.6], np.float32)
    kept = weighted_nms(boxes, scores, 0.3)
    assert kept.scores.tolist() == pytest.approx([0.9, 0.6])
    assert kept.xyxy[0] == pytest.approx([0.5, 0, 10.5, 10])  # (0*0.9 + 2*0.3) / 1.2
    assert kept.xyxy[1] == pytest.approx([50, 50, 60, 60])


def test_opencv_runs_the_model_as_tensorflow_lite_does_and_decoding_finds_the_face(detector, astronaut_bgr):
    """Anchor decoding checked against the model's own output: TensorFlow Lite's interpreter on the same
    .tflite and letterboxed input gives the same raw tensors, and the best anchor decodes to the face."""
    tf = pytest.importorskip("tensorflow")
    raw_boxes, logits, scale, (left, top) = detector.raw_outputs(astronaut_bgr)
    size = detector.model.input_size
    square = cv2.resize(astronaut_bgr, (size, size), interpolation=cv2.INTER_AREA)
    assert (left, top) == (0, 0) and scale == size / 512
    interpreter = tf.lite.Interpreter(model_path=str(blazeface_file(detector.model.filename)))
    interpreter.allocate_tensors()
    rgb = (square[:, :, ::-1].astype(np.float32) - 127.5) / 127.5
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], rgb[np.newaxis])
    interpreter.invoke()
    outputs = {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}
    tf_boxes = next(v for v in outputs.values() if v.shape[-1] == 16).reshape(-1, 16)
    tf_logits = next(v for v in outputs.values() if v.shape[-1] == 1).reshape(-1)
    assert np.abs(raw_boxes - tf_boxes).max() < 0.05 * np.abs(tf_boxes).max()
    assert np.abs(logits - tf_logits).max() < 0.05 * np.abs(tf_logits).max()
    best = int(np.argmax(tf_logits))
    box = decode_boxes(tf_boxes[best : best + 1], detector.anchors[best : best + 1], size)[0] * 512
    assert iou_matrix([box], [ASTRONAUT_FACE])[0, 0] > 0.5
    # Keypoints 0 and 1 are the eyes: left of and right of the box centre, in its upper half.
    eyes = (tf_boxes[best, 4:8].reshape(2, 2) / size + detector.anchors[best]) * 512
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    assert sorted(eyes[:, 0])[0] < cx < sorted(eyes[:, 0])[1] and np.all(eyes[:, 1] < cy)


def test_make_detector_follows_the_settings():
    settings = WorkerSettings(detect_model="short_range", detect_tile_rows=2, detect_min_score=0.6)
    detector = make_detector(settings)
    assert detector.model.input_size == 128 and detector.tile_rows == 2 and detector.min_score == 0.6
    assert make_detector(settings, tile_rows=settings.live_detect_tile_rows).tile_rows == 0


def labelled_photos() -> list[tuple[str, list[list[float]]]]:
    if not LABELS.exists():
        return []
    data = json.loads(LABELS.read_text())
    return [
        (item["file"], [f["xyxy"] for f in item["faces"]]) for item in data["images"] if "frame" not in item
    ]


@pytest.mark.parametrize(("name", "faces"), labelled_photos())
def test_every_labelled_face_in_the_shared_photos_is_found(detector, name, faces):
    path = MEDIA / name
    if not path.exists():
        pytest.skip(f"{path} is missing (the shared media live outside the repository)")
    image = cv2.imread(str(path))
    found = detector.detect(image)
    height, width = image.shape[:2]
    assert np.all(found.xyxy >= 0) and np.all(found.xyxy[:, [0, 2]] <= width)
    assert np.all(found.xyxy[:, [1, 3]] <= height)
    best = iou_matrix(np.asarray(faces), found.xyxy).max(axis=1, initial=0.0)
    assert np.all(best >= 0.4), f"faces missed in {name}: {np.asarray(faces)[best < 0.4].tolist()}"
