"""Live webcam latency: capture-to-emoji round trips over the gateway's WebSocket at 640x480.

Each viewer sends a frame, waits for its answer, then sends the next (one in flight, as the page does).
A round trip runs from the raw frame in hand (before JPEG encoding, as the page captures it) to the
parsed answer (what the page needs to draw the emoji). Bounded by --frames and --seconds.

    .venv/bin/python -m bench.bench_live [--url http://127.0.0.1:8000] [--frames 300] [--clients 1]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_CLIP = REPO_ROOT.parent / "shared" / "data" / "media" / "pyfeat_WolfgangLanger_Pexels.mp4"
GOAL_P95_MS = 100.0


def load_frames(count: int, size: tuple[int, int]):
    """Up to `count` RGB frames of a face clip (a shared clip, else the astronaut photo), as PIL images."""
    from PIL import Image

    width, height = size
    if SHARED_CLIP.exists():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [
                    "ffmpeg",
                    "-v",
                    "error",
                    "-i",
                    str(SHARED_CLIP),
                    "-vf",
                    f"scale={width}:{height}:force_original_aspect_ratio=increase,crop={width}:{height},fps=15",
                    "-frames:v",
                    str(count),
                    f"{tmp}/%04d.png",
                ],
                check=True,
            )
            frames = [Image.open(p).convert("RGB") for p in sorted(Path(tmp).glob("*.png"))]
        if frames:
            return frames, SHARED_CLIP.name
    from skimage import data

    still = Image.fromarray(data.astronaut()).crop((64, 0, 448, 288)).resize(size)
    return [still], "skimage astronaut"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_viewer(url: str, frames, count: int, deadline: float, warmup: int, out: dict) -> None:
    from websockets.sync.client import connect

    round_trips, server, worker, faces, errors = [], [], [], 0, []
    with connect(url.replace("http", "ws", 1) + "/api/v1/live", open_timeout=10, max_size=None) as ws:
        json.loads(ws.recv(timeout=10))  # hello
        for i in range(count + warmup):
            if time.monotonic() > deadline:
                break
            frame = frames[i % len(frames)]
            start = time.perf_counter()
            buffer = io.BytesIO()
            frame.save(buffer, format="JPEG", quality=80)
            ws.send(buffer.getvalue())
            answer = json.loads(ws.recv(timeout=30))
            elapsed = (time.perf_counter() - start) * 1000.0
            if i < warmup:
                continue  # the first frames pay for connections and caches
            if "error" in answer:
                errors.append(answer["error"]["code"])
                continue
            round_trips.append(elapsed)
            server.append(answer.get("server_ms", float("nan")))
            worker.append(answer.get("timings_ms", {}))
            faces += len(answer["faces"])
    out.update(round_trips=round_trips, server=server, worker=worker, faces=faces, errors=errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--frames", type=int, default=300, help="frames per viewer (after warm-up)")
    parser.add_argument("--seconds", type=float, default=90.0, help="stop after this long in any case")
    parser.add_argument("--clients", type=int, default=1, help="viewers at once")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--size", default="640x480")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))

    frames, source = load_frames(min(args.frames, 150), size)
    deadline = time.monotonic() + args.seconds
    results = [{} for _ in range(args.clients)]
    threads = [
        threading.Thread(target=run_viewer, args=(args.url, frames, args.frames, deadline, args.warmup, r))
        for r in results
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started

    trips = [t for r in results for t in r.get("round_trips", [])]
    if not trips:
        raise SystemExit(f"no answers; errors: {[r.get('errors') for r in results]}")
    server = [t for r in results for t in r["server"]]
    worker = [w for r in results for w in r["worker"]]
    faces = sum(r["faces"] for r in results)
    errors = [e for r in results for e in r["errors"]]

    print(
        f"{len(trips)} frames {size[0]}x{size[1]} from {source}, {args.clients} viewer(s), "
        f"one frame in flight each, {wall:.1f} s, {len(trips) / wall:.1f} answers/s, "
        f"{faces / len(trips):.2f} faces/frame, "
        f"{len(errors)} errors"
    )
    print()
    print("| measure | p50 ms | p95 ms | mean ms | max ms |")
    print("|---|---|---|---|---|")

    def row(name: str, values: list[float]) -> None:
        values = [v for v in values if v == v]
        if values:
            print(
                f"| {name} | {percentile(values, 0.5):.1f} | {percentile(values, 0.95):.1f} | "
                f"{statistics.fmean(values):.1f} | {max(values):.1f} |"
            )

    row("capture to emoji (round trip)", trips)
    row("gateway (frame in to answer out)", server)
    for key in ("decode", "detect", "classify", "total"):
        row(f"worker {key}", [w[key] for w in worker if key in w])
    p95 = percentile(trips, 0.95)
    print()
    print(
        f"p95 {p95:.1f} ms against the goal of {GOAL_P95_MS:.0f} ms: "
        f"{'met' if p95 <= GOAL_P95_MS else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
