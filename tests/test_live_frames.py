"""Live frames are measured from their JPEG header before anything decodes them."""

from __future__ import annotations

import base64
import io

import cv2
import numpy as np
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


def test_a_webcam_frame_is_scanned_at_half_width_while_the_clients_faces_are_large():
    from skimage.data import astronaut

    from tests.test_detection import WidthsAsked
    from worker.live import LIVE_FULL_EVERY, scan_live_frame
    from worker.tracking import IouTracker

    frame = np.full((480, 640, 3), 90, np.uint8)
    head = np.ascontiguousarray(astronaut()[20:260, 130:330, ::-1])  # her head, 240x200, face about 100 px
    frame[:, 120:520] = cv2.resize(head, (400, 480))  # as close to a webcam as people sit: face ~200 px
    spy, tracker = WidthsAsked(), IouTracker()
    for count in (0, 1, 2, 3, 4, 5, 6, LIVE_FULL_EVERY, LIVE_FULL_EVERY + 1):
        found = scan_live_frame(spy, frame, tracker, count, now_ms=count * 40.0, width=320)
        assert len(found) == 1  # the face (about 50 px high at 160 px wide), in the frame's pixels
        assert 120 < found.xyxy[0, 0] < found.xyxy[0, 2] < 520 and found.xyxy[0, 3] < 480
        tracker.update(found.xyxy, count * 40.0)
    # The first frame and every LIVE_FULL_EVERY-th at the full live width; between, the face large, at half.
    assert spy.widths == [320, 160, 160, 160, 160, 160, 160, 320, 160]
    # Without a face lately (the last one seen over RECENT_MS ago), half width too; a new client starts full.
    assert scan_live_frame(spy, np.full_like(frame, 90), tracker, 28, 9000.0, 320).xyxy.size == 0
    assert spy.widths[-1] == 160
    scan_live_frame(spy, frame, IouTracker(), 0, 0.0, 320)
    assert spy.widths[-1] == 320
