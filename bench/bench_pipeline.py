"""The whole service against a plain transcode: a 60 s 720p 30 fps clip with audio, through the running stack.

Prints, in one run: the wall time from upload accepted to result ready, frames per second, and the ratio
to `ffmpeg -i in.mp4 -c:v libx264 -preset veryfast -c:a copy out.mp4` on the same file
(the project's goal: 1.2x).

    .venv/bin/python -m bench.bench_pipeline [--url http://127.0.0.1:8000] [--seconds 60]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_CLIP = REPO_ROOT.parent / "shared" / "data" / "media" / "pyfeat_WolfgangLanger_Pexels.mp4"


def make_clip(path: Path, seconds: int) -> Path:
    """Loop a shared face clip (or the astronaut photo when it is missing) to 1280x720, 30 fps, with audio."""
    if SHARED_CLIP.exists():
        source = ["-stream_loop", "-1", "-i", str(SHARED_CLIP)]
        audio = ["-map", "0:v:0", "-map", "0:a:0?"]
    else:
        from tests.conftest import make_astronaut_video

        still = make_astronaut_video(path.with_name("astronaut.mp4"), seconds=5)
        source = ["-stream_loop", "-1", "-i", str(still)]
        audio = ["-map", "0:v:0", "-map", "0:a:0?"]
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            *source,
            *audio,
            "-t",
            str(seconds),
            "-vf",
            "scale=1280:720,fps=30",
            "-c:v",
            "libx264",
            "-preset",
            "medium",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            str(path),
        ],
        check=True,
    )
    return path


def plain_transcode_s(path: Path) -> float:
    out = path.with_name("plain.mp4")
    start = time.perf_counter()
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-i",
            str(path),
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-c:a",
            "copy",
            str(out),
        ],
        check=True,
    )
    return time.perf_counter() - start


def through_service_s(url: str, path: Path) -> tuple[float, dict]:
    with path.open("rb") as handle:
        reply = httpx.post(
            f"{url}/api/v1/jobs", files={"file": (path.name, handle, "video/mp4")}, timeout=300
        )
    reply.raise_for_status()
    accepted = time.perf_counter()
    job_id = reply.json()["id"]
    while True:
        job = httpx.get(f"{url}/api/v1/jobs/{job_id}", timeout=10).json()
        if job["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.2)
    elapsed = time.perf_counter() - accepted
    if job["status"] != "succeeded":
        raise SystemExit(f"job failed: {job['error']}")
    return elapsed, job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--seconds", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "bench-720p.mp4", args.seconds)
        plain = plain_transcode_s(clip)
        service, job = through_service_s(args.url, clip)
    frames = job["frames_total"]
    print(
        "| clip | frames | plain transcode | service (upload accepted → result ready) | frames/s | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| {args.seconds} s 1280x720 30 fps + AAC | {frames} | {plain:.1f} s | {service:.1f} s "
        f"| {frames / service:.0f} | {service / plain:.2f}x |"
    )


if __name__ == "__main__":
    main()
