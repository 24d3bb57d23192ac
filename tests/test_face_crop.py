"""The one face crop shared by serving and training: box -> square -> 48x48 grayscale."""

import cv2
import numpy as np
import pytest

from common.face_crop import FACE_SIZE, crop_face, crop_faces, eye_angle, square_box_xyxy


@pytest.mark.parametrize(
    ("box", "margin", "shift", "expected"),
    [
        ((10, 20, 110, 120), 0.0, 0.0, (10, 20, 110, 120)),  # a square stays itself
        ((10, 20, 110, 120), 0.1, 0.0, (0, 10, 120, 130)),  # grown by 10% of the side on every side
        ((10, 20, 110, 120), 0.0, -0.1, (10, 10, 110, 110)),  # moved up by 10% of its side
        ((0, 0, 100, 50), 0.0, 0.0, (0, -25, 100, 75)),  # squared on the longer side, around the centre
    ],
)
def test_square_around_the_box(box, margin, shift, expected):
    assert square_box_xyxy(box, margin, shift) == expected


def test_crop_is_48x48_grayscale_and_repeats_the_edge_outside_the_image():
    image = np.zeros((100, 100, 3), np.uint8)
    image[:, :50] = 200  # left half bright
    face = crop_face(image, (-50, 0, 50, 100), margin=0.0, shift=0.0)
    assert face.shape == (FACE_SIZE, FACE_SIZE, 1) and face.dtype == np.uint8
    assert (face[:, :20] == 200).all()  # the part left of the image repeats its (bright) edge


def test_shift_moves_the_crop_window():
    image = np.tile(np.arange(200, dtype=np.uint8)[:, None], (1, 200))  # brighter downwards
    up = crop_face(image, (50, 50, 150, 150), margin=0.0, shift=-0.2)
    down = crop_face(image, (50, 50, 150, 150), margin=0.0, shift=0.2)
    assert up.mean() + 30 < down.mean()


def test_no_boxes_no_crops():
    assert crop_faces(np.zeros((10, 10), np.uint8), []).shape == (0, FACE_SIZE, FACE_SIZE, 1)


def eyes_of(image: np.ndarray) -> np.ndarray:
    """The two darkest blobs' centres (right eye first, i.e. leftmost), as a test finds the painted eyes."""
    _, dark = cv2.threshold(image.reshape(image.shape[:2]), 60, 255, cv2.THRESH_BINARY_INV)
    count, _, stats, centres = cv2.connectedComponentsWithStats(dark)
    biggest = np.argsort(-stats[1:, cv2.CC_STAT_AREA])[:2] + 1
    assert count >= 3, "expected two eyes in the crop"
    return centres[biggest][np.argsort(centres[biggest][:, 0])]


def painted_face(angle: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 400x400 grey frame with a bright face (a disc) and two dark eyes, turned by `angle` degrees
    clockwise as displayed about the face's centre: (image, face box, eyes [2, 2])."""
    image = np.full((400, 400), 90, np.uint8)
    cv2.circle(image, (200, 200), 80, 200, -1)
    eyes = np.array([[170.0, 180.0], [230.0, 180.0]])
    for x, y in eyes:
        cv2.circle(image, (int(x), int(y)), 9, 20, -1)
    turn = cv2.getRotationMatrix2D((200, 200), -angle, 1.0)
    image = cv2.warpAffine(image, turn, (400, 400), borderMode=cv2.BORDER_REPLICATE)
    eyes = np.c_[eyes, np.ones(2)] @ turn.T
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), np.array([120, 120, 280, 280]), eyes


@pytest.mark.parametrize("angle", [-30, -12, 8, 25])
def test_a_turned_face_comes_out_of_the_crop_with_its_eyes_level(angle):
    image, box, eyes = painted_face(angle)
    assert eye_angle(eyes) == pytest.approx(angle)
    turned = eyes_of(crop_face(image, box))
    level = eyes_of(crop_face(image, box, eyes=eyes))
    assert abs(eye_angle(turned) - angle) < 3  # without levelling the crop keeps the turn
    assert abs(eye_angle(level)) < 3
    # ...and the face stays where it was: the eyes' midpoint above the crop's centre, as before turning.
    assert np.allclose(level.mean(axis=0), eyes_of(crop_face(*painted_face(0)[:2])).mean(axis=0), atol=1.5)


def test_level_eyes_give_the_plain_crop():
    image, box, eyes = painted_face(0)
    assert np.array_equal(crop_face(image, box, eyes=eyes), crop_face(image, box))
