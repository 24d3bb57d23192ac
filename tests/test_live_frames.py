"""Live frames are measured from their JPEG header before anything decodes them."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from common.errors import VideoError
from common.jpeg import FrameTooLarge, JpegHeaderError, check_frame_size, jpeg_size


def _jpeg(size: tuple[int, int], **options) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (120, 90, 60)).save(out, format="JPEG", **options)
    return out.getvalue()


@pytest.mark.parametrize(
    ("size", "options"),
    [((640, 480), {}), ((321, 17), {"progressive": True}), ((1, 1), {}), ((1920, 1080), {"quality": 30})],
)
def test_the_header_gives_the_size_pil_wrote(size, options):
    assert jpeg_size(_jpeg(size, **options)) == size


def test_markers_before_the_frame_header_are_skipped():
    jpeg = _jpeg((64, 48))
    comment = b"\xff\xfe\x00\x07hello"
    exif_like = b"\xff\xe1\x00\x04ab"
    assert jpeg_size(jpeg[:2] + comment + exif_like + b"\xff" + jpeg[2:]) == (64, 48)


@pytest.mark.parametrize(
    "data",
    [
        b"GIF89a....",
        b"\xff\xd8",
        b"\xff\xd8\xff\xda\x00\x08abcdef",
        b"\xff\xd8junk",
        b"\xff\xd8\xff\xe0\x00\x01",
    ],
)
def test_what_has_no_frame_header_is_refused(data):
    with pytest.raises(JpegHeaderError):
        jpeg_size(data)


def test_a_frame_over_the_pixel_limit_is_refused_with_its_size():
    with pytest.raises(FrameTooLarge, match="2000x1100"):
        check_frame_size(_jpeg((2000, 1100)), 1920 * 1080)
    assert check_frame_size(_jpeg((1920, 1080)), 1920 * 1080) == (1920, 1080)


def test_the_worker_refuses_a_huge_frame_by_its_header_without_decoding_it():
    from worker.live import decode_jpeg

    bomb = _jpeg((8000, 8000), quality=10, progressive=True)
    payload = base64.b64encode(bomb).decode()
    with pytest.raises(VideoError, match="8000x8000"):
        decode_jpeg(payload, max_bytes=len(bomb) + 1, max_pixels=1920 * 1080)
    image = decode_jpeg(base64.b64encode(_jpeg((320, 240))).decode(), 1 << 20, 1920 * 1080)
    assert image.shape == (240, 320, 3)
