"""The one face crop shared by serving and training: box -> square -> 48x48 grayscale."""

import numpy as np
import pytest

from common.face_crop import FACE_SIZE, crop_face, crop_faces, square_box_xyxy


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
