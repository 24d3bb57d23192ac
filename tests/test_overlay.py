"""Emoji overlay: alpha blending, clipping at every edge, the yuv420p path drawing the same emoji."""

import cv2
import numpy as np
import pytest

from common.classes import EMOTIONS
from worker.overlay import EmojiOverlay, hidden_fraction, load_emoji, overlay_image, sprite, yuv420p_planes

H, W = 120, 160


def icon(size=40, value=200.0, alpha=0.5):
    colour = np.full((size, size, 3), value, np.float32)
    a = np.full((size, size, 1), alpha, np.float32)
    return colour, a


@pytest.mark.parametrize(
    "x, y, size",
    [
        (60, 40, 40),  # inside
        (-20, 40, 40),  # left edge
        (140, 40, 40),  # right edge
        (60, -25, 40),  # top edge
        (60, 100, 40),  # bottom edge
        (-30, -30, 40),  # top-left corner, mostly outside
        (150, 110, 40),  # bottom-right corner, mostly outside
        (-50, -50, 300),  # bigger than the frame
        (500, 500, 40),  # wholly outside
        (-100, 10, 40),  # wholly outside to the left
    ],
)
def test_overlay_blends_the_visible_part_only(x, y, size):
    scene = np.full((H, W, 3), 100, np.uint8)
    colour, alpha = icon(size)
    out = overlay_image(scene.copy(), colour, alpha, x, y)
    expected = np.full((H, W, 3), 100, np.uint8)
    y0, y1, x0, x1 = max(y, 0), min(y + size, H), max(x, 0), min(x + size, W)
    if y1 > y0 and x1 > x0:
        expected[y0:y1, x0:x1] = 150  # 100 + 0.5 * (200 - 100)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    "alpha, value, expected", [(0.0, 255, 100), (1.0, 255, 255), (0.25, 0, 75), (0.5, 201, 151)]
)
def test_alpha_blending_values(alpha, value, expected):
    scene = np.full((10, 10, 3), 100, np.uint8)
    colour, a = icon(4, value, alpha)
    overlay_image(scene, colour, a, 3, 3)
    assert (scene[3:7, 3:7] == expected).all() and (scene[0, 0] == 100).all()


def test_all_emojis_load_as_square_rgba_with_transparent_corners():
    for emotion in EMOTIONS:
        image = load_emoji(emotion)
        assert image.ndim == 3 and image.shape[2] == 4 and image.shape[0] == image.shape[1]
        assert image[0, 0, 3] == 0 and image[image.shape[0] // 2, image.shape[1] // 2, 3] == 255


def test_unknown_emotion_is_refused():
    with pytest.raises(ValueError, match="unknown emotion"):
        load_emoji("bored")


@pytest.mark.parametrize(
    "box", [(40, 30, 100, 90), (-30, -30, 40, 40), (120, 80, 200, 160), (-500, -500, 900, 900)]
)
def test_draw_bgr_changes_only_the_emoji_region_and_never_fails_at_edges(box):
    overlay = EmojiOverlay("badge", 0.6)
    frame = np.zeros((H, W, 3), np.uint8)
    overlay.draw_bgr(frame, [(box, "happy")])
    x, y, size = overlay.placement(box, frame_wh=(W, H))
    outside = np.ones((H, W), bool)
    outside[max(y, 0) : max(y + size, 0), max(x, 0) : max(x + size, 0)] = False
    assert not frame[outside].any()
    # Where an opaque part of the emoji lies inside the frame, something was drawn there.
    alpha = sprite("happy", size).alpha[:, :, 0]
    visible = alpha[max(0, -y) : max(0, H - y), max(0, -x) : max(0, W - x)]
    if (visible > 0.5).any():
        assert frame[~outside].any()


def test_yuv_and_bgr_paths_draw_the_same_picture():
    overlay = EmojiOverlay("cover")
    width, height = 160, 120
    bgr = np.full((height, width, 3), 90, np.uint8)
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).reshape(-1)
    faces = [((50, 30, 110, 90), "sad"), ((-20, 60, 30, 130), "angry")]
    overlay.draw_bgr(bgr, faces)
    overlay.draw_yuv420p(yuv, width, height, faces, matrix="bt601")
    back = cv2.cvtColor(yuv.reshape(height * 3 // 2, width), cv2.COLOR_YUV2BGR_I420)
    # Chroma is subsampled and the two colour conversions round differently: close, not equal.
    assert np.abs(back.astype(int) - bgr.astype(int)).mean() < 6


def test_yuv_draw_touches_only_the_emoji_region():
    overlay = EmojiOverlay("badge")
    width, height = 64, 48
    frame = np.full(width * height * 3 // 2, 77, np.uint8)
    overlay.draw_yuv420p(frame, width, height, [((20, 10, 50, 40), "fear")])
    luma, chroma = yuv420p_planes(frame, width, height)
    x, y, size = overlay.placement((20, 10, 50, 40), frame_wh=(width, height))
    assert x % 2 == 0 and y % 2 == 0
    mask = np.ones_like(luma, bool)
    mask[max(y, 0) : y + size, max(x, 0) : x + size] = False
    assert (luma[mask] == 77).all() and (luma[~mask] != 77).any()


def hides(spot, box) -> float:
    x, y, size = spot
    return hidden_fraction((x, y, x + size, y + size), np.asarray([box], np.float64))


@pytest.mark.parametrize(
    "neighbour",
    [
        (95, 20, 155, 80),  # right beside: the usual upper-right badge would cover their face
        (70, 0, 110, 40),  # close at the upper right, a little higher
        (0, 0, 120, 12),  # a row of faces just above the head
    ],
)
def test_a_badge_never_hides_another_face_when_there_is_room(neighbour):
    overlay = EmojiOverlay("badge", 0.6)
    face = (40, 30, 100, 90)
    usual = overlay.placement(face)
    spot = overlay.placement(face, [neighbour], frame_wh=(400, 300))
    assert hides(spot, neighbour) == 0
    assert spot[2] >= usual[2] // 2  # smaller at most by half
    # It still sits on or at the face it belongs to.
    x, y, size = spot
    assert x < face[2] and x + size > face[0] and y < face[3] and y + size > face[1] - size


def test_in_a_tight_row_every_badge_keeps_off_the_other_faces():
    overlay = EmojiOverlay("badge", 0.6)
    row = [(x, 100, x + 60, 160) for x in (0, 62, 124, 186, 248)]
    frame = np.zeros((300, 320, 3), np.uint8)
    spots = overlay.placements(row, (320, 300))
    for i, spot in enumerate(spots):
        assert all(hides(spot, other) == 0 for j, other in enumerate(row) if j != i), (i, spot)
    overlay.draw_bgr(frame, [(box, "happy") for box in row])  # draws where placements says
    x, y, size = spots[2]
    assert frame[y : y + size, x : x + size].any()


def test_without_neighbours_the_badge_stays_at_the_upper_right_corner():
    overlay = EmojiOverlay("badge", 0.6)
    x, y, size = overlay.placement((40, 30, 100, 90), [(300, 200, 340, 240)], frame_wh=(400, 300))
    assert (x, y, size) == overlay.placement((40, 30, 100, 90))
    assert x + size / 2 > 70 and y + size / 2 < 60


def test_sprites_are_cached():
    assert sprite("happy", 64, "bt709") is sprite("happy", 64, "bt709")


@pytest.mark.parametrize("kwargs", [{"mode": "beside"}, {"scale": 0}, {"scale": 10}])
def test_bad_overlay_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        EmojiOverlay(**kwargs)
