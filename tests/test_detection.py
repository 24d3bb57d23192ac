"""The YuNet detector on real images: faces shipped inside installed packages, and the shared photos
labelled by hand (bench/detection_labels.json; skipped without ../shared)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.data import astronaut, coffee

from worker.detection import (
    DETECTOR_MODEL,
    MODELS_DIR,
    YUNET_MODELS,
    FaceBoxes,
    ScanSchedule,
    YuNetDetector,
    iou_matrix,
    make_detector,
    shipped_model_file,
)
from worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parent.parent
LABELS = REPO / "bench" / "detection_labels.json"
MEDIA = REPO.parent / "shared" / "data" / "media"
# The astronaut's face as a person draws it (forehead to chin, ear to ear) in skimage's 512x512 image.
ASTRONAUT_FACE = (180, 70, 275, 180)


@pytest.fixture(scope="module")
def detector() -> YuNetDetector:
    return make_detector(WorkerSettings())


@pytest.fixture(scope="module")
def astronaut_bgr() -> np.ndarray:
    return np.ascontiguousarray(astronaut()[:, :, ::-1])


def test_finds_the_astronaut_face_and_nothing_else(detector, astronaut_bgr):
    found = detector.detect(astronaut_bgr)
    assert len(found) == 1
    assert iou_matrix(found.xyxy, [ASTRONAUT_FACE])[0, 0] > 0.5
    assert found.scores[0] > 0.8


def test_the_five_landmarks_are_where_the_face_has_them(detector, astronaut_bgr):
    found = detector.detect(astronaut_bgr)
    right_eye, left_eye, nose, mouth_right, mouth_left = found.landmarks[0]
    x1, y1, x2, y2 = found.xyxy[0]
    assert np.all((found.landmarks[0] > [x1, y1]) & (found.landmarks[0] < [x2, y2]))
    # The person's right eye is on the image's left; eyes in the upper half, level (she looks straight on).
    assert right_eye[0] < nose[0] < left_eye[0] and mouth_right[0] < nose[0] < mouth_left[0]
    assert max(right_eye[1], left_eye[1]) < (y1 + y2) / 2 and abs(right_eye[1] - left_eye[1]) < 5
    assert max(right_eye[1], left_eye[1]) < nose[1] < min(mouth_right[1], mouth_left[1])
    # Eye distance of an adult face seen from the front: about 0.4-0.5 of the face's width.
    assert 0.3 < (left_eye[0] - right_eye[0]) / (x2 - x1) < 0.6
    assert found.eyes.shape == (1, 2, 2) and np.array_equal(found.eyes[0], [right_eye, left_eye])


@pytest.mark.parametrize(
    "image",
    [
        np.ascontiguousarray(coffee()[:, :, ::-1]),
        np.zeros((360, 640, 3), np.uint8),
        np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8),
    ],
    ids=["coffee", "black", "noise"],
)
def test_no_box_on_an_image_without_a_face(detector, image):
    found = detector.detect(image)
    assert len(found) == 0 and found.xyxy.shape == (0, 4)


def test_grayscale_content_in_a_colour_image_still_works(detector, astronaut_bgr):
    gray = cv2.cvtColor(cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    assert len(detector.detect(gray)) == 1


@pytest.mark.parametrize(
    ("width", "height", "x", "y"), [(1000, 600, 450, 50), (600, 1100, 40, 550), (1920, 1080, 1300, 500)]
)
def test_boxes_come_back_in_the_frame_pixels_whatever_its_shape(detector, astronaut_bgr, width, height, x, y):
    frame = np.full((height, width, 3), 40, np.uint8)
    frame[y : y + 512, x : x + 512] = astronaut_bgr
    found = detector.detect(frame)
    expected = np.array(ASTRONAUT_FACE) + [x, y, x, y]
    assert len(found) == 1 and iou_matrix(found.xyxy, [expected])[0, 0] > 0.5
    assert np.all(np.abs(found.eyes[0] - detector.detect(astronaut_bgr).eyes[0] - [x, y]) < 6)


def test_one_pass_finds_a_face_a_twelfth_of_a_1080p_frame_high(detector):
    # 90 px of face in 1920x1080: 30 px in the 640 px wide scan, the size of a crowd's far faces.
    face = cv2.resize(np.ascontiguousarray(astronaut()[:, :, ::-1]), (480, 480), interpolation=cv2.INTER_AREA)
    frame = np.full((1080, 1920, 3), 90, np.uint8)
    frame[500:980, 1300:1780] = face
    expected = np.array(ASTRONAUT_FACE) * 480 / 512 + [1300, 500, 1300, 500]
    found = detector.detect(frame)
    assert len(found) == 1 and iou_matrix(found.xyxy, [expected])[0, 0] > 0.4


def test_a_face_cut_by_the_frame_edge_gets_a_box_reaching_the_edge(detector, astronaut_bgr):
    cut = np.ascontiguousarray(astronaut_bgr[:, 215:])  # the left third of the face is outside
    found = detector.detect(cut)
    assert len(found) == 1
    x1, y1, x2, y2 = found.xyxy[0]
    assert 0 <= x1 < 2 and 0 <= y1 < y2 <= cut.shape[0] and 40 < x2 <= cut.shape[1]


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


def test_the_shipped_model_file_is_the_one_measured():
    assert shipped_model_file() == MODELS_DIR / YUNET_MODELS[DETECTOR_MODEL].filename
    assert YuNetDetector(DETECTOR_MODEL).path == shipped_model_file()


def test_the_worker_refuses_to_start_with_a_damaged_model_file(tmp_path):
    """The check runs when worker.tasks is imported (Celery imports it as the worker starts)."""
    models = tmp_path / "worker" / "models"
    shutil.copytree(MODELS_DIR, models)
    damaged = models / YUNET_MODELS[DETECTOR_MODEL].filename
    data = bytearray(damaged.read_bytes())
    data[100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    code = f"import worker.detection as d; d.MODELS_DIR = d.Path({str(models)!r}); import worker.tasks"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "sha256" in result.stderr and "git checkout worker/models" in result.stderr


def test_a_wrong_model_file_is_refused_at_start_up_with_what_to_do(tmp_path):
    shipped = MODELS_DIR / YUNET_MODELS[DETECTOR_MODEL].filename
    damaged = tmp_path / shipped.name
    data = bytearray(shipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte flipped: still loads as ONNX, detects differently
    damaged.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="sha256 .* expected .* restore it"):
        YuNetDetector(DETECTOR_MODEL, path=damaged)
    with pytest.raises(RuntimeError, match="missing"):
        YuNetDetector(DETECTOR_MODEL, path=tmp_path / "absent.onnx")
    intact = tmp_path / "intact.onnx"
    shutil.copy(shipped, intact)
    assert YuNetDetector(DETECTOR_MODEL, path=intact).path == intact


def test_make_detector_follows_the_settings():
    # The detector never shrinks what the schedule hands it: it takes the widest scan the settings allow.
    detector = make_detector(WorkerSettings(detect_width=320, detect_fine_width=480, detect_min_score=0.75))
    assert detector.width == 480 and detector.min_score == 0.75
    assert cv2.getNumThreads() == WorkerSettings().opencv_threads
    assert make_detector(WorkerSettings(), width=320).width == 320
    # Photos and live frames have no later scan to confirm a faint face: they keep the stricter score.
    assert make_detector(WorkerSettings(detect_min_score=0.5), confirmed=False).min_score == 0.6
    assert make_detector(WorkerSettings(detect_min_score=0.7), confirmed=False).min_score == 0.7


def test_face_boxes_check_the_landmarks_shape():
    with pytest.raises(ValueError, match="five landmarks per box: 1 boxes, 2 sets"):
        FaceBoxes([[0, 0, 10, 10]], [0.9], np.zeros((2, 5, 2)))
    scaled = FaceBoxes([[0, 0, 10, 10]], [0.9], np.ones((1, 5, 2))).scaled(2.0)
    assert scaled.xyxy.tolist() == [[0, 0, 20, 20]] and np.all(scaled.landmarks == 2)


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


class WidthsAsked:
    """The real detector, noting the width of each image it is asked to scan."""

    def __init__(self) -> None:
        self.inner = make_detector(WorkerSettings())
        self.widths: list[int] = []

    def detect(self, image_bgr):
        self.widths.append(image_bgr.shape[1])
        return self.inner.detect(image_bgr)


def face_frame(face_side: int) -> tuple[np.ndarray, np.ndarray]:
    """A 1280x720 frame with the astronaut's head, its face `face_side` px high, and where it is."""
    scale = face_side / (ASTRONAUT_FACE[3] - ASTRONAUT_FACE[1])
    head = np.ascontiguousarray(astronaut()[20:260, 130:330, ::-1])  # the face with a margin around it
    head = cv2.resize(head, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    frame = np.full((720, 1280, 3), 90, np.uint8)
    x, y = 640 - head.shape[1] // 2, 360 - head.shape[0] // 2
    frame[y : y + head.shape[0], x : x + head.shape[1]] = head
    return frame, (np.array(ASTRONAUT_FACE) - [130, 20, 130, 20]) * scale + [x, y, x, y]


def scan_frames(schedule: ScanSchedule, frame: np.ndarray, numbers) -> list[FaceBoxes]:
    """Scan `frame` as the worker does, at the width the schedule asks; boxes back in the frame's pixels."""
    return [schedule.scan_frame(frame, number) for number in numbers]


def test_a_close_up_is_scanned_at_a_quarter_width_between_full_scans():
    spy = WidthsAsked()
    schedule = ScanSchedule(spy, width=640, fine_width=960, full_every=5, min_side=30)
    frame, expected = face_frame(300)  # 150 px in a 640 px copy: 37 px at 160 px
    found = scan_frames(schedule, frame, range(3, 12))
    # The first scan (3) at the fine width; 5 and 10 at the full width, to find new small faces; the rest
    # at a quarter of it.
    assert spy.widths == [960, 160, 640, 160, 160, 160, 160, 640, 160]
    for scan in found:  # boxes and landmarks from every width come back in the frame's pixels
        assert len(scan) == 1 and iou_matrix(scan.xyxy, [expected])[0, 0] > 0.5
        assert np.all((scan.landmarks[0] > expected[:2]) & (scan.landmarks[0] < expected[2:]))


def test_a_middling_face_is_scanned_at_half_width():
    spy = WidthsAsked()
    schedule = ScanSchedule(spy, width=640, fine_width=960, full_every=5, min_side=30)
    frame, expected = face_frame(160)  # 80 px in a 640 px copy: 20 px at 160 (too small), 40 px at 320
    found = scan_frames(schedule, frame, range(1, 5))
    assert spy.widths == [960, 320, 320, 320]
    assert all(len(f) == 1 and iou_matrix(f.xyxy, [expected])[0, 0] > 0.5 for f in found)


def test_faces_too_small_for_the_full_width_keep_every_scan_fine():
    spy = WidthsAsked()
    schedule = ScanSchedule(spy, width=640, fine_width=960, full_every=5, min_side=30)
    frame, expected = face_frame(44)  # 22 px in a 640 px copy, 33 px in a 960 px one
    found = scan_frames(schedule, frame, range(1, 7))
    assert spy.widths == [960] * 6
    assert all(len(f) == 1 and iou_matrix(f.xyxy, [expected])[0, 0] > 0.4 for f in found)


def test_after_a_scan_that_found_nothing_the_next_is_half_width():
    spy = WidthsAsked()
    schedule = ScanSchedule(spy, width=640, fine_width=960, full_every=5, min_side=30)
    empty = np.full((720, 1280, 3), 90, np.uint8)
    assert [len(f) for f in scan_frames(schedule, empty, range(1, 6))] == [0] * 5
    assert spy.widths == [960, 320, 320, 320, 640]


def test_a_frame_narrower_than_the_widths_is_never_upscaled():
    schedule = ScanSchedule(WidthsAsked(), width=640, fine_width=960)
    assert schedule.width_for(0, 480) == 480


class FixedFaces:
    """A stand-in detector (the unit under test is the photo's score rule): two faces, one faint."""

    def detect(self, image_bgr):
        return FaceBoxes([[10, 10, 60, 60], [100, 10, 150, 60]], [0.55, 0.9])


class Uniform:
    model_version = "test"

    def predict(self, faces):
        return np.full((len(faces), 7), 1 / 7, np.float32)


def test_a_photo_keeps_only_faces_sure_enough_without_a_second_scan():
    from worker.photo import analyse_photo

    photo = np.full((200, 300, 3), 90, np.uint8)
    record = analyse_photo(photo, FixedFaces(), Uniform(), WorkerSettings(detect_min_score=0.5))
    assert [face.score for face in record.faces] == [pytest.approx(0.9)]
    assert record.faces[0].box_xyxy == pytest.approx((100, 10, 150, 60))


def test_boxes_scaled_up_from_a_small_copy_are_clipped_to_the_frame():
    # A box from a copy whose height was rounded up overshoots the frame once scaled back; one that lies
    # wholly outside goes, and the landmarks go with their box.
    boxes = FaceBoxes(
        [[10, 50, 40, 91], [5, 90.5, 20, 99]], [0.9, 0.7], np.arange(20, dtype=np.float32).reshape(2, 5, 2)
    )
    clipped = boxes.clipped(64, 90)
    assert clipped.xyxy.tolist() == [[10, 50, 40, 90]]
    assert clipped.scores.tolist() == [pytest.approx(0.9)]
    assert clipped.landmarks.tolist() == boxes.landmarks[:1].tolist()
