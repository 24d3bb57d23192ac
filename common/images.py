"""Photos (JPEG, PNG, WebP, HEIC/HEIF): sniffed by their first bytes, checked by their headers and structure
before anything decodes a pixel. Every uploaded file is hostile: a header may claim 30000x30000 pixels in a
1 MB file, a file may end half-way, a web page may carry a picture inside it.

The gateway calls `probe_image` on the stored upload and the worker calls it again before it decodes
(`open_checked`): Pillow reads the header only, the size is checked against `ImageLimits`, and the file's
structure is walked (markers, chunks, boxes; no pixel data) so a truncated file is refused, not half-drawn.
GIF is refused on purpose: its frames are animation more often than photos, and its LZW streams are the
classic decompression bomb; the message says to convert it (PNG for a still, MP4 for an animation).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from common.errors import MediaRefused, VideoError
from common.jpeg import JpegHeaderError, JpegTruncated, frame_size, is_frame_header, jpeg_segments


@cache
def heif_supported() -> bool:
    """Whether HEIC/HEIF can be read (pillow-heif, a maintained binding of libheif, is installed); registers
    its Pillow plugin on first call."""
    try:
        import pillow_heif
    except ImportError:  # pragma: no cover - depends on the environment
        return False
    pillow_heif.register_heif_opener()
    return True


def supported() -> str:
    return "JPEG, PNG, WebP" + (", HEIC/HEIF" if heif_supported() else "")


def photo_formats() -> list[str]:
    """The photo formats this installation reads (names of IMAGE_FORMATS)."""
    return [name for name in IMAGE_FORMATS if name != "heif" or heif_supported()]


@dataclass(frozen=True)
class ImageFormat:
    name: str  # our name: jpeg, png, webp, heif
    pillow: str  # Pillow's format name, for reading and writing
    media_type: str
    extension: str


IMAGE_FORMATS = {
    "jpeg": ImageFormat("jpeg", "JPEG", "image/jpeg", "jpg"),
    "png": ImageFormat("png", "PNG", "image/png", "png"),
    "webp": ImageFormat("webp", "WEBP", "image/webp", "webp"),
    "heif": ImageFormat("heif", "HEIF", "image/heic", "heic"),
}
# ISO-BMFF brands of still HEIF images (an MP4 has an ftyp box too: brands tell them apart).
HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"mif2", b"heif")


@dataclass(frozen=True)
class ImageLimits:
    """What one photo may cost to decode (docs/settings.md: EMOJI_MAX_IMAGE_SIDE, EMOJI_MAX_IMAGE_PIXELS)."""

    max_side: int = 12_000
    max_pixels: int = 50_000_000

    @classmethod
    def from_settings(cls, settings) -> ImageLimits:
        return cls(max_side=settings.max_image_side, max_pixels=settings.max_image_pixels)


@dataclass(frozen=True)
class ImageInfo:
    """A photo as the pipeline needs it; width and height as displayed (EXIF orientation applied)."""

    format: str
    width: int
    height: int
    orientation: int = 1
    has_alpha: bool = False
    kind: str = "image"
    frames: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def sniff_image(head: bytes) -> str | None:
    """The image format the first bytes say ("gif" too, to refuse it by name), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head[4:8] == b"ftyp" and (head[8:12] in HEIF_BRANDS or _compatible_heif(head)):
        return "heif"
    return None


def _compatible_heif(head: bytes) -> bool:
    size = int.from_bytes(head[0:4], "big")
    brands = head[16 : min(size, len(head))]
    return any(brands[i : i + 4] in (b"heic", b"mif1") for i in range(0, len(brands) - 3, 4))


def markup_kind(head: bytes) -> str | None:
    """The markup ("SVG" or "HTML") when the file is a text document (which may carry a picture inside it)."""
    text = head[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if b"<svg" in text:
        return "SVG"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<img", b"<?xml", b"<!--")):
        return "HTML" if b"<svg" not in text else "SVG"
    return None


def not_a_photo(head: bytes, what: str = "the file") -> VideoError:
    """The refusal for a file that is neither a photo nor (the caller decided) a video."""
    markup = markup_kind(head)
    if markup:
        return VideoError(
            f"{what} is an {markup} document, not a photo or a video; if it shows a picture, save the "
            f"picture itself ({supported()}) and upload that"
        )
    return VideoError(f"{what} is not a photo we can read ({supported()})")


def refuse_image(kind: str) -> VideoError:
    """The refusal of an image format we recognise but do not take."""
    if kind == "gif":
        return VideoError(
            "GIF files are not accepted (an animated GIF is a video, and GIF is no photo format); "
            "convert a still to PNG or JPEG, an animation to MP4, and upload that"
        )
    return VideoError(
        f"{kind.upper()} photos cannot be read on this server; convert it to JPEG and upload that"
    )


def probe_image(path: Path, limits: ImageLimits) -> ImageInfo:
    """Check the photo at `path` without decoding it: format, size against `limits`, whole structure.
    VideoError (415) if it is no photo we read or damaged, MediaRefused (422) if it is over a limit."""
    from PIL import Image, UnidentifiedImageError

    with open(path, "rb") as handle:
        head = handle.read(64)
        kind = sniff_image(head)
        if kind == "gif" or (kind == "heif" and not heif_supported()):
            raise refuse_image(kind)
        if kind is None:
            raise not_a_photo(head)
        declared = check_structure(handle, kind)
    if declared is not None:
        check_size(*declared, limits)  # before Pillow reads anything: its own bomb guard fires on open
    try:
        with Image.open(path, formats=[IMAGE_FORMATS[kind].pillow]) as image:
            width, height = image.size  # from the header; nothing is decoded yet
            check_size(width, height, limits)
            if declared is not None and declared != (width, height):
                raise VideoError(f"the photo's headers disagree on its size ({declared} and {image.size})")
            orientation = int(image.getexif().get(0x0112, 1) or 1)
            # An animated PNG; a JPEG's extra pictures (MPO: depth, gain map) and a HEIF's are not frames.
            animated = getattr(image, "n_frames", 1) > 1 and kind == "png"
            alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        detail = str(exc).replace(str(path), "the file")  # never our storage path in a user's message
        message = f"the photo's header cannot be read ({detail}); it is damaged, upload another copy"
        raise VideoError(message) from exc
    except Image.DecompressionBombError as exc:  # Pillow's own guard, for a HEIF far over our limit
        raise MediaRefused(
            "image_pixels",
            f"the photo is far too large to decode ({exc}); the limit is {limits.max_pixels:,} pixels "
            "(EMOJI_MAX_IMAGE_PIXELS). Scale it down and upload it again",
        ) from exc
    if animated:
        raise VideoError("the image is animated; upload it as a video (MP4) or pick one frame as a photo")
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return ImageInfo(kind, width, height, orientation if 1 <= orientation <= 8 else 1, alpha)


def check_size(width: int, height: int, limits: ImageLimits) -> None:
    if width <= 0 or height <= 0:
        raise MediaRefused(
            "image_dimensions", f"the photo's size ({width}x{height}) is not usable; upload another copy"
        )
    if max(width, height) > limits.max_side:
        raise MediaRefused(
            "image_dimensions",
            f"the photo is {width}x{height}; the limit is {limits.max_side} pixels on either side "
            "(EMOJI_MAX_IMAGE_SIDE). Scale it down and upload it again",
        )
    if width * height > limits.max_pixels:
        raise MediaRefused(
            "image_pixels",
            f"the photo has {width * height:,} pixels ({width}x{height}); the limit is {limits.max_pixels:,} "
            "(EMOJI_MAX_IMAGE_PIXELS). Scale it down and upload it again",
        )


def _truncated() -> VideoError:
    return VideoError("the photo is cut off (the file ends before the picture does); upload a complete copy")


def check_structure(handle, kind: str) -> tuple[int, int] | None:
    """Walk the file's markers, chunks or boxes (never its pixel data): VideoError if it ends too early.
    Answers the size its header declares (None for HEIF, whose size Pillow reads from deep in its boxes)."""
    size = handle.seek(0, 2)
    if size < 32:
        raise _truncated()
    with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        walk = {"jpeg": _jpeg_walk, "png": _png_walk, "webp": _webp_walk, "heif": _boxes_walk}[kind]
        return walk(data, size)


def _jpeg_walk(data, size: int) -> tuple[int, int]:
    """Segments up to the first scan, then an end-of-image marker after it (scan data never holds FF D9:
    a literal FF is stuffed as FF 00). Data after the end (a phone's motion photo) is allowed."""
    declared = None
    try:
        for marker, at, length in jpeg_segments(data, size):
            if is_frame_header(marker):
                declared = declared or frame_size(data, at, size)
            if marker == 0xDA:  # start of scan
                if declared is None:
                    raise VideoError("the JPEG has no picture header; upload another copy")
                if data.find(b"\xff\xd9", at + 2 + length) < 0:
                    raise _truncated()
                return declared
            if marker == 0xD9:
                raise VideoError("the JPEG ends before its picture starts; upload another copy")
    except JpegTruncated:
        raise _truncated() from None
    except JpegHeaderError:
        raise VideoError("the JPEG's structure is damaged; upload another copy") from None
    raise _truncated()


def _png_walk(data, size: int) -> tuple[int, int]:
    if data[12:16] != b"IHDR":
        raise VideoError("the PNG has no header chunk; upload another copy")
    declared = struct.unpack(">II", data[16:24])
    at, seen_data = 8, False
    while at + 12 <= size:
        length = int.from_bytes(data[at : at + 4], "big")
        chunk = bytes(data[at + 4 : at + 8])
        if chunk == b"IEND":
            if seen_data:
                return declared
            break
        seen_data = seen_data or chunk == b"IDAT"
        at += 12 + length
    raise _truncated()


def _webp_walk(data, size: int) -> tuple[int, int]:
    if int.from_bytes(data[4:8], "little") + 8 > size:
        raise _truncated()
    chunk = bytes(data[12:16])
    if chunk == b"VP8X":
        if data[20] & 0x02:
            raise VideoError("the image is animated; upload it as a video (MP4) or pick one frame as a photo")
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L":  # signature byte, then 14 bits of width - 1 and 14 of height - 1
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # key frame start code, then 14-bit sizes
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    raise VideoError("the WebP file's header is damaged; upload another copy")


def _boxes_walk(data, size: int) -> None:
    """ISO-BMFF (HEIF): every top-level box lies inside the file."""
    at, names = 0, set()
    while at < size:
        if at + 8 > size:
            raise _truncated()
        box_size, name = struct.unpack(">I4s", data[at : at + 8])
        if box_size == 1:
            if at + 16 > size:
                raise _truncated()
            box_size = struct.unpack(">Q", data[at + 8 : at + 16])[0]
        elif box_size == 0:
            box_size = size - at
        if box_size < 8 or at + box_size > size:
            raise _truncated()
        names.add(name)
        at += box_size
    if b"meta" not in names:
        raise _truncated()
    return None
