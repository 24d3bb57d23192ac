"""Video in and out for the worker: one in-process decode per batch (PyAV, libavcodec), frames handed over
as decoded (yuv420p planes, no colour conversion, no pipe), one in-process libx264 encode per batch, and the
final join of our pieces with the original audio (the ffmpeg program: stream copy only).

Why PyAV rather than ffmpeg processes with raw-video pipes: the same libraries do the same work, but every
frame crossed two pipes (1.4 MB per 720p frame, twice) and the encoder could not be handed the decoded frame
itself; measured in docs/benchmarks.md. Every read of the upload stays locked down as in `common.media`: the
`file` protocol only, the probed demuxer only, chosen among `ALLOWED_INPUT_FORMATS`.
"""

from __future__ import annotations

import bisect
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from common import processes
from common.errors import VideoError
from common.media import ALLOWED_INPUT_FORMATS, safe_input

if TYPE_CHECKING:
    import av

logger = logging.getLogger(__name__)

FFMPEG = "ffmpeg"
# Limited-range luma (16..235) to full range (0..255), rounded as swscale's gray conversion does.
FULL_RANGE_LUT = np.clip(np.round((np.arange(256) - 16) * 255 / 219), 0, 255).astype(np.uint8)
# A decoded frame whose time is this close to a planned one is that frame (ffprobe prints microseconds).
TIME_TOLERANCE_MS = 0.5


def even(value: int) -> int:
    return max(2, int(value) - int(value) % 2)


def frame_rate(fps: float) -> Fraction:
    """The probed rate as a rational, e.g. 29.97002997 -> 30000/1001."""
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise VideoError(f"the video's frame rate ({fps}) is not usable")
    return rate


def atomic_target(path: Path) -> Path:
    """A temporary name beside `path`, unique per writer, so two runs of one task never share a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    return Path(tmp)


def remove_stale_temps(path: Path) -> int:
    """Remove temporary files a killed run left beside `path` (see atomic_target); call only while holding
    the batch's lock, when no other run can be writing them. Returns how many were removed."""
    removed = 0
    for tmp in Path(path).parent.glob(f".{Path(path).stem}.*{Path(path).suffix}"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def open_upload(path: Path, input_format: str) -> av.container.InputContainer:
    """The upload opened for demuxing, confined like `common.media.safe_input`."""
    import av

    demuxer = input_format.split(",")[0]
    if demuxer not in ALLOWED_INPUT_FORMATS:
        raise VideoError(f"the container format {demuxer!r} is not supported; upload MP4, MOV, MKV or WebM")
    try:
        return av.open(
            f"file:{Path(path).resolve()}",
            format=demuxer,
            options={"protocol_whitelist": "file", "format_whitelist": ",".join(ALLOWED_INPUT_FORMATS)},
        )
    except av.FFmpegError as exc:
        raise VideoError(f"the file is not a video we can read: {exc}") from exc


@dataclass(frozen=True)
class DecodeWindow:
    """What one batch decodes: from the keyframe at or before `first` (decoded to reach it, not analysed)
    through `end - 1`; frames [first, start) are the pre-roll (analysed, not drawn), [start, end) the batch's
    own (analysed, drawn, encoded)."""

    keyframe: int
    first: int
    start: int
    end: int

    @property
    def preroll(self) -> int:
        return self.start - self.first


class _Overshot(Exception):
    """The demuxer's seek landed after the wanted frame (an index it did not describe well)."""


def decode_frames(
    path: Path, input_format: str, times_ms: list[float], window: DecodeWindow, threads: int = 1
) -> Iterator[tuple[int, av.VideoFrame]]:
    """(index, frame) for the window's frames [first, end) as decoded (coded size, no rotation; see
    `DisplayFrames`), decoding from its keyframe; fewer if the video ends first. `times_ms` are every frame's
    times (the plan's), which tell which decoded frame is which.

    Frames between the keyframe and `first` are decoded only as far as others need them: the decoder skips
    those no other frame refers to (exact: nothing is drawn from them)."""
    first, end = window.first, window.end
    try:
        yield from _decode(path, input_format, times_ms, window.keyframe, first, end, threads)
    except _Overshot:
        logger.warning("seek to frame %d of %s overshot; decoding from the start", window.keyframe, path)
        yield from _decode(path, input_format, times_ms, 0, first, end, threads)


def _planned_index(times_ms: list[float], t_ms: float) -> int | None:
    """The plan's index of the frame shown at `t_ms`, if the plan has one there."""
    i = bisect.bisect_left(times_ms, t_ms - TIME_TOLERANCE_MS)
    return i if i < len(times_ms) and abs(times_ms[i] - t_ms) <= TIME_TOLERANCE_MS else None


def _decode(path, input_format, times_ms, keyframe, first, end, threads):
    import av

    container = open_upload(path, input_format)
    try:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = threads
        stream.thread_type = "AUTO" if threads != 1 else "SLICE"
        base = stream.time_base
        origin = stream.start_time or 0
        wanted_ms = times_ms[first]
        if keyframe > 0:
            container.seek(origin + int(times_ms[keyframe] / 1000 / base), stream=stream, backward=True)
        index = None
        produced = 0
        damaged = 0
        for packet in container.demux(stream):
            before_first = (
                index is None
                and packet.pts is not None
                and float((packet.pts - origin) * base) * 1000 < wanted_ms - TIME_TOLERANCE_MS
            )
            stream.codec_context.skip_frame = "NONREF" if before_first else "DEFAULT"
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                # A damaged packet: its frame is lost (the task counts and reports lost frames), go on.
                damaged += 1
                logger.warning("a damaged packet of %s after frame %s: %s", path, index, exc)
                continue
            for frame in frames:
                t_ms = float((frame.pts - origin) * base) * 1000 if frame.pts is not None else None
                located = _frame_index(t_ms, index, times_ms, keyframe, first, end, damaged)
                if located is None:
                    continue
                index = located
                if index >= end:
                    return
                produced += 1
                yield index, frame
    except av.FFmpegError as exc:
        logger.warning("decoding %s stopped after frame %s: %s", path, index, exc)
    finally:
        container.close()
    if produced < end - first:
        logger.warning("decoder gave %d of %d frames of %s", produced, end - first, path)


def _frame_index(t_ms, index, times_ms, keyframe, first, end, damaged) -> int | None:
    """The plan's index of a decoded frame shown at `t_ms` (None if it has no time), `index` being the
    previous one's (None before the first wanted frame): None to skip it (before `first`), `end` or more to
    stop; raises _Overshot where the seek landed past `first`."""
    if index is None and first == 0 and keyframe == 0 and not damaged:
        return 0  # from the start: the first frame is frame 0, whatever its time says
    if index is not None:
        # After a damaged stretch the frame's own time says which it is.
        located = _planned_index(times_ms, t_ms) if damaged and t_ms is not None else None
        return located if located is not None and located > index else index + 1
    wanted_ms = times_ms[first]
    t_ms = wanted_ms if t_ms is None else t_ms
    if t_ms < wanted_ms - TIME_TOLERANCE_MS:
        return None
    if t_ms <= wanted_ms + TIME_TOLERANCE_MS:
        return first
    if keyframe > 0 and not damaged:
        raise _Overshot()
    # The wanted frames were damaged: go on from the first one that decoded; none planned there: stop.
    located = _planned_index(times_ms, t_ms)
    return end if located is None else located


class DisplayFrames:
    """Turns decoded frames into what is drawn and encoded: yuv420p, upright (the container's rotation
    applied, as ffmpeg's player does), even-sized. The common case (yuv420p, unrotated, even) passes the
    decoded frame itself through, untouched."""

    def __init__(self, rotation: int, output_size: tuple[int, int]) -> None:
        # probe() gives the display matrix's counter-clockwise angle; showing it upright turns the other way.
        self.turn = {
            90: cv2.ROTATE_90_COUNTERCLOCKWISE,
            180: cv2.ROTATE_180,
            270: cv2.ROTATE_90_CLOCKWISE,
        }.get(rotation % 360)
        self.width, self.height = output_size
        sideways = rotation % 180 == 90
        self.coded = (self.height, self.width) if sideways else (self.width, self.height)

    def __call__(self, frame: av.VideoFrame) -> av.VideoFrame:
        import av

        if frame.format.name != "yuv420p" or (frame.width, frame.height) != self.coded:
            frame = frame.reformat(width=self.coded[0], height=self.coded[1], format="yuv420p")
        if self.turn is None:
            return frame
        planes = [cv2.rotate(plane_array(frame, i), self.turn) for i in range(3)]
        flat = np.concatenate([p.reshape(-1) for p in planes]).reshape(self.height * 3 // 2, self.width)
        turned = av.VideoFrame.from_ndarray(flat, format="yuv420p")
        turned.pts, turned.time_base = frame.pts, frame.time_base
        return turned


def plane_array(frame: av.VideoFrame, index: int) -> np.ndarray:
    """A writable [H, W] view of one plane of a decoded frame (no copy; writes change the frame)."""
    plane = frame.planes[index]
    rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
    return rows[:, : plane.width]


class PieceWriter:
    """One in-process libx264 encode; frames keep the source's own timestamps (VFR stays VFR), counted from
    the piece's first frame. `close()` finishes the MP4 and moves it into place atomically."""

    def __init__(
        self,
        target: Path,
        width: int,
        height: int,
        fps: float,
        time_base: Fraction,
        preset: str = "veryfast",
        crf: int = 23,
        threads: int = 0,
    ) -> None:
        import av

        self.target = Path(target)
        self.tmp = atomic_target(self.target)
        self.frames = 0
        self.time_base = time_base
        self.container = av.open(str(self.tmp), "w", format="mp4")
        stream = self.container.add_stream("libx264", rate=frame_rate(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        stream.codec_context.thread_count = threads
        stream.options = {"preset": preset, "crf": str(crf)}
        self.stream = stream
        self.size = (width, height)

    def write(self, frame: av.VideoFrame, pts: int) -> None:
        import av

        if (frame.width, frame.height) != self.size:
            raise ValueError(
                f"expected a {self.size[0]}x{self.size[1]} frame, got {frame.width}x{frame.height}"
            )
        frame.pts, frame.time_base = pts, self.time_base
        # The source's frame types are not ours: x264 places its own keyframes.
        frame.pict_type = av.video.frame.PictureType.NONE
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self, before_replace=None) -> int:
        """Finish the encode and move the piece into place; returns the frames written. `before_replace`
        (e.g. a fencing check) runs just before the piece is put in place, and may raise to stop that."""
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()
        if before_replace is not None:
            before_replace()
        os.replace(self.tmp, self.target)
        return self.frames

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - already failing; the temporary file goes either way
            pass
        self.tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class JoinSource:
    """The upload as the join needs it: its first audio stream (none: `audio_codec` None) goes into the
    result, copied if MP4 takes its codec, else re-encoded to AAC; `video_offset_s` is how long after its
    audio the upload's video starts."""

    path: Path
    format_name: str
    audio_codec: str | None
    copy_audio_codecs: tuple[str, ...]
    video_offset_s: float = 0.0


def join_command(listing: Path, source: JoinSource, target: Path) -> list[str]:
    """ffmpeg's command line (built with ffmpeg-python) that joins the pieces named in `listing` into
    `target`, with the source's audio. Both inputs are read only as local files: the listing with the
    concat demuxer in its safe mode (plain names only), the upload as `common.media.safe_input` confines
    every read of an upload."""
    import ffmpeg

    offset = {"itsoffset": f"{source.video_offset_s:.6f}"} if source.video_offset_s > 0 else {}
    pieces = ffmpeg.input(f"file:{listing}", f="concat", safe=1, protocol_whitelist="file", **offset)
    streams, audio = [pieces["v:0"]], {}
    if source.audio_codec:
        url, options = safe_input(source.path, source.format_name)
        streams.append(ffmpeg.input(url, **options)["a:0"])
        copy = source.audio_codec in source.copy_audio_codecs
        audio = {"c:a": "copy"} if copy else {"c:a": "aac", "b:a": "192k"}
    video = {"c:v": "copy", "fps_mode": "passthrough"}
    output = ffmpeg.output(*streams, str(target), f="mp4", movflags="+faststart", **video, **audio)
    return output.global_args("-nostdin", "-hide_banner", "-loglevel", "error").overwrite_output().compile(
        cmd=FFMPEG
    )


def join_pieces(
    pieces: list[tuple[Path, float | None]], source: JoinSource, target: Path, timeout_s: float = 540.0
) -> None:
    """Join our pieces (no re-encode; each but the last lasts exactly its given seconds, so the frames keep
    the source's times), add the source's first audio stream; write `target` atomically (faststart)."""
    if not pieces:
        raise VideoError("there are no rendered pieces to join")
    folder = pieces[0][0].parent
    if any(p.parent != folder for p, _ in pieces):
        raise ValueError("all pieces must be in one folder")
    # Our own list of our own piece names.
    listing = atomic_target(folder / "concat.txt")
    lines = ["ffconcat version 1.0"]
    for path, duration_s in pieces:
        lines.append(f"file '{path.name}'")
        if duration_s is not None:
            lines.append(f"duration {duration_s:.6f}")
    listing.write_text("\n".join(lines) + "\n")
    tmp = atomic_target(target)
    cmd = join_command(listing, source, tmp)
    try:
        result = processes.run(cmd, timeout_s, "ffmpeg (joining)")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        listing.unlink(missing_ok=True)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        raise VideoError("ffmpeg could not join the video" + (f": {detail[-1][:300]}" if detail else ""))
    os.replace(tmp, target)
