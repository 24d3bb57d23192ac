"""What face detection costs a frame under the worker's scan schedule, on one thread, by clip.

    .venv/bin/python -m bench.bench_scan_cost [--media ../shared/data/media] [--rounds 2]

Each shared clip is scaled as the pipeline benchmark scales it (the one-woman close-up to 1280x720) or kept
at its own size (the crowd, 1920x1080), and every `detect_every`-th frame is scanned in order: once with the
worker's `ScanSchedule` (WorkerSettings), once with the schedule it replaced (every scan at `detect_width`
640 px but two of every three at half of it while every face is 60 px or more, score 0.6), alternating, so
that both see the same load. CPU time of the scanning thread, the copy's resize included, and the widths
asked. Prints Markdown.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import av
import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from worker.batch_pass import detection_size, scan_schedule  # noqa: E402
from worker.detection import DETECTOR_MODEL, FaceBoxes, YuNetDetector, make_detector  # noqa: E402
from worker.settings import WorkerSettings  # noqa: E402

CLIPS = {
    "pyfeat_WolfgangLanger_Pexels.mp4": (1280, 720),  # as bench_pipeline scales it
    "facenet-pytorch_video.mp4": None,  # the crowd, at its own 1920x1080
}


def scanned_frames(path: Path, size: tuple[int, int] | None, every: int) -> list[np.ndarray]:
    frames = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % every == 0:
                image = frame.to_ndarray(format="bgr24")
                frames.append(
                    image if size is None else cv2.resize(image, size, interpolation=cv2.INTER_AREA)
                )
    return frames


def worker_schedule(frames: list[np.ndarray], settings: WorkerSettings) -> tuple[float, Counter, int]:
    """(CPU seconds, widths asked, faces found) with the worker's ScanSchedule."""
    scanner = scan_schedule(make_detector(settings), settings)
    widths, faces, cpu = Counter(), 0, 0.0
    for number, frame in enumerate(frames):
        start = time.thread_time()
        height, width = frame.shape[:2]
        size = detection_size(width, height, scanner.width_for(number, width))
        faces += len(scanner.scan(cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)))
        cpu += time.thread_time() - start
        widths[size[0]] += 1
    return cpu, widths, faces


def schedule_before(frames: list[np.ndarray], settings: WorkerSettings) -> tuple[float, Counter, int]:
    """The same with the schedule of the first YuNet commit: full 640 px scans on every 3rd scan number and
    after a scan that saw a face under 60 px, half width between; score 0.6."""
    detector = YuNetDetector(DETECTOR_MODEL, 0.6, width=settings.detect_width)
    widths, faces, cpu, small_seen = Counter(), 0, 0.0, True
    for number, frame in enumerate(frames):
        start = time.thread_time()
        height, width = frame.shape[:2]
        full = detection_size(width, height, settings.detect_width)
        copy = cv2.resize(frame, full, interpolation=cv2.INTER_LINEAR)
        if not small_seen and number % 3:
            copy = cv2.resize(copy, (copy.shape[1] // 2, copy.shape[0] // 2), interpolation=cv2.INTER_AREA)
        found: FaceBoxes = detector.detect(copy)
        sides = np.minimum(found.xyxy[:, 2] - found.xyxy[:, 0], found.xyxy[:, 3] - found.xyxy[:, 1])
        small_seen = bool(np.any(sides * full[0] / copy.shape[1] < 60))
        cpu += time.thread_time() - start
        widths[copy.shape[1]] += 1
        faces += len(found)
    return cpu, widths, faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media", type=Path, default=REPO.parent / "shared" / "data" / "media")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each schedule, alternating")
    args = parser.parse_args()
    settings = WorkerSettings()
    cv2.setNumThreads(1)
    print(
        f"Every {settings.detect_every}th frame scanned; one OpenCV thread; CPU ms of the scanning thread.\n"
    )
    print("| clip | schedule | scans | widths asked | faces found | CPU ms a scan | CPU ms a frame |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: |")
    for name, size in CLIPS.items():
        path = args.media / name
        if not path.exists():
            sys.exit(f"missing shared clip: {path}")
        frames = scanned_frames(path, size, settings.detect_every)
        shape = f"{frames[0].shape[1]}x{frames[0].shape[0]}"
        for _ in range(args.rounds):
            for label, run in (
                ("before (640 / 320 px)", schedule_before),
                ("ScanSchedule (now)", worker_schedule),
            ):
                cpu, widths, faces = run(frames, settings)
                asked = ", ".join(f"{w} px: {n}" for w, n in sorted(widths.items(), reverse=True))
                per_scan = 1000 * cpu / len(frames)
                print(
                    f"| {name} ({shape}) | {label} | {len(frames)} | {asked} | {faces} | {per_scan:.2f} | "
                    f"{per_scan / settings.detect_every:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
