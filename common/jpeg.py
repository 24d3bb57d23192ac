"""A JPEG's width and height from its frame header, without decoding it (the gateway has no decoder).

A JPEG of a few kB can declare 65535x65535 pixels: whoever decodes it allocates width*height*3 bytes. So a
frame's size is read from its SOF marker first, and anything over the limit is refused before a decoder
sees it.
"""

from __future__ import annotations

SOI = b"\xff\xd8"
# Start-of-frame markers (baseline, progressive, lossless, arithmetic...): C0-CF less DHT, JPG and DAC.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM, RST0-7 (SOI and EOI never appear here: SOI is skipped, EOI ends).
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_SOS, _EOI = 0xDA, 0xD9


class JpegHeaderError(ValueError):
    """The bytes are not a JPEG whose frame size can be read before its image data."""


class JpegTruncated(JpegHeaderError):
    """The bytes end inside the JPEG's headers."""


def jpeg_segments(data, size: int | None = None):
    """(marker, position, length) of each marker segment after SOI, up to and including the first scan
    (SOS) or end of image (EOI), where the walk stops; fill bytes and markers without a length are stepped
    over. `data` is anything sliceable (bytes, an mmap), `size` its length. Never reads image data.
    JpegTruncated if the headers end early, JpegHeaderError if they are damaged."""
    end = len(data) if size is None else size
    if bytes(data[:2]) != SOI:
        raise JpegHeaderError("not a JPEG (it does not start with the JPEG start-of-image marker)")
    pos = 2
    while True:
        while pos + 1 < end and data[pos] == 0xFF and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes before a marker
        if pos + 4 > end:
            raise JpegTruncated("the JPEG ends before its image data")
        if data[pos] != 0xFF:
            raise JpegHeaderError(f"damaged JPEG: expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker in _STANDALONE:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2 and marker != _EOI:
            raise JpegHeaderError(f"damaged JPEG: a segment of length {length} at byte {pos}")
        yield marker, pos, length
        if marker in (_SOS, _EOI):
            return
        pos += 2 + length


def frame_size(data, pos: int, end: int) -> tuple[int, int] | None:
    """(width, height) from the SOF segment at `pos`, or None if the bytes end inside it."""
    if pos + 9 > end:
        return None
    return int.from_bytes(data[pos + 7 : pos + 9], "big"), int.from_bytes(data[pos + 5 : pos + 7], "big")


def is_frame_header(marker: int) -> bool:
    return marker in _SOF


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) as the JPEG's frame header declares them; JpegHeaderError if there is none."""
    for marker, pos, _ in jpeg_segments(data):  # stops after the first scan's or the image's end marker
        if marker in _SOF:
            declared = frame_size(data, pos, len(data))
            if declared is None:
                break
            width, height = declared
            if not width or not height:
                raise JpegHeaderError("the JPEG does not declare its width and height in its frame header")
            return width, height
    raise JpegHeaderError("the JPEG has no frame header (SOF) before its image data")


class FrameTooLarge(JpegHeaderError):
    """The JPEG declares more pixels than a live frame may have."""


def check_frame_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) of a JPEG no larger than `max_pixels`; FrameTooLarge or JpegHeaderError otherwise."""
    width, height = jpeg_size(data)
    if width * height > max_pixels:
        raise FrameTooLarge(
            f"the frame is {width}x{height} ({width * height:,} pixels); a live frame may have at most "
            f"{max_pixels:,} pixels (EMOJI_LIVE_MAX_FRAME_PIXELS): send JPEGs of about 640x480"
        )
    return width, height
