"""The one face crop shared by serving (worker) and training evaluation: box -> 48x48 grayscale.

FER2013 faces are framed forehead to chin, some cheek either side. The crop is the square around the
detector's box on its longer side, grown by FACE_MARGIN of it on every side, before resizing. Calibrated for
YuNet by bench/bench_face_crop.py: on FER2013 val faces pasted into larger frames, its box is 0.82 of the
FER2013 frame wide and about as tall as it is (forehead to chin), so the square on its height is the FER2013
frame: a margin of 0 classified best (66.8% against 70.4% on the original images; 0.06 gave 63.2%, the
BlazeFace-era 0.09 60.7%), and levelling the eyes by the detector's landmarks did not help (64.0% at
margin 0): see docs/benchmarks.md. `crop_face` can still level (`eyes`) for the benchmark to compare.
"""

from __future__ import annotations

import cv2
import numpy as np

FACE_SIZE = 48
FACE_MARGIN = 0.0
FACE_SHIFT = 0.0
# A face whose eyes are nearly level is cropped straight: turning it would only blur it.
LEVEL_MIN_DEGREES = 1.0


def square_box_xyxy(
    box_xyxy, margin: float = FACE_MARGIN, shift: float = FACE_SHIFT
) -> tuple[int, int, int, int]:
    """The square around the box's centre, each side grown by `margin` of the box's longer side, moved down
    by `shift` of its own side (negative: up)."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0 + shift * side
    half = side / 2.0
    return (round(cx - half), round(cy - half), round(cx + half), round(cy + half))


def eye_angle(eyes) -> float:
    """Degrees the line from the person's right eye to their left eye (image left to right on a face that
    looks at the camera) turns clockwise as displayed: 0 for a level face."""
    (rx, ry), (lx, ly) = np.asarray(eyes, np.float64).reshape(2, 2)
    return float(np.degrees(np.arctan2(ly - ry, lx - rx)))


def _patch(image: np.ndarray, x1: int, y1: int, x2: int, y2: int, box_xyxy) -> np.ndarray:
    """The image's pixels in [x1, x2) x [y1, y2) in grayscale; parts outside the image repeat its edge.
    Only that part is converted: converting and resizing the whole frame would cost more."""
    height, width = image.shape[:2]
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"empty face box {tuple(box_xyxy)}")
    cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    if cx2 <= cx1 or cy2 <= cy1:
        raise ValueError(f"face box {tuple(box_xyxy)} lies outside the {width}x{height} image")
    patch = image[cy1:cy2, cx1:cx2]
    if patch.ndim == 3:
        patch = cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY)
    pad = (cy1 - y1, y2 - cy2, cx1 - x1, x2 - cx2)
    if any(pad):
        patch = cv2.copyMakeBorder(patch, *pad, borderType=cv2.BORDER_REPLICATE)
    return patch


def _resized(patch: np.ndarray, size: int) -> np.ndarray:
    interpolation = cv2.INTER_AREA if patch.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interpolation)


def crop_face(
    image: np.ndarray, box_xyxy, margin: float = FACE_MARGIN, shift: float = FACE_SHIFT, eyes=None
) -> np.ndarray:
    """Crop one face for the model: uint8 [48, 48, 1] grayscale; parts outside the image repeat its edge.

    `image` is BGR (H, W, 3) or grayscale (H, W); `box_xyxy` is in that image's pixels. With `eyes` (the
    person's right and left eye, (x, y) each, in the same pixels) the crop is turned about its centre so the
    eyes are level, as FER2013's faces mostly are.
    """
    if image.ndim not in (2, 3):
        raise ValueError(f"expected an image of shape (H, W) or (H, W, 3), got {image.shape}")
    x1, y1, x2, y2 = square_box_xyxy(box_xyxy, margin, shift)
    angle = 0.0 if eyes is None else eye_angle(eyes)
    if abs(angle) < LEVEL_MIN_DEGREES:
        return _resized(_patch(image, x1, y1, x2, y2, box_xyxy), FACE_SIZE)[:, :, np.newaxis]
    # The square turned by `angle` reaches this far out: take that much around it, shrink it at the crop's
    # scale first (area averaging, no aliasing), then turn it and keep the middle 48x48.
    side = x2 - x1
    reach = side * (abs(np.cos(np.radians(angle))) + abs(np.sin(np.radians(angle))))
    grow = int(np.ceil((reach - side) / 2)) + 1
    patch = _patch(image, x1 - grow, y1 - grow, x2 + grow, y2 + grow, box_xyxy)
    size = max(FACE_SIZE, round(patch.shape[0] * FACE_SIZE / side))
    small = _resized(patch, size)
    turn = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
    turn[:, 2] += (FACE_SIZE - size) / 2
    face = cv2.warpAffine(
        small, turn, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return face[:, :, np.newaxis]


def crop_faces(
    image: np.ndarray, boxes_xyxy, margin: float = FACE_MARGIN, shift: float = FACE_SHIFT
) -> np.ndarray:
    """All faces of one image as a uint8 batch [N, 48, 48, 1] (N may be 0)."""
    faces = [crop_face(image, box, margin, shift) for box in boxes_xyxy]
    if not faces:
        return np.zeros((0, FACE_SIZE, FACE_SIZE, 1), np.uint8)
    return np.stack(faces)
