"""Limits on what one video may cost, checked on ffprobe's answer before a job is queued.

A header can claim any size, any number of streams, any codec; decoding pays for what it claims. Each limit
is a setting (docs/settings.md); a refused upload gets 422 with a code naming the limit and a message with
its value and the setting that changes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import MediaRefused


@dataclass(frozen=True)
class MediaLimits:
    max_width: int = 4096
    max_height: int = 4096
    max_frame_pixels: int = 3840 * 2160
    max_frames: int = 54_000
    max_duration_s: float = 1200.0
    max_streams: int = 8
    allowed_video_codecs: tuple[str, ...] = ()
    allowed_containers: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings) -> MediaLimits:
        return cls(
            max_width=settings.max_video_width,
            max_height=settings.max_video_height,
            max_frame_pixels=settings.max_frame_pixels,
            max_frames=settings.max_video_frames,
            max_duration_s=settings.max_video_duration_s,
            max_streams=settings.max_streams,
            allowed_video_codecs=tuple(settings.allowed_video_codecs),
            allowed_containers=tuple(settings.allowed_containers),
        )


def video_streams(data: dict) -> list[dict]:
    """The file's video tracks; cover art (an attached picture) is not one."""
    return [
        s for s in data.get("streams", [])
        if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")
    ]


def check_media(data: dict, limits: MediaLimits) -> None:
    """Raise MediaRefused for the first limit ffprobe's `data` (-show_format -show_streams
    -count_packets) is over; cheap checks on the header first."""
    video = _check_tracks(data, limits)
    _check_dimensions(video, limits)
    _check_formats(data, video, limits)
    _check_length(data, video, limits)


def _check_tracks(data: dict, limits: MediaLimits) -> dict:
    """The one video stream; refuses too many streams or other than one video track."""
    streams = data.get("streams", [])
    if len(streams) > limits.max_streams:
        raise MediaRefused(
            "too_many_streams",
            f"the file has {len(streams)} streams (video, audio, subtitles, attachments); the limit is "
            f"{limits.max_streams} (EMOJI_MAX_STREAMS). Remove the extra tracks and upload it again",
        )
    videos = video_streams(data)
    if len(videos) != 1:
        raise MediaRefused(
            "video_track_count",
            f"the file has {len(videos)} video tracks; exactly one is needed. Keep one and upload it again",
        )
    return videos[0]


def _check_dimensions(video: dict, limits: MediaLimits) -> None:
    """The frame size: usable, within the limits either way round, not too many pixels."""
    width, height = int(video.get("width") or 0), int(video.get("height") or 0)
    if width <= 0 or height <= 0:
        raise MediaRefused(
            "video_dimensions",
            f"the video's size ({width}x{height}) is not usable: its header is damaged or claims a size "
            "no decoder accepts; upload another file",
        )
    if max(width, height) > max(limits.max_width, limits.max_height) or min(width, height) > min(
        limits.max_width, limits.max_height
    ):
        raise MediaRefused(
            "video_dimensions",
            f"the video is {width}x{height}; the limit is {limits.max_width}x{limits.max_height} "
            "either way round (EMOJI_MAX_VIDEO_WIDTH, EMOJI_MAX_VIDEO_HEIGHT). "
            "Scale it down and upload it again",
        )
    if width * height > limits.max_frame_pixels:
        raise MediaRefused(
            "frame_pixels",
            f"the video's frames have {width * height:,} pixels ({width}x{height}); the limit is "
            f"{limits.max_frame_pixels:,} (EMOJI_MAX_FRAME_PIXELS). Scale it down and upload it again",
        )


def _check_formats(data: dict, video: dict, limits: MediaLimits) -> None:
    """The container and the video codec against their allow-lists."""
    formats = set(data.get("format", {}).get("format_name", "").split(","))
    if limits.allowed_containers and not formats & set(limits.allowed_containers):
        raise MediaRefused(
            "container_not_allowed",
            f"the container {data.get('format', {}).get('format_name', '?')!r} is not accepted "
            f"(EMOJI_ALLOWED_CONTAINERS: {', '.join(limits.allowed_containers)}); convert it to MP4",
        )
    codec = video.get("codec_name", "unknown")
    if limits.allowed_video_codecs and codec not in limits.allowed_video_codecs:
        raise MediaRefused(
            "codec_not_allowed",
            f"the video codec {codec!r} is not accepted (EMOJI_ALLOWED_VIDEO_CODECS: "
            f"{', '.join(limits.allowed_video_codecs)}); convert it to H.264 MP4",
        )


def _check_length(data: dict, video: dict, limits: MediaLimits) -> None:
    """The frame count and the duration (the longer of the stream's and the container's)."""
    frames = int(video.get("nb_read_packets") or video.get("nb_frames") or 0)
    if frames > limits.max_frames:
        raise MediaRefused(
            "too_many_frames",
            f"the video has {frames:,} frames; the limit is {limits.max_frames:,} (EMOJI_MAX_VIDEO_FRAMES). "
            "Cut it into shorter clips and upload them one by one",
        )
    duration = max(float(video.get("duration") or 0.0), float(data.get("format", {}).get("duration") or 0.0))
    if duration > limits.max_duration_s:
        raise MediaRefused(
            "too_long",
            f"the video lasts {duration:.0f} s; the limit is {limits.max_duration_s:.0f} s "
            "(EMOJI_MAX_VIDEO_DURATION_S). Cut it into shorter clips and upload them one by one",
        )
