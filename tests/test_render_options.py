"""Render options per job: parsing as the gateway does, and what the overlay draws for each (no stack)."""

import numpy as np
import pytest

from common.classes import EMOTIONS
from common.render_options import RenderOptions
from worker.overlay import COVER_FACTOR, COVER_LIFT, EmojiOverlay, label_sprite, sprite

H, W = 360, 480


@pytest.mark.parametrize(
    ("style", "labels", "expected"),
    [
        (None, None, RenderOptions()),
        ("cover", "true", RenderOptions(style="cover", labels=True)),
        (" Cover ", "1", RenderOptions(style="cover", labels=True)),
        ("badge", "false", RenderOptions(style="badge", labels=False)),
        ("", "", RenderOptions()),
        ("badge", True, RenderOptions(labels=True)),
    ],
)
def test_options_from_form_fields(style, labels, expected):
    assert RenderOptions.from_fields(style, labels) == expected


@pytest.mark.parametrize(
    ("style", "labels", "names"), [("sparkles", None, "badge, cover"), ("cover", "maybe", "true")]
)
def test_unknown_values_are_refused_with_the_allowed_ones(style, labels, names):
    with pytest.raises(ValueError, match=names):
        RenderOptions.from_fields(style, labels)


def test_options_survive_the_job_record():
    options = RenderOptions(style="cover", labels=True)
    assert RenderOptions.from_record(options.to_record()) == options
    assert RenderOptions.from_record({}) == RenderOptions()  # a job recorded before options existed


def draw(overlay: EmojiOverlay, faces) -> np.ndarray:
    """The luma plane of a grey yuv420p frame after drawing `faces`."""
    luma = np.full((H, W), 128, np.uint8)
    chroma_u, chroma_v = (np.full((H // 2, W // 2), 128, np.uint8) for _ in range(2))
    overlay.draw_yuv_planes(luma, chroma_u, chroma_v, faces, "bt601")
    return luma


def ellipse_mask(box) -> np.ndarray:
    x1, y1, x2, y2 = box
    yy, xx = np.mgrid[0:H, 0:W]
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


@pytest.mark.parametrize(
    "box",
    [
        (200, 100, 280, 200),  # a usual face box, taller than wide
        (100, 80, 220, 190),  # wider than tall
        (300, 150, 330, 180),  # small
        (-20, 100, 60, 200),  # cut by the left edge
    ],
)
def test_a_cover_hides_the_whole_face(box):
    """Every pixel of the face (the ellipse in its box) is under the emoji's opaque disk."""
    luma = draw(EmojiOverlay("cover"), [(box, "happy")])
    face = ellipse_mask(box)
    # Only the parts inside the frame can be seen, so only those need covering.
    assert (np.abs(luma[face].astype(int) - 128) > 10).mean() > 0.97


def test_a_cover_is_larger_than_the_face_and_centred_on_it_a_little_higher():
    x, y, size = EmojiOverlay("cover").placement((200, 100, 280, 200))
    assert size == pytest.approx(100 * COVER_FACTOR, abs=4)
    assert x + size / 2 == pytest.approx(240, abs=2)
    assert y + size / 2 == pytest.approx(150 - 100 * COVER_LIFT, abs=2)


def test_a_cover_stays_the_same_size_beside_another_face():
    """A badge moves off a neighbour; a cover must not shrink and let its own face show."""
    overlay = EmojiOverlay("cover")
    alone = overlay.placement((200, 100, 280, 200))
    beside = overlay.placements([(200, 100, 280, 200), (285, 100, 365, 200)])[0]
    assert beside == alone


def test_labels_write_the_emotion_under_the_emoji():
    box = (200, 80, 280, 180)
    with_labels = draw(EmojiOverlay("badge", labels=True), [(box, "surprise")])
    without = draw(EmojiOverlay("badge"), [(box, "surprise")])
    x, y, size = EmojiOverlay("badge").placement(box, frame_wh=(W, H))
    changed = np.argwhere(with_labels != without)
    assert len(changed) > 50, "no label drawn"
    assert changed[:, 0].min() >= y + size, "the label overlaps the emoji instead of sitting under it"
    assert (with_labels[changed[:, 0], changed[:, 1]] > 200).sum() > 20, "no white text"


@pytest.mark.parametrize(
    ("box", "where"),
    [
        ((200, 100, 260, 160), "below"),
        ((200, 270, 260, 330), "above"),  # no room below: above the emoji
        ((180, -40, 300, 380), "inside"),  # a close-up, no room either way: inside the frame, on the emoji
    ],
)
def test_a_label_goes_under_its_emoji_or_above_it_and_stays_in_the_frame(box, where):
    overlay = EmojiOverlay("cover", labels=True)
    x, y, size = spot = overlay.placement(box)
    label = label_sprite("neutral", size, "bt601")
    h, w = label.alpha.shape[:2]
    lx, ly = overlay.label_position(spot, (w, h), (W, H))
    assert 0 <= lx <= W - w and 0 <= ly <= H - h and lx % 2 == 0 and ly % 2 == 0
    assert {"below": ly >= y + size, "above": ly + h <= y, "inside": True}[where]


def test_labels_stay_readable_but_never_huge():
    assert label_sprite("happy", 20, "bgr").alpha.shape[0] >= 10
    assert label_sprite("happy", 800, "bgr").alpha.shape[0] < 80


@pytest.mark.parametrize("emotion", EMOTIONS)
def test_label_sprites_grow_with_the_emoji_and_have_even_sides(emotion):
    small, large = label_sprite(emotion, 40, "bt709"), label_sprite(emotion, 200, "bt709")
    assert large.alpha.shape[0] > small.alpha.shape[0]
    for s in (small, large):
        assert s.alpha.shape[0] % 2 == 0 and s.alpha.shape[1] % 2 == 0
        assert s.chroma.shape[:2] == (s.alpha.shape[0] // 2, s.alpha.shape[1] // 2)
    assert sprite(emotion, 40, "bt709").alpha.shape == (40, 40, 1)


def test_photos_get_labels_too():
    """A photo is drawn on BGR (draw_bgr): labels there as on video frames."""
    box = (200, 80, 280, 180)
    with_labels = EmojiOverlay("cover", labels=True).draw_bgr(
        np.full((H, W, 3), 90, np.uint8), [(box, "sad")]
    )
    without = EmojiOverlay("cover").draw_bgr(np.full((H, W, 3), 90, np.uint8), [(box, "sad")])
    x, y, size = EmojiOverlay("cover").placement(box)
    changed = np.argwhere((with_labels != without).any(axis=2))
    assert len(changed) > 50 and changed[:, 0].min() >= y + size
