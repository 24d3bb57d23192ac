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

# A cover is this much larger than the face box, and sits this fraction of the box higher. YuNet's box runs
# from the forehead to the mouth and is often smaller than the face a person sees (the chin, a turned
# cheek), and the cover must hide the whole face all the same: bench/bench_cover.py, labelled faces of the
# shared clips, YuNet boxes: at 1.6x lifted 5% 42 of 43 tracked crowd faces wholly covered (one 83%), at
# 1.8x lifted 5% still 42 (94%), at 1.8x centred all 43. (BlazeFace's boxes started at the eyebrows: 1.6x
# lifted 5% covered its 32.) A cover too large hides more of the scene; too small shows a face.
COVER_FACTOR = 1.8
COVER_LIFT = 0.0
# A label's text is this fraction of its emoji's size tall, between LABEL_MIN_PX and LABEL_MAX_PX (a
# close-up's cover is half the frame: its label need not be).
LABEL_HEIGHT = 0.15
LABEL_MIN_PX = 10
LABEL_MAX_PX = 40

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
    return in_space(rgba, space)


def in_space(rgba: np.ndarray, space: str) -> Sprite:
    """An RGBA float32 image [h, w, 4] (h and w even for YUV) as a Sprite in "bgr", "bt601" or "bt709"."""
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
    half_h, half_w = rgba.shape[0] // 2, rgba.shape[1] // 2
    a = alpha[: half_h * 2, : half_w * 2, 0]
    a_sum = a.reshape(half_h, 2, half_w, 2).sum(axis=(1, 3))
    uv = np.stack([u, v], axis=2)[: half_h * 2, : half_w * 2] * a[:, :, None]
    uv = uv.reshape(half_h, 2, half_w, 2, 2).sum(axis=(1, 3)) / np.maximum(a_sum, 1e-6)[:, :, None]
    return Sprite(y[:, :, None], alpha, uv.astype(np.float32), (a_sum / 4.0)[:, :, None])


@lru_cache(maxsize=256)
def label_sprite(emotion: str, emoji_size: int, space: str = "bgr") -> Sprite:
    """The emotion's name, white with a dark outline (readable on any background), sized to an emoji of
    `emoji_size` px; width and height even so 4:2:0 chroma lines up."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    text_px = min(max(LABEL_MIN_PX, emoji_size * LABEL_HEIGHT), LABEL_MAX_PX)
    scale = text_px / 22.0  # HERSHEY_SIMPLEX is ~22 px tall at scale 1
    thickness = max(1, round(scale * 1.6))
    outline = thickness + max(2, round(scale * 2))
    (w, h), baseline = cv2.getTextSize(emotion, font, scale, outline)
    pad = outline
    width, height = (w + 2 * pad + 1) & ~1, (h + baseline + 2 * pad + 1) & ~1
    mask_outline = np.zeros((height, width), np.uint8)
    mask_text = np.zeros((height, width), np.uint8)
    origin = (pad, pad + h)
    cv2.putText(mask_outline, emotion, origin, font, scale, 255, outline, cv2.LINE_AA)
    cv2.putText(mask_text, emotion, origin, font, scale, 255, thickness, cv2.LINE_AA)
    rgba = np.zeros((height, width, 4), np.float32)
    # White text; the outline around it near-black.
    rgba[:, :, :3] = mask_text[:, :, None] + (255 - mask_text[:, :, None].astype(np.float32)) * 0.12
    rgba[:, :, 3] = np.maximum(mask_outline, mask_text) * 0.9
    return in_space(rgba, space)


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

    `scale` is the badge's size as a fraction of the face; "cover" hides the whole face; `labels` writes
    the emotion's name under each emoji.
    """

    def __init__(
        self,
        mode: str = "badge",
        scale: float = 0.6,
        emoji_dir: str | Path = DEFAULT_EMOJI_DIR,
        labels: bool = False,
    ) -> None:
        if mode not in ("badge", "cover"):
            raise ValueError(f"mode must be 'badge' or 'cover', got {mode!r}")
        if not 0 < scale <= 3:
            raise ValueError(f"scale must be in (0, 3], got {scale}")
        self.mode = mode
        self.scale = scale
        self.emoji_dir = str(emoji_dir)
        self.labels = labels
        for emotion in EMOTIONS:  # fail at start-up, not on the first face
            load_emoji(emotion, self.emoji_dir)

    def placement(self, box_xyxy, others=(), frame_wh: tuple[int, int] | None = None) -> tuple[int, int, int]:
        """(x, y, size) of the emoji for a face box; x and y even so 4:2:0 chroma lines up.

        A badge goes to the face's upper-right corner unless it would hide one of the `others` (boxes of the
        other faces in the frame): then to another corner, or above the head, or smaller, whichever first
        hides none of them (and stays inside the frame, if its size is given); failing all, the spot that
        hides the least. A cover is COVER_FACTOR times the face, centred on it (COVER_LIFT higher), whatever
        it hides: the neighbours have their own cover.
        """
        x1, y1, x2, y2 = (float(v) for v in box_xyxy)
        side = max(x2 - x1, y2 - y1)
        others = np.asarray(others, np.float64).reshape(-1, 4)
        if self.mode == "cover":
            spots = [((x1 + x2) / 2, (y1 + y2) / 2 - side * COVER_LIFT, side * COVER_FACTOR)]
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
        for (_, emotion), spot in zip(faces, spots, strict=True) if self.labels else ():
            label = label_sprite(emotion, spot[2], "bgr")
            h, w = label.alpha.shape[:2]
            lx, ly = self.label_position(spot, (w, h), (frame.shape[1], frame.shape[0]))
            overlay_image(frame, label.colour, label.alpha, lx, ly)
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
        if self.labels:
            for (_, emotion), spot in zip(faces, spots, strict=True):
                self._draw_label(luma, chroma, emotion, spot, matrix)

    def label_position(
        self, spot: tuple[int, int, int], label_wh: tuple[int, int], frame_wh: tuple[int, int]
    ) -> tuple[int, int]:
        """Top-left of a label: centred under its emoji, or above it when there is no room below, moved
        inside the frame; both even (4:2:0)."""
        x, y, size = spot
        w, h = label_wh
        lx = min(max(x + size // 2 - w // 2, 0), max(frame_wh[0] - w, 0)) & ~1
        ly = y + size + 2
        if ly + h > frame_wh[1] and y - h - 2 >= 0:
            ly = y - h - 2
        ly = min(max(ly, 0), max(frame_wh[1] - h, 0)) & ~1
        return lx, ly

    def _draw_label(self, luma, chroma, emotion: str, spot, matrix: str) -> None:
        s = label_sprite(emotion, spot[2], matrix)
        h, w = s.alpha.shape[:2]
        lx, ly = self.label_position(spot, (w, h), (luma.shape[1], luma.shape[0]))
        overlay_image(luma[:, :, None], s.colour, s.alpha, lx, ly)
        for plane in (0, 1):
            uv = s.chroma[:, :, plane : plane + 1]
            overlay_image(chroma[plane][:, :, None], uv, s.chroma_alpha, lx // 2, ly // 2)
