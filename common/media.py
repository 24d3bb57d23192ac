"""Probing uploaded videos with ffprobe, locked down: every uploaded file is hostile.

Every ffmpeg/ffprobe call on an upload reads that one file only: the `file` protocol alone, and only
container formats that cannot point at other files (no HLS, no concat lists, no image sequences).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

from common import processes
from common.errors import TimedOut, VideoError
from common.images import heif_supported, markup_kind, not_a_photo, refuse_image, sniff_image
from common.media_policy import MediaLimits, check_media, video_streams

# Demuxer names as ffmpeg spells them; "mov" covers mp4/m4v/3gp, "matroska" covers webm.
ALLOWED_INPUT_FORMATS = ("mov", "mp4", "matroska", "webm", "avi", "mpegts", "flv", "mpeg", "ogg", "asf")
PROBE_TIMEOUT_S = 60


def safe_input(path: Path, input_format: str | None = None) -> tuple[str, dict[str, str]]:
    """The input URL and the ffmpeg/ffprobe input options that confine the read to `path` (and, once probed,
    to its format)."""
    options = {"protocol_whitelist": "file", "format_whitelist": ",".join(ALLOWED_INPUT_FORMATS)}
    if input_format:
        options["f"] = input_format.split(",")[0]
    # "file:" stops a name like "pipe:0" or "http://…" from being read as another protocol.
    return f"file:{Path(path).resolve()}", options


def safe_input_args(path: Path, input_format: str | None = None) -> list[str]:
    """`safe_input` as command-line arguments, ending with `-i URL`."""
    url, options = safe_input(path, input_format)
    return [arg for name, value in options.items() for arg in (f"-{name}", value)] + ["-i", url]


@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline needs to know of a video; width and height as displayed (rotation applied)."""

    width: int
    height: int
    fps: float
    frames: int
    duration_s: float
    has_audio: bool
    audio_codec: str | None
    video_codec: str
    format_name: str
    rotation: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> VideoInfo:
        return cls(**data)


def run_ffprobe(path: Path, *extra: str) -> dict:
    """ffprobe's JSON for the upload at `path`, read locked down; VideoError if it cannot be read."""
    args = ["ffprobe", "-v", "error", "-of", "json", *extra]
    # ffprobe takes its input without -i too, but -i keeps the same locked-down form as ffmpeg.
    cmd = args + safe_input_args(path)
    try:
        result = processes.run(cmd, PROBE_TIMEOUT_S, "ffprobe")
    except TimedOut as exc:
        raise VideoError("the file took too long to read; it may be damaged") from exc
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        raise VideoError(
            "the file is not a video we can read (supported: MP4, MOV, MKV, WebM, AVI, MPEG-TS, FLV; "
            "photos: JPEG, PNG, WebP, HEIC)"
            + (f": {detail[-1][:200]}" if detail else "")
        )
    return json.loads(result.stdout or b"{}")


def _rotation(stream: dict) -> int:
    for side in stream.get("side_data_list", []):
        if "rotation" in side:
            return int(round(float(side["rotation"]))) % 360
    return int(stream.get("tags", {}).get("rotate", 0)) % 360


def probe(path: Path, limits: MediaLimits | None = None) -> VideoInfo:
    """Read the container and the first video stream; raise VideoError if it is not a usable video, and
    MediaRefused if it is over one of `limits` (common/media_policy.py)."""
    data = run_ffprobe(
        path, "-count_packets", "-show_format", "-show_streams"
    )
    streams = data.get("streams", [])
    videos = video_streams(data)
    if not videos:
        raise VideoError("the file has no video stream; upload a video file")
    if limits is not None:
        check_media(data, limits)
    video = videos[0]
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    frames = int(video.get("nb_read_packets") or 0)
    duration = float(video.get("duration") or data.get("format", {}).get("duration") or 0.0)
    if frames <= 0 or duration <= 0:
        raise VideoError("the video has no frames; upload a video that plays")
    rate = video.get("avg_frame_rate") or video.get("r_frame_rate") or "0/1"
    fps = float(Fraction(rate)) if rate not in ("0/0", "0/1") else frames / duration
    width, height = int(video.get("width") or 0), int(video.get("height") or 0)
    if width <= 0 or height <= 0:
        raise VideoError(f"the video's size ({width}x{height}) is not usable; its header may be damaged")
    rotation = _rotation(video)
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(
        width=width,
        height=height,
        fps=fps,
        frames=frames,
        duration_s=duration,
        has_audio=audio is not None,
        audio_codec=audio.get("codec_name") if audio else None,
        video_codec=video.get("codec_name", "unknown"),
        format_name=data.get("format", {}).get("format_name", ""),
        rotation=rotation,
    )


# The first bytes of every container in ALLOWED_INPUT_FORMATS. An upload that goes straight to an object
# store cannot be probed by the gateway (ffprobe reads local files only): these let it refuse what is
# certainly not a video (a photo, a document, a playlist) at once; the worker's probe decides the rest.
_MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid")
SNIFF_BYTES = 400


def media_kind(head: bytes) -> str | None:
    """An upload's kind by its first bytes: "image" (a photo format we take), "video" (a container we take)
    or None for neither; VideoError, saying what to do, for what the first bytes already refuse: GIF, an
    HTML or SVG page (which may wrap a picture), HEIC where no HEIF reader is installed."""
    image = sniff_image(head)
    if image == "gif" or (image == "heif" and not heif_supported()):
        raise refuse_image(image)
    if image:
        return "image"
    if markup_kind(head):
        raise not_a_photo(head)
    return "video" if looks_like_video(head) else None


def looks_like_video(head: bytes) -> bool:
    """Whether the file's first bytes are those of a container we accept (a weak, cheap test)."""
    return (
        head[4:8] in _MP4_BOXES  # mov, mp4, 3gp
        or head.startswith(b"\x1a\x45\xdf\xa3")  # matroska, webm
        or (head.startswith(b"RIFF") and head[8:12] == b"AVI ")
        or (head[0:1] == head[188:189] == head[376:377] == b"\x47")  # MPEG-TS: a sync byte every 188
        or head.startswith(b"FLV")
        or head.startswith(b"\x00\x00\x01\xba")  # MPEG program stream
        or head.startswith(b"OggS")
        or head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11")  # ASF (wmv)
    )


@dataclass(frozen=True)
class StreamTiming:
    """Where the video stream starts (s) relative to the container's clock, and how its pixels are stored."""

    video_start_s: float
    container_start_s: float
    pix_fmt: str | None
    full_range: bool


def stream_timing(path: Path) -> StreamTiming:
    data = run_ffprobe(
        path,
        "-select_streams",
        "v:0",
        "-show_entries",
        "stream=start_time,pix_fmt,color_range:format=start_time",
    )
    stream_info = (data.get("streams") or [{}])[0]
    stream = stream_info.get("start_time")
    container = data.get("format", {}).get("start_time")
    video_start = float(stream) if stream not in (None, "N/A") else 0.0
    container_start = float(container) if container not in (None, "N/A") else video_start
    pix_fmt = stream_info.get("pix_fmt") or None
    full_range = stream_info.get("color_range") == "pc" or (pix_fmt or "").startswith("yuvj")
    return StreamTiming(video_start, container_start, pix_fmt, full_range)


def frame_index(path: Path) -> tuple[list[float], list[int]]:
    """(every frame's presentation time in ms from the stream's start in display order, the indices of the
    keyframes among them), from one pass over the packets (nothing is decoded)."""
    data = run_ffprobe(
        path, "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags:stream=start_time"
    )
    start = float((data.get("streams") or [{}])[0].get("start_time") or 0.0)
    packets = [p for p in data.get("packets", []) if p.get("pts_time") not in (None, "N/A")]
    times = sorted(round((float(p["pts_time"]) - start) * 1000.0, 3) for p in packets)
    position = {t: i for i, t in enumerate(times)}
    keys = [p for p in packets if "K" in (p.get("flags") or "")]
    return times, sorted({position[round((float(p["pts_time"]) - start) * 1000.0, 3)] for p in keys})
