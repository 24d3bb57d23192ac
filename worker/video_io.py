"""ffmpeg as the worker uses it: one decode per batch piped out as raw frames, one encode per batch piped in,
and the final join of our own pieces with the original audio. Every read of the upload is locked down with
`common.media.safe_input_args` and the probed format."""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from common import processes
from common.errors import VideoError
from common.media import safe_input_args
from common.processes import DeadlineProcess

logger = logging.getLogger(__name__)

FFMPEG = "ffmpeg"

# Decoded formats whose first plane is 8-bit luma at full size (the "j" ones are full range).
PLANAR_8BIT_YUV = frozenset(
    {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv440p", "yuvj440p", "yuv411p"}
)
# Limited-range luma (16..235) to full range (0..255), rounded as swscale's gray conversion does.
FULL_RANGE_LUT = np.clip(np.round((np.arange(256) - 16) * 255 / 219), 0, 255).astype(np.uint8)


def even(value: int) -> int:
    return max(2, int(value) - int(value) % 2)


def frame_rate(fps: float) -> str:
    """ffmpeg's rational for a probed rate, e.g. 29.97002997 -> '30000/1001'."""
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise VideoError(f"the video's frame rate ({fps}) is not usable")
    return f"{rate.numerator}/{rate.denominator}"


def _stderr_tail(handle) -> str:
    handle.seek(0)
    lines = handle.read().decode(errors="replace").strip().splitlines()
    return lines[-1][:300] if lines else ""


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


def read_frames(
    path: Path,
    input_format: str,
    width: int,
    height: int,
    pix_fmt: str,
    count: int,
    seek_s: float = 0.0,
    skip: int = 0,
    source_size: tuple[int, int] | None = None,
    timeout_s: float = 540.0,
    fast: bool = False,
    threads: int = 0,
    cut_s: float | None = None,
    source_pix_fmt: str | None = None,
    source_full_range: bool = False,
) -> Iterator[np.ndarray]:
    """Decode `count` frames after skipping `skip`, starting the decoder at `seek_s`, as flat uint8 arrays.

    `pix_fmt` is "gray" (W*H bytes, full-range luma) or "yuv420p" (W*H*3/2); frames come out as
    displayed (rotation applied), scaled to `width` x `height` when `source_size` differs. Yields fewer
    frames if the video ends first. `fast` trades exact pixels for speed (no deblocking): for analysis,
    never for the output.

    Without `cut_s`, ffmpeg's accurate seek starts the output at `seek_s`. With it, `seek_s` only positions
    the demuxer (on the last keyframe at or before it) and frames are kept from the stream time `cut_s` on
    (the stream's own timestamps): a batch that starts on a keyframe then decodes nothing before it.
    `source_pix_fmt` (as probed) lets "gray" take the luma plane as decoded instead of converting pixels.
    """
    if pix_fmt == "gray":
        frame_bytes = width * height
    elif pix_fmt == "yuv420p":
        frame_bytes = width * height * 3 // 2
    else:
        raise ValueError(f"pix_fmt must be 'gray' or 'yuv420p', got {pix_fmt!r}")
    cmd = [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error"]
    if fast:
        # For finding and classifying faces the deblocking filter does not matter; skipping it decodes faster.
        cmd += ["-skip_loop_filter", "all"]
    if threads:
        cmd += ["-threads", str(threads)]
    filters = []
    if seek_s > 0:
        cmd += ["-ss", f"{seek_s:.6f}"]
        if cut_s is not None:
            cmd += ["-noaccurate_seek", "-copyts"]
            filters.append(f"select='gte(t,{cut_s:.6f})'")
    cmd += safe_input_args(path, input_format)
    cmd += ["-map", "0:v:0", "-an", "-sn", "-dn"]
    scaled = source_size is None or source_size != (width, height)
    # swscale's yuv->gray path costs more than decoding; the Y plane as decoded, range-expanded with a table
    # below, gives the very same bytes.
    luma_plane = pix_fmt == "gray" and source_pix_fmt in PLANAR_8BIT_YUV
    if luma_plane:
        filters.append("extractplanes=y")
    if scaled:
        filters.append(f"scale={width}:{height}:flags=bilinear")
    if filters:
        cmd += ["-vf", ",".join(filters)]
    expand = FULL_RANGE_LUT if luma_plane and not source_full_range else None
    cmd += [
        "-fps_mode",
        "passthrough",
        "-frames:v",
        str(count + skip),
        "-pix_fmt",
        pix_fmt,
        "-f",
        "rawvideo",
        "pipe:1",
    ]
    with tempfile.TemporaryFile() as errors:
        # The deadline holds while this generator is blocked reading the pipe (a stopped or hung decoder):
        # the process group is killed, the read sees end-of-file.
        proc = DeadlineProcess(cmd, timeout_s, "ffmpeg (decoding)", stdout=subprocess.PIPE, stderr=errors,
                               bufsize=0)
        produced = 0
        try:
            index = 0
            while produced < count:
                buffer = np.empty(frame_bytes, np.uint8)
                view = memoryview(buffer)
                got = 0
                while got < frame_bytes:
                    n = proc.proc.stdout.readinto(view[got:])
                    if not n:
                        break
                    got += n
                if got < frame_bytes:
                    break
                if index >= skip:
                    produced += 1
                    if expand is not None:
                        cv2.LUT(buffer, expand, dst=buffer)
                    yield buffer
                index += 1
        finally:
            # Closed early on purpose (the caller stopped reading), ffmpeg dies of the closed pipe; a stuck
            # one dies at its deadline. Either way it is reaped here.
            proc.proc.stdout.close()
            code = proc.wait()
        proc.check(code, _stderr_tail(errors))
        if produced < count and code != 0:
            raise VideoError(f"ffmpeg could not decode the video: {_stderr_tail(errors)}")
        if produced < count:
            logger.warning("decoder gave %d of %d frames of %s", produced, count, path)


class PieceWriter:
    """One libx264 encode fed raw yuv420p frames through a pipe; `close()` finishes the file atomically."""

    def __init__(
        self,
        target: Path,
        width: int,
        height: int,
        fps: float,
        preset: str = "veryfast",
        crf: int = 20,
        timeout_s: float = 540.0,
        threads: int = 0,
    ) -> None:
        self.target = Path(target)
        self.tmp = atomic_target(self.target)
        self.timeout_s = timeout_s
        self.frames = 0
        self.frame_bytes = width * height * 3 // 2
        cmd = [
            FFMPEG,
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "yuv420p",
            "-s",
            f"{width}x{height}",
            "-framerate",
            frame_rate(fps),
            "-i",
            "pipe:0",
            "-c:v",
            "libx264",
            "-preset",
            preset,
            "-crf",
            str(crf),
            "-pix_fmt",
            "yuv420p",
        ]
        if threads:
            cmd += ["-threads", str(threads)]
        cmd += ["-f", "mp4", str(self.tmp)]
        self.errors = tempfile.TemporaryFile()
        self.process = DeadlineProcess(
            cmd, timeout_s, "ffmpeg (encoding)", stdin=subprocess.PIPE, stderr=self.errors, bufsize=0
        )
        self.proc = self.process.proc

    def write(self, frame: np.ndarray) -> None:
        if frame.size != self.frame_bytes:
            raise ValueError(f"expected a yuv420p frame of {self.frame_bytes} bytes, got {frame.size}")
        try:
            self.proc.stdin.write(memoryview(frame))
        except BrokenPipeError as exc:
            raise VideoError(f"ffmpeg stopped encoding: {self._fail()}") from exc
        self.frames += 1

    def _fail(self) -> str:
        """Stop the encoder, remove its temporary file; raise TimedOut/StorageFull if that is what stopped
        it, else return its last error line."""
        self.process.kill()
        code = self.process.wait()
        self.tmp.unlink(missing_ok=True)
        tail = _stderr_tail(self.errors)
        self.process.check(code, tail)
        return tail

    def close(self, before_replace=None) -> int:
        """Finish the encode and move the piece into place; returns the frames written. `before_replace`
        (e.g. a fencing check) runs just before the piece is put in place, and may raise to stop that."""
        self.proc.stdin.close()
        code = self.process.wait()
        if code != 0 or self.process.timed_out:
            raise VideoError(f"ffmpeg could not encode the video: {self._fail()}")
        self.errors.close()
        if before_replace is not None:
            before_replace()
        os.replace(self.tmp, self.target)
        return self.frames

    def abort(self) -> None:
        if self.proc.poll() is None:
            self.process.kill()
        self.process.wait()
        self.errors.close()
        self.tmp.unlink(missing_ok=True)


def join_pieces(
    pieces: list[Path],
    source: Path,
    source_format: str,
    target: Path,
    audio_codec: str | None,
    copy_audio_codecs: tuple[str, ...],
    video_offset_s: float = 0.0,
    timeout_s: float = 540.0,
) -> None:
    """Join our pieces (no re-encode), add the source's first audio stream; write `target` atomically."""
    if not pieces:
        raise VideoError("there are no rendered pieces to join")
    folder = pieces[0].parent
    if any(p.parent != folder for p in pieces):
        raise ValueError("all pieces must be in one folder")
    # Our own list of our own piece names, read with the concat demuxer in its safe mode (plain names only).
    listing = atomic_target(folder / "concat.txt")
    listing.write_text("".join(f"file '{p.name}'\n" for p in pieces))
    tmp = atomic_target(target)
    cmd = [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    if video_offset_s > 0:
        # The source's video started this much after its audio; keep them in sync.
        cmd += ["-itsoffset", f"{video_offset_s:.6f}"]
    cmd += ["-protocol_whitelist", "file", "-f", "concat", "-safe", "1", "-i", f"file:{listing}"]
    if audio_codec:
        cmd += safe_input_args(source, source_format)
        cmd += ["-map", "0:v:0", "-map", "1:a:0"]
        if audio_codec in copy_audio_codecs:
            cmd += ["-c:a", "copy"]
        else:
            cmd += ["-c:a", "aac", "-b:a", "192k"]
    else:
        cmd += ["-map", "0:v:0"]
    cmd += ["-c:v", "copy", "-movflags", "+faststart", "-f", "mp4", str(tmp)]
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
