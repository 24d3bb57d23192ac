"""The one face crop shared by serving (worker) and training evaluation: box -> 48x48 grayscale.

FER2013 faces are framed a little wider than a detector's box (forehead to chin, some cheek), so the
box is grown by FACE_MARGIN on every side and squared around its centre before resizing. Calibrated for
BlazeFace by bench/bench_face_crop.py: on FER2013 val faces pasted into larger frames, its box is 0.85 of
the FER2013 frame wide (a margin of 0.09 restores the frame) and centred 0.03 of it low; a margin of 0.09
without shift also classified best (69.4% vs 70.9% on the original images; 0.12 gave 68.0%, shifts up
or down no better), see docs/benchmarks.md.
"""

from __future__ import annotations

import cv2
import numpy as np

FACE_SIZE = 48
FACE_MARGIN = 0.09
FACE_SHIFT = 0.0


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


def crop_face(
    image: np.ndarray, box_xyxy, margin: float = FACE_MARGIN, shift: float = FACE_SHIFT
) -> np.ndarray:
    """Crop one face for the model: uint8 [48, 48, 1] grayscale; parts outside the image repeat its edge.

    `image` is BGR (H, W, 3) or grayscale (H, W); `box_xyxy` is in that image's pixels.
    """
    if image.ndim not in (2, 3):
        raise ValueError(f"expected an image of shape (H, W) or (H, W, 3), got {image.shape}")
    height, width = image.shape[:2]
    x1, y1, x2, y2 = square_box_xyxy(box_xyxy, margin, shift)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"empty face box {tuple(box_xyxy)}")
    # Crop only the part inside the image, then pad: converting and resizing the whole frame would cost more.
    cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    if cx2 <= cx1 or cy2 <= cy1:
        raise ValueError(f"face box {tuple(box_xyxy)} lies outside the {width}x{height} image")
    patch = image[cy1:cy2, cx1:cx2]
    if patch.ndim == 3:
        patch = cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY)
    pad = (cy1 - y1, y2 - cy2, cx1 - x1, x2 - cx2)
    if any(pad):
        patch = cv2.copyMakeBorder(patch, *pad, borderType=cv2.BORDER_REPLICATE)
    interpolation = cv2.INTER_AREA if patch.shape[0] > FACE_SIZE else cv2.INTER_LINEAR
    face = cv2.resize(patch, (FACE_SIZE, FACE_SIZE), interpolation=interpolation)
    return face[:, :, np.newaxis]


def crop_faces(
    image: np.ndarray, boxes_xyxy, margin: float = FACE_MARGIN, shift: float = FACE_SHIFT
) -> np.ndarray:
    """All faces of one image as a uint8 batch [N, 48, 48, 1] (N may be 0)."""
    faces = [crop_face(image, box, margin, shift) for box in boxes_xyxy]
    if not faces:
        return np.zeros((0, FACE_SIZE, FACE_SIZE, 1), np.uint8)
    return np.stack(faces)
