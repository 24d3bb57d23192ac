"""Emoji overlay: alpha blending, clipping at every edge, and the emoji drawn as the batches draw it: on the
planes of a decoded yuv420p frame (PyAV), the same picture as the PNG blended in BGR."""

import av
import numpy as np
import pytest

from common.classes import EMOTIONS
from worker.overlay import EmojiOverlay, hidden_fraction, load_emoji, overlay_image, sprite
from worker.video_io import plane_array

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


def decoded_frame(bgr: np.ndarray) -> av.VideoFrame:
    """A yuv420p frame as the decoder hands it to a batch (PyAV; its planes' lines may be padded)."""
    return av.VideoFrame.from_ndarray(bgr, format="bgr24").reformat(format="yuv420p")


def draw(overlay: EmojiOverlay, frame: av.VideoFrame, faces, matrix: str = "bt601") -> av.VideoFrame:
    """Draw as worker.batch_pass does: on writable views of the decoded frame's three planes."""
    frame.make_writable()
    planes = [plane_array(frame, i) for i in range(3)]
    overlay.draw_yuv_planes(*planes, faces, matrix)
    return frame


@pytest.mark.parametrize(
    "box", [(40, 30, 100, 90), (-30, -30, 40, 40), (120, 80, 200, 160), (-500, -500, 900, 900)]
)
def test_drawing_changes_only_the_emoji_region_and_never_fails_at_edges(box):
    overlay = EmojiOverlay("badge", 0.6)
    black = plane_array(decoded_frame(np.zeros((H, W, 3), np.uint8)), 0).copy()
    luma = plane_array(draw(overlay, decoded_frame(np.zeros((H, W, 3), np.uint8)), [(box, "happy")]), 0)
    x, y, size = overlay.placement(box, frame_wh=(W, H))
    outside = np.ones((H, W), bool)
    outside[max(y, 0) : max(y + size, 0), max(x, 0) : max(x + size, 0)] = False
    assert (luma[outside] == black[outside]).all()
    # Where an opaque part of the emoji lies inside the frame, something was drawn there.
    alpha = sprite("happy", size).alpha[:, :, 0]
    visible = alpha[max(0, -y) : max(0, H - y), max(0, -x) : max(0, W - x)]
    if (visible > 0.5).any():
        assert (luma[~outside] != black[~outside]).any()


@pytest.mark.parametrize("mode", ["cover", "badge"])
def test_the_planes_get_the_same_picture_as_the_png_blended_in_bgr(mode):
    overlay = EmojiOverlay(mode)
    width, height = 160, 120
    faces = [((50, 30, 110, 90), "sad"), ((-20, 60, 30, 130), "angry")]
    drawn = draw(overlay, decoded_frame(np.full((height, width, 3), 90, np.uint8)), faces)
    back = drawn.to_ndarray(format="bgr24").astype(int)
    # The reference: each emoji's BGR sprite blended where placements puts it, on the undrawn frame.
    expected = decoded_frame(np.full((height, width, 3), 90, np.uint8)).to_ndarray(format="bgr24")
    for (_, emotion), (x, y, size) in zip(faces, overlay.placements([b for b, _ in faces], (width, height)),
                                          strict=True):
        s = sprite(emotion, size, "bgr")
        overlay_image(expected, s.colour, s.alpha, x, y)
    assert (back != 90).sum() > 1000, "nothing was drawn"
    # Chroma is subsampled and the two colour conversions round differently: close, not equal.
    assert np.abs(back - expected.astype(int)).mean() < 6


def test_drawing_on_padded_planes_touches_only_the_emoji_region():
    overlay = EmojiOverlay("badge")
    width, height = 66, 48  # lines of 66 px are padded in PyAV's buffers: the views are strided
    frame = decoded_frame(np.full((height, width, 3), 77, np.uint8))
    before = [plane_array(frame, i).copy() for i in range(3)]
    draw(overlay, frame, [((20, 10, 50, 40), "fear")])
    x, y, size = overlay.placement((20, 10, 50, 40), frame_wh=(width, height))
    assert x % 2 == 0 and y % 2 == 0
    for index, old in enumerate(before):
        step = 1 if index == 0 else 2
        mask = np.ones_like(old, bool)
        mask[max(y, 0) // step : (y + size) // step, max(x, 0) // step : (x + size) // step] = False
        plane = plane_array(frame, index)
        assert (plane[mask] == old[mask]).all() and (plane[~mask] != old[~mask]).any(), index


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
    spots = overlay.placements(row, (320, 300))
    for i, spot in enumerate(spots):
        assert all(hides(spot, other) == 0 for j, other in enumerate(row) if j != i), (i, spot)
    frame = draw(overlay, decoded_frame(np.zeros((300, 320, 3), np.uint8)), [(box, "happy") for box in row])
    luma = plane_array(frame, 0)
    x, y, size = spots[2]
    assert (luma[y : y + size, x : x + size] > 16).any()  # drawn where placements says


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
