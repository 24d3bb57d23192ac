"""Photos for tests, made here with Pillow from skimage's astronaut (nothing downloaded): good ones in every
format, and hostile ones (a huge declared size, cut off, wrapped in a web page, a GIF bomb)."""

from __future__ import annotations

import base64
import io
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

# Where the astronaut's face is in skimage.data.astronaut() (512x512), by eye, generous.
ASTRONAUT_FACE_XYXY = (150, 40, 300, 230)
ORIENTATION = 0x0112


def astronaut(size: int = 512) -> Image.Image:
    image = Image.fromarray(data.astronaut())
    return image if size == 512 else image.resize((size, size), Image.Resampling.LANCZOS)


def save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


def encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def rotated_jpeg(path: Path) -> Path:
    """The astronaut stored lying on its side (pixels turned 90 degrees counter-clockwise) with EXIF
    Orientation 6, which tells viewers to turn it 90 degrees clockwise to show it upright (as a phone held
    upright stores its pictures)."""
    image = astronaut().transpose(Image.Transpose.ROTATE_90)  # counter-clockwise: 6 undoes it
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    return save(image, path, format="JPEG", quality=92, exif=exif.tobytes())


def transparent_png(path: Path) -> Path:
    """The astronaut with a fully transparent border of 64 px around it (so a badge can fall on it)."""
    rgba = np.zeros((640, 640, 4), np.uint8)
    rgba[64:576, 64:576, :3] = data.astronaut()
    rgba[64:576, 64:576, 3] = 255
    return save(Image.fromarray(rgba, "RGBA"), path, format="PNG")


def huge_jpeg(path: Path, side: int = 30000, size_bytes: int = 1_000_000) -> Path:
    """A real small JPEG whose SOF header claims side x side, padded with comments to about `size_bytes`."""
    jpeg = bytearray(encoded(astronaut(64), "JPEG"))
    at = next(jpeg.find(m) for m in (b"\xff\xc0", b"\xff\xc2") if jpeg.find(m) >= 0)
    jpeg[at + 5 : at + 9] = struct.pack(">HH", side, side)  # marker, length, precision, height, width
    comment = b"\xff\xfe" + struct.pack(">H", 65000) + bytes(64998)
    padding = comment * max(size_bytes // len(comment), 0)
    return _write(path, bytes(jpeg[:2]) + padding + bytes(jpeg[2:]))


def huge_png(path: Path, side: int = 100_000) -> Path:
    """A real small PNG whose IHDR claims side x side (CRC fixed, so only the size is wrong)."""
    png = bytearray(encoded(astronaut(64), "PNG"))
    png[16:24] = struct.pack(">II", side, side)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return _write(path, bytes(png))


def truncated(path: Path, image_format: str = "JPEG", keep: float = 0.6) -> Path:
    whole = encoded(astronaut(), image_format)
    return _write(path, whole[: int(len(whole) * keep)])


def svg_wrapper(path: Path) -> Path:
    jpeg = base64.b64encode(encoded(astronaut(128), "JPEG")).decode()
    return _write(
        path,
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="128" height="128">'
        + f'<image href="data:image/jpeg;base64,{jpeg}" width="128" height="128"/></svg>\n'.encode(),
    )


def html_wrapper(path: Path) -> Path:
    png = base64.b64encode(encoded(astronaut(128), "PNG")).decode()
    page = f'<!DOCTYPE html>\n<html><body><img src="data:image/png;base64,{png}"></body></html>\n'
    return _write(path, page.encode())


def gif_bomb(path: Path) -> Path:
    """A GIF that claims a 65535x65535 canvas and frame: a few hundred bytes that would decode to 4 GiB."""
    screen = struct.pack("<HHBBB", 65535, 65535, 0x80, 0, 0) + bytes(6)  # 2-colour global table
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0)
    lzw = b"\x02" + b"\xff" + bytes(255) * 1 + b"\x00"
    return _write(path, b"GIF89a" + screen + frame + lzw + b"\x3b")


def still_clip(source: Path, path: Path, seconds: float = 2.0) -> Path:
    """The photo as a still H.264 clip (10 fps, yuv420p, even sides): the same picture as a video."""
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-loop",
            "1",
            "-i",
            str(source),
            "-t",
            str(seconds),
            "-r",
            "10",
            "-vf",
            "pad=ceil(iw/2)*2:ceil(ih/2)*2",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            str(path),
        ],
        check=True,
    )
    return path


# The video is a lossy H.264 re-encoding of the photo: its faces' boxes move by under a pixel and their
# crops by a few grey levels, which can flip a face whose two likeliest emotions are this close. A second
# code path (another crop, detector or classifier) would disagree on clear faces too.
NEAR_TIE = 0.1


def same_emoji(photo_faces: list[dict], video_faces: list[dict]) -> list[tuple[dict, dict | None, str]]:
    """Each face of a video frame with the photo's face at the same place (IoU over 0.5, else None) and
    whether the two show the same emoji: "same", "near tie" (the video's emoji is within NEAR_TIE of the
    photo's likeliest emotion, in the photo's own probabilities) or "different"; faces as in the timeline."""
    from worker.detection import iou_matrix

    boxes = np.asarray([f["box_xyxy"] for f in photo_faces], np.float32).reshape(-1, 4)
    pairs = []
    for face in video_faces:
        overlaps = iou_matrix(np.asarray([face["box_xyxy"]], np.float32), boxes)[0]
        best = int(np.argmax(overlaps)) if len(overlaps) else -1
        match = photo_faces[best] if best >= 0 and overlaps[best] > 0.5 else None
        if match is None:
            verdict = "different"
        elif match["shown_emotion"] == face["shown_emotion"]:
            verdict = "same"
        else:
            odds = match["smoothed_probabilities"]
            close = odds[face["shown_emotion"]] >= odds[match["shown_emotion"]] - NEAR_TIE
            verdict = "near tie" if close else "different"
        pairs.append((face, match, verdict))
    return pairs


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


HOSTILE = {
    "huge.jpg": (huge_jpeg, 422, ("image_pixels", "image_dimensions")),
    "huge.png": (huge_png, 422, ("image_pixels", "image_dimensions")),
    "cut.jpg": (truncated, 415, ("invalid_video",)),
    "cut.png": (lambda p: truncated(p, "PNG"), 415, ("invalid_video",)),
    "wrapped.svg": (svg_wrapper, 415, ("invalid_video",)),
    "wrapped.jpg": (html_wrapper, 415, ("invalid_video",)),
    "bomb.gif": (gif_bomb, 415, ("invalid_video",)),
}
