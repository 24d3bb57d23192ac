"""Drawing the emoji on faces: PNGs loaded once, scaled to the face, alpha-blended on the emoji's region only,
clipped at the frame edges. Works on BGR frames and, without any whole-frame colour conversion, directly on
the planes of a yuv420p frame as ffmpeg decodes it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from common.classes import EMOTIONS
from common.settings import REPO_ROOT

DEFAULT_EMOJI_DIR = REPO_ROOT / "emojis"
# Emoji sizes are rounded to this many pixels, so the sprite cache stays small and chroma stays aligned.
SIZE_STEP = 4
MAX_SIZE = 4096

# (Kr, Kb) of the two matrices H.264 video uses in practice.
MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


@lru_cache(maxsize=32)
def load_emoji(emotion: str, emoji_dir: str = str(DEFAULT_EMOJI_DIR)) -> np.ndarray:
    """The emotion's emoji as RGBA uint8 [H, W, 4], read once."""
    if emotion not in EMOTIONS:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {EMOTIONS}")
    path = Path(emoji_dir) / f"{emotion}.png"
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.ndim != 3 or image.shape[2] != 4:
        raise FileNotFoundError(f"expected an RGBA PNG at {path}; render them with `python -m emojis.render`")
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)


@dataclass(frozen=True)
class Sprite:
    """One emoji at one size, ready to blend: colour planes as float32 and alpha in 0..1."""

    colour: np.ndarray  # [s, s, 3] BGR, or [s, s, 1] Y
    alpha: np.ndarray  # [s, s, 1]
    chroma: np.ndarray | None = None  # [s/2, s/2, 2] U, V (yuv only)
    chroma_alpha: np.ndarray | None = None  # [s/2, s/2, 1]


@lru_cache(maxsize=512)
def sprite(emotion: str, size: int, space: str = "bgr", emoji_dir: str = str(DEFAULT_EMOJI_DIR)) -> Sprite:
    """The emoji scaled to `size` px in colour space "bgr", "bt601" or "bt709" (limited-range YUV 4:2:0)."""
    rgba = cv2.resize(
        load_emoji(emotion, emoji_dir),
        (size, size),
        interpolation=cv2.INTER_AREA if size < 117 else cv2.INTER_LINEAR,
    ).astype(np.float32)
    alpha = rgba[:, :, 3:4] / 255.0
    rgb = rgba[:, :, :3] / 255.0
    if space == "bgr":
        return Sprite(np.ascontiguousarray(rgba[:, :, 2::-1]), alpha)
    kr, kb = MATRICES[space]
    r, g, b = rgb[:, :, 0], rgb[:, :, 1], rgb[:, :, 2]
    luma = kr * r + (1 - kr - kb) * g + kb * b
    y = 16 + 219 * luma
    u = 128 + 224 * (b - luma) / (2 * (1 - kb))
    v = 128 + 224 * (r - luma) / (2 * (1 - kr))
    # Chroma is subsampled 2x2, weighted by alpha so transparent pixels do not bleed their colour in.
    half = size // 2
    a = alpha[: half * 2, : half * 2, 0]
    a_sum = a.reshape(half, 2, half, 2).sum(axis=(1, 3))
    uv = np.stack([u, v], axis=2)[: half * 2, : half * 2] * a[:, :, None]
    uv = uv.reshape(half, 2, half, 2, 2).sum(axis=(1, 3)) / np.maximum(a_sum, 1e-6)[:, :, None]
    return Sprite(y[:, :, None], alpha, uv.astype(np.float32), (a_sum / 4.0)[:, :, None])


def overlay_image(scene: np.ndarray, colour: np.ndarray, alpha: np.ndarray, x: int, y: int) -> np.ndarray:
    """Blend `colour` [h,w,C] with `alpha` [h,w,1] into `scene` [H,W,C] at top-left (x, y), in place.

    Parts outside the scene are clipped; an icon wholly outside changes nothing.
    """
    height, width = scene.shape[:2]
    h, w = colour.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        return scene
    region = scene[y0:y1, x0:x1]
    icon = colour[y0 - y : y1 - y, x0 - x : x1 - x]
    a = alpha[y0 - y : y1 - y, x0 - x : x1 - x]
    if region.ndim == 2:
        icon, a = icon[:, :, 0], a[:, :, 0]
    blended = region + a * (icon - region)
    scene[y0:y1, x0:x1] = np.clip(blended + 0.5, 0, 255).astype(scene.dtype)
    return scene


def hidden_fraction(square_xyxy, boxes: np.ndarray) -> float:
    """The largest fraction of any box in `boxes` [N, 4] that the square covers (0 when it hides none)."""
    if not len(boxes):
        return 0.0
    x1, y1, x2, y2 = square_xyxy
    w = np.clip(np.minimum(boxes[:, 2], x2) - np.maximum(boxes[:, 0], x1), 0, None)
    h = np.clip(np.minimum(boxes[:, 3], y2) - np.maximum(boxes[:, 1], y1), 0, None)
    area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-6)
    return float((w * h / area).max())


class EmojiOverlay:
    """Draws each face's emoji; configured once, then `draw_yuv_planes` per frame.

    `scale` is the badge's size as a fraction of the face; "cover" hides the whole face.
    """

    def __init__(
        self, mode: str = "badge", scale: float = 0.6, emoji_dir: str | Path = DEFAULT_EMOJI_DIR
    ) -> None:
        if mode not in ("badge", "cover"):
            raise ValueError(f"mode must be 'badge' or 'cover', got {mode!r}")
        if not 0 < scale <= 3:
            raise ValueError(f"scale must be in (0, 3], got {scale}")
        self.mode = mode
        self.scale = scale
        self.emoji_dir = str(emoji_dir)
        for emotion in EMOTIONS:  # fail at start-up, not on the first face
            load_emoji(emotion, self.emoji_dir)

    def placement(self, box_xyxy, others=(), frame_wh: tuple[int, int] | None = None) -> tuple[int, int, int]:
        """(x, y, size) of the emoji for a face box; x and y even so 4:2:0 chroma lines up.

        A badge goes to the face's upper-right corner unless it would hide one of the `others` (boxes of the
        other faces in the frame): then to another corner, or above the head, or smaller, whichever first
        hides none of them (and stays inside the frame, if its size is given); failing all, the spot that
        hides the least. A cover shrinks from 1.15x to 1x the face when it would hide a neighbour.
        """
        x1, y1, x2, y2 = (float(v) for v in box_xyxy)
        side = max(x2 - x1, y2 - y1)
        others = np.asarray(others, np.float64).reshape(-1, 4)
        if self.mode == "cover":
            spots = [((x1 + x2) / 2, (y1 + y2) / 2, side * f) for f in (1.15, 1.0)]
        else:
            spots = []
            for factor in (1.0, 0.75, 0.5):
                size = side * self.scale * factor
                inset = size * 0.15
                spots += [
                    (x2 - inset, y1 + inset, size),  # upper right: the usual place
                    (x1 + inset, y1 + inset, size),  # upper left
                    ((x1 + x2) / 2, y1 - size * 0.35, size),  # above the head
                    (x2 - inset, y2 - inset, size),  # lower right
                    (x1 + inset, y2 - inset, size),  # lower left
                ]
        best, best_cost = None, np.inf
        for cx, cy, size in spots:
            size = int(min(max(SIZE_STEP, round(size / SIZE_STEP) * SIZE_STEP), MAX_SIZE))
            x = int(round(cx - size / 2)) & ~1
            y = int(round(cy - size / 2)) & ~1
            cost = hidden_fraction((x, y, x + size, y + size), others)
            if frame_wh is not None and self.mode == "badge":
                # Half an emoji off the frame is a small fault, far below hiding a face.
                inside = max(0, min(x + size, frame_wh[0]) - max(x, 0)) * max(
                    0, min(y + size, frame_wh[1]) - max(y, 0)
                )
                cost += 0.01 * (1 - inside / (size * size))
            if cost <= 0.0:
                return x, y, size
            if cost < best_cost:
                best, best_cost = (x, y, size), cost
        return best

    def placements(self, boxes, frame_wh: tuple[int, int] | None = None) -> list[tuple[int, int, int]]:
        """`placement` of every face of one frame, each avoiding all the others."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        return [self.placement(box, np.delete(boxes, i, axis=0), frame_wh) for i, box in enumerate(boxes)]

    def draw_bgr(self, frame: np.ndarray, faces) -> np.ndarray:
        """Draw on a BGR image [H, W, 3] in place (a photo); `faces` are (box_xyxy, emotion) pairs."""
        faces = list(faces)
        spots = self.placements([box for box, _ in faces], (frame.shape[1], frame.shape[0]))
        for (_, emotion), (x, y, size) in zip(faces, spots, strict=True):
            s = sprite(emotion, size, "bgr", self.emoji_dir)
            overlay_image(frame, s.colour, s.alpha, x, y)
        return frame

    def draw_yuv_planes(
        self, luma: np.ndarray, chroma_u: np.ndarray, chroma_v: np.ndarray, faces, matrix: str = "bt709"
    ) -> None:
        """Draw on the planes of a yuv420p frame in place (Y [H, W], U and V [H/2, W/2]; strided views of a
        decoded frame are fine), touching only the emoji's pixels."""
        chroma = (chroma_u, chroma_v)
        faces = list(faces)
        height, width = luma.shape
        spots = self.placements([box for box, _ in faces], (width, height))
        for (_, emotion), (x, y, size) in zip(faces, spots, strict=True):
            s = sprite(emotion, size, matrix, self.emoji_dir)
            overlay_image(luma[:, :, None], s.colour, s.alpha, x, y)
            for plane in (0, 1):
                overlay_image(
                    chroma[plane][:, :, None],
                    s.chroma[:, :, plane : plane + 1],
                    s.chroma_alpha,
                    x // 2,
                    y // 2,
                )
