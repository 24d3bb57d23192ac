"""Decode + encode of every frame in process (PyAV) against ffmpeg processes with raw-video pipes, and the
plain transcode, on the same clip: why worker/video_io.py uses PyAV.

Each path decodes the clip's video single-threaded and encodes it with libx264 veryfast, crf 23, one thread,
handing every decoded frame to Python as numpy planes on the way (what the worker's batch pass needs).

    .venv/bin/python -m bench.bench_video_io [--clip var/bench/bench-1280x720-60s.mp4]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.bench_pipeline import CLIP_DIR, make_clip


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def plain(src: Path, out: Path) -> int:
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-threads",
            "1",
            "-i",
            str(src),
            "-an",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-threads",
            "1",
            str(out),
        ],
        check=True,
    )
    return 0


def pipes(src: Path, out: Path, width: int, height: int) -> int:
    """The worker before PyAV: ffmpeg decodes to a pipe, Python reads each frame, ffmpeg encodes it."""
    size = width * height * 3 // 2
    decoder = subprocess.Popen(
        [
            "ffmpeg",
            "-v",
            "error",
            "-threads",
            "1",
            "-i",
            str(src),
            "-map",
            "0:v:0",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "yuv420p",
            "pipe:1",
        ],
        stdout=subprocess.PIPE,
        bufsize=0,
    )
    encoder = subprocess.Popen(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "yuv420p",
            "-s",
            f"{width}x{height}",
            "-framerate",
            "30",
            "-i",
            "pipe:0",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-threads",
            "1",
            str(out),
        ],
        stdin=subprocess.PIPE,
        bufsize=0,
    )
    frames = 0
    while True:
        frame = np.empty(size, np.uint8)
        view, got = memoryview(frame), 0
        while got < size:
            n = decoder.stdout.readinto(view[got:])
            if not n:
                break
            got += n
        if got < size:
            break
        encoder.stdin.write(view)
        frames += 1
    encoder.stdin.close()
    encoder.wait()
    decoder.wait()
    return frames


def pyav(src: Path, out: Path, width: int, height: int) -> int:
    """What the worker does: decode in process, numpy views of the planes, the same frame to the encoder."""
    from fractions import Fraction

    import av

    from worker.video_io import PieceWriter, plane_array

    frames = 0
    with av.open(str(src)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        writer = PieceWriter(out, width, height, 30.0, Fraction(stream.time_base), "veryfast", 23, 1)
        for frame in container.decode(stream):
            plane_array(frame, 0)  # the view the batch pass draws on
            writer.write(frame, frame.pts)
            frames += 1
        writer.close()
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, default=None)
    args = parser.parse_args()
    clip = args.clip or make_clip(CLIP_DIR / "bench-1280x720-60s.mp4", 60, "1280x720")
    import av

    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
    print(f"load average before: {os.getloadavg()[0]:.1f}\n")
    print("| path (one decode thread, one x264 thread) | wall s | CPU s |")
    print("|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in (
            ("ffmpeg transcode (no Python)", lambda out: plain(clip, out)),
            ("ffmpeg processes + raw-video pipes", lambda out: pipes(clip, out, width, height)),
            ("PyAV in process", lambda out: pyav(clip, out, width, height)),
        ):
            cpu, wall = _cpu(), time.perf_counter()
            run(Path(tmp) / "out.mp4")
            print(f"| {name} | {time.perf_counter() - wall:.1f} | {_cpu() - cpu:.1f} |")


if __name__ == "__main__":
    main()
