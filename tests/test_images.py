"""Photos checked before decoding (common/images.py) and drawn by the worker (worker/photo.py), without the
stack: every format sniffed and probed, every hostile file refused with its code, orientation and
transparency kept. The system tests (test_photo_e2e.py) send the same files through the real services."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from common.errors import MediaRefused, VideoError
from common.images import ImageLimits, heif_supported, probe_image, sniff_image
from common.media import media_kind
from tests import photo_files
from worker.photo import bgr_of, draw_photo, load_photo, save_photo
from worker.records import FaceRecord, FrameRecord

FORMATS = ["JPEG", "PNG", "WEBP"] + (["HEIF"] if heif_supported() else [])
LIMITS = ImageLimits()


@pytest.mark.parametrize("image_format", FORMATS)
def test_every_photo_format_is_sniffed_and_probed_from_its_header(tmp_path, image_format):
    path = photo_files.save(photo_files.astronaut(), tmp_path / "photo", format=image_format)
    head = path.read_bytes()[:400]
    assert sniff_image(head) == {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp", "HEIF": "heif"}[image_format]
    assert media_kind(head) == "image"
    info = probe_image(path, LIMITS)
    assert (info.width, info.height, info.orientation, info.has_alpha) == (512, 512, 1, False)


def test_videos_are_still_videos_and_other_files_neither(astronaut_video):
    assert media_kind(astronaut_video.read_bytes()[:400]) == "video"
    assert media_kind(b"just some text, not a video\n") is None


def test_exif_orientation_gives_the_displayed_size_and_upright_pixels(tmp_path):
    path = photo_files.rotated_jpeg(tmp_path / "rotated.jpg")
    with Image.open(path) as stored:
        assert stored.size == (512, 512)  # square: the pixels, not the size, tell upright from lying
    info = probe_image(path, LIMITS)
    assert info.orientation == 6
    image, _, _ = load_photo(path, LIMITS)
    upright = np.asarray(image, np.float32)
    original = np.asarray(photo_files.astronaut(), np.float32)
    assert np.abs(upright - original).mean() < 6, "the photo was not turned upright"
    lying = np.asarray(photo_files.astronaut().transpose(Image.Transpose.ROTATE_90), np.float32)
    assert np.abs(upright - lying).mean() > 30


def test_a_non_square_rotated_photo_reports_its_displayed_size(tmp_path):
    path = tmp_path / "wide.jpg"
    exif = Image.Exif()
    exif[photo_files.ORIENTATION] = 8
    Image.new("RGB", (300, 100), "white").save(path, exif=exif.tobytes())
    info = probe_image(path, LIMITS)
    assert (info.width, info.height) == (100, 300)


@pytest.mark.parametrize("name", list(photo_files.HOSTILE))
def test_hostile_images_are_refused_before_decoding(tmp_path, name):
    make, status, codes = photo_files.HOSTILE[name]
    path = make(tmp_path / name)
    expected = MediaRefused if status == 422 else VideoError
    with pytest.raises(expected) as refused:
        kind = media_kind(path.read_bytes()[:400])
        assert kind == "image", f"{name} passed the first bytes as {kind!r}"
        probe_image(path, LIMITS)
    assert refused.value.code in codes
    assert str(tmp_path) not in str(refused.value)
    assert len(str(refused.value)) > 30


def test_the_huge_jpeg_is_about_a_megabyte_and_claims_30000_pixels_a_side(tmp_path):
    path = photo_files.huge_jpeg(tmp_path / "huge.jpg")
    assert 900_000 < path.stat().st_size < 1_200_000
    with pytest.raises(MediaRefused, match="30000x30000|900,000,000"):
        probe_image(path, LIMITS)


def test_limits_are_the_settings(tmp_path):
    path = photo_files.save(photo_files.astronaut(), tmp_path / "a.png", format="PNG")
    with pytest.raises(MediaRefused) as refused:
        probe_image(path, ImageLimits(max_side=500, max_pixels=10**8))
    assert refused.value.code == "image_dimensions" and "EMOJI_MAX_IMAGE_SIDE" in str(refused.value)
    with pytest.raises(MediaRefused) as refused:
        probe_image(path, ImageLimits(max_side=1000, max_pixels=512 * 511))
    assert refused.value.code == "image_pixels" and "EMOJI_MAX_IMAGE_PIXELS" in str(refused.value)


def test_a_jpeg_with_data_after_its_end_is_accepted(tmp_path):
    """Phones append a video after the picture ("motion photos"): the picture is whole, so it is a photo."""
    path = tmp_path / "motion.jpg"
    path.write_bytes(photo_files.encoded(photo_files.astronaut(), "JPEG") + b"\x00\x00\x00\x18ftypmp42" * 50)
    assert probe_image(path, LIMITS).width == 512


def test_an_animated_webp_is_refused(tmp_path):
    frames = [photo_files.astronaut(64), photo_files.astronaut(64).rotate(90)]
    path = tmp_path / "anim.webp"
    frames[0].save(path, format="WEBP", save_all=True, append_images=frames[1:])
    with pytest.raises(VideoError, match="animated"):
        probe_image(path, LIMITS)


def frame_with(box, shown: int = 3) -> FrameRecord:
    probs = [0.0] * 7
    probs[shown] = 1.0
    face = FaceRecord(
        track=1, box_xyxy=box, score=0.9, detected=True, probabilities=probs, smoothed=probs, shown=shown
    )
    return FrameRecord(index=0, t_ms=0.0, faces=[face])


def test_a_badge_over_a_transparent_corner_is_opaque_and_keeps_its_colour(tmp_path):
    from worker.overlay import EmojiOverlay

    image, info, icc = load_photo(photo_files.transparent_png(tmp_path / "t.png"), LIMITS)
    assert info.has_alpha and image.mode == "RGBA"
    rgba = np.asarray(image)
    # A face in the top-right corner of the opaque part: the badge sticks out over the transparent border.
    drawn = draw_photo(EmojiOverlay(), *bgr_of(image), frame_with((450.0, 70.0, 570.0, 190.0)))
    assert drawn.shape == (640, 640, 4)
    border = drawn[:64, 576:]  # transparent before
    assert rgba[:64, 576:, 3].max() == 0
    assert (border[:, :, 3] == 255).sum() > 100, "the badge over the transparent corner is invisible"
    opaque = border[:, :, 3] == 255
    # The happy emoji is yellow: in BGR, red and green high, blue low, not darkened by the hidden black.
    assert border[opaque][:, 2].mean() > 180 and border[opaque][:, 1].mean() > 140
    target = tmp_path / "out.png"
    save_photo(drawn, info, icc, target)
    with Image.open(target) as out:
        assert out.format == "PNG" and out.mode == "RGBA"
        assert np.asarray(out)[:64, 576:, 3].max() == 255
        assert np.asarray(out)[600:, :60, 3].max() == 0, "transparency was lost"


@pytest.mark.parametrize("image_format", FORMATS)
def test_the_drawn_photo_is_saved_in_its_own_format_without_exif(tmp_path, image_format):
    source = tmp_path / "in"
    exif = Image.Exif()
    exif[photo_files.ORIENTATION] = 1
    exif[0x010F] = "SecretCam"  # Make
    photo_files.save(photo_files.astronaut(), source, format=image_format, exif=exif.tobytes())
    image, info, icc = load_photo(source, LIMITS)
    from worker.overlay import EmojiOverlay

    drawn = draw_photo(EmojiOverlay(), *bgr_of(image), frame_with((180.0, 60.0, 290.0, 200.0)))
    target = tmp_path / "out"
    save_photo(drawn, info, icc, target)
    raw = target.read_bytes()
    assert b"SecretCam" not in raw
    with Image.open(io.BytesIO(raw)) as out:
        assert out.format == image_format and out.size == (512, 512)
        assert not out.getexif()


def test_the_reconciler_requeues_a_lost_photo_job_as_a_photo(redis_url):
    """A photo job whose task was lost goes back as the photo task: the video chain would refuse a JPEG."""
    import json

    import redis

    from common.jobs import JobStore
    from common.queue import TASK_PHOTO_JOB, TASK_START_JOB, make_celery
    from common.settings import CommonSettings
    from gateway.reconciler import reconcile

    url = redis_url.rsplit("/", 1)[0] + "/8"  # a database no worker consumes
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    store, celery = JobStore(client), make_celery(CommonSettings(redis_url=url))
    store.create_for("local", "a" * 32, "team.jpg", {"kind": "image", "format": "jpeg", "frames": 1})
    store.create_for("local", "b" * 32, "clip.mp4", {"width": 64, "frames": 10})
    found = reconcile(store, celery, grace_s=-1, max_requeues=3)
    assert sorted(found["requeued"]) == ["a" * 32, "b" * 32]
    sent = {}
    for raw in client.lrange("video", 0, -1):
        headers = json.loads(raw)["headers"]
        sent[headers["argsrepr"]] = headers["task"]
    assert sent == {f"['{'a' * 32}']": TASK_PHOTO_JOB, f"['{'b' * 32}']": TASK_START_JOB}
    client.flushdb()


def test_a_jpeg_holding_a_second_picture_is_a_photo_not_an_animation(tmp_path):
    """Phones and 3D cameras store extra pictures (depth, gain map, a second view) in one JPEG as MPO:
    Pillow counts them as frames, but the first one is the photo."""
    path = tmp_path / "phone.jpg"
    first, second = photo_files.astronaut(), photo_files.astronaut(128)
    first.save(path, format="MPO", save_all=True, append_images=[second])
    assert Image.open(path).n_frames == 2
    info = probe_image(path, LIMITS)
    assert (info.format, info.width, info.height) == ("jpeg", 512, 512)
    image, _, _ = load_photo(path, LIMITS)
    assert image.size == (512, 512)
