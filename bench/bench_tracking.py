"""Issue 6's measurements on the shared clips: emoji flicker raw vs smoothed, person ids, and analysis speed
with detection on every frame vs every k-th.

    .venv/bin/python bench/bench_tracking.py [--model-server HOST:PORT] [--media ../shared/data/media]

Without --model-server it starts `python -m model_server` on a free port with the shipped model (the agreed
command) and stops it at the end. Prints a Markdown report.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_model_server import start_server  # noqa: E402
from common import job_files  # noqa: E402
from common.render_options import RenderOptions  # noqa: E402
from common.storage import LocalStorage  # noqa: E402
from worker import steps  # noqa: E402
from worker.detection import make_detector  # noqa: E402
from worker.overlay import EmojiOverlay  # noqa: E402
from worker.settings import WorkerSettings  # noqa: E402

logger = logging.getLogger("bench_tracking")

WOMAN = "pyfeat_WolfgangLanger_Pexels.mp4"
TWO = "face-swap_ss_test_video_03-2_faces.mp4"
CROWD = "facenet-pytorch_video.mp4"


@contextmanager
def model_server(address: str | None):
    """The given address, or a `python -m model_server` started here for the run."""
    if address:
        yield address
        return
    proc, started = start_server(REPO / "model_server" / "models" / "emotion", batching_file=None)
    try:
        yield started
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def analyse(
    clip: Path, settings: WorkerSettings, classifier, root: Path, options: RenderOptions | None = None
) -> tuple[dict, float, int]:
    """(timeline, seconds spent in the batches (decode, detect, classify, draw, encode), frames) for one
    clip, run batch by batch, drawn with `options` (badges by default)."""
    storage = LocalStorage(root)
    job = f"{clip.stem}-k{settings.detect_every}"
    storage.delete_job(job)
    shutil.copy(clip, storage.path(job, job_files.INPUT))
    options = options or RenderOptions()
    plan = steps.plan_job(storage, job, settings, options)
    detector = make_detector(settings)
    overlay = EmojiOverlay(options.style, settings.overlay_scale, labels=options.labels)
    t0 = time.perf_counter()
    for index in range(len(plan.batches)):
        steps.run_batch(storage, job, index, plan, detector, classifier, overlay, settings)
    seconds = time.perf_counter() - t0
    steps.finish_job(storage, job, plan, settings, "emotion")
    timeline = json.loads(storage.path(job, job_files.TIMELINE_JSON).read_text())
    return timeline, seconds, plan.frames


def per_person(timeline: dict) -> dict[int, list[tuple[float, dict]]]:
    people: dict[int, list[tuple[float, dict]]] = {}
    for frame in timeline["frames"]:
        for face in frame["faces"]:
            people.setdefault(face["person_id"], []).append((frame["t_ms"], face))
    return people


def flicker(timeline: dict) -> tuple[float, float, float]:
    """(person-seconds, raw emoji changes per person-second, shown emoji changes per person-second)."""
    seconds, raw, shown = 0.0, 0, 0
    for track in per_person(timeline).values():
        seconds += (track[-1][0] - track[0][0]) / 1000.0
        raw += sum(a["emotion"] != b["emotion"] for (_, a), (_, b) in zip(track, track[1:], strict=False))
        shown += sum(
            a["shown_emotion"] != b["shown_emotion"] for (_, a), (_, b) in zip(track, track[1:], strict=False)
        )
    return seconds, raw / max(seconds, 1e-9), shown / max(seconds, 1e-9)


def jumps(timeline: dict) -> int:
    """Moves of a person's box by more than its size from one frame to the next: an id jumping people."""
    count = 0
    for track in per_person(timeline).values():
        for (_, a), (_, b) in zip(track, track[1:], strict=False):
            ba, bb = np.asarray(a["box_xyxy"]), np.asarray(b["box_xyxy"])
            side = max(ba[2] - ba[0], ba[3] - ba[1])
            if np.linalg.norm((ba[:2] + ba[2:]) / 2 - (bb[:2] + bb[2:]) / 2) > side:
                count += 1
    return count


def labelled_found(timeline: dict, clip: str) -> tuple[int, int]:
    """(hand-labelled faces on this clip's labelled frames, how many of them the timeline has a face for at
    IoU >= 0.4): recall as a viewer sees it, after tracking, gap-filling and confirmation, not per scan."""
    from bench.bench_detection import LABELS, matched

    frames = {f["index"]: f for f in timeline["frames"]}
    total = found = 0
    for item in json.loads(LABELS.read_text())["images"]:
        if item.get("file") != clip or item["frame"] not in frames:
            continue
        labels = np.asarray([f["xyxy"] for f in item["faces"]], np.float32).reshape(-1, 4)
        boxes = np.asarray([f["box_xyxy"] for f in frames[item["frame"]]["faces"]], np.float32).reshape(-1, 4)
        hit, _ = matched(labels, boxes)
        total, found = total + len(labels), found + int(hit.sum())
    return total, found


def faces_per_frame(timeline: dict) -> str:
    counts = np.bincount([len(f["faces"]) for f in timeline["frames"]])
    return ", ".join(f"{n} faces: {c}" for n, c in enumerate(counts) if c)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-server", help="host:port of a running model server (default: start one)")
    parser.add_argument("--media", type=Path, default=REPO.parent / "shared" / "data" / "media")
    parser.add_argument("--k", type=int, default=3, help="detect every k-th frame (compared with k=1)")
    parser.add_argument(
        "--no-every-frame", action="store_true", help="skip the k=1 comparison (its columns empty)"
    )
    parser.add_argument("--out", type=Path, help="keep the jobs (videos, timelines) in this folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    clips = {name: args.media / name for name in (WOMAN, TWO, CROWD)}
    missing = [str(p) for p in clips.values() if not p.exists()]
    if missing:
        sys.exit(f"missing shared clips: {missing}")
    from worker.model_client import EmotionClient

    keep = nullcontext(str(args.out)) if args.out else tempfile.TemporaryDirectory()
    with model_server(args.model_server) as address, keep as tmp:
        base = WorkerSettings(
            model_server_address=address, batch_frames=120 // args.k * args.k, detect_every=args.k
        )
        classifier = EmotionClient.from_settings(base)
        version = classifier.wait_until_available(120)
        print(f"# Tracking and smoothing on the shared clips (model version {version}, server {address})\n")
        every_frame = WorkerSettings(**{**base.model_dump(), "detect_every": 1, "batch_frames": 120})
        results = {}
        speed_rows = []
        seen_rows = []
        for name, clip in clips.items():
            timeline, seconds, frames = analyse(clip, base, classifier, Path(tmp))
            results[name] = timeline
            total, kth = labelled_found(timeline, name)
            if args.no_every_frame:
                seen_rows.append((name, total, "-", kth))
                ids = len(timeline["people"])
                speed_rows.append((name, frames, "-", f"{frames / seconds:.1f}", "-", ids))
                continue
            slow_timeline, slow_seconds, _ = analyse(clip, every_frame, classifier, Path(tmp))
            seen_rows.append((name, total, labelled_found(slow_timeline, name)[1], kth))
            speed_rows.append(
                (
                    name,
                    frames,
                    f"{frames / slow_seconds:.1f}",
                    f"{frames / seconds:.1f}",
                    len(slow_timeline["people"]),
                    len(timeline["people"]),
                )
            )

        seconds, raw, shown = flicker(results[WOMAN])
        print(f"## Emoji changes per person-second ({WOMAN}, one woman, sad to laughing)\n")
        print("| person-seconds | raw argmax | smoothed + hysteresis (shown) |\n| ---: | ---: | ---: |")
        print(f"| {seconds:.1f} | {raw:.2f} | {shown:.2f} |\n")
        for person in results[WOMAN]["people"]:
            segments = ", ".join(
                f"{s['emotion']} {s['start_ms'] / 1000:.1f}-{s['end_ms'] / 1000:.1f} s"
                for s in person["segments"]
            )
            print(f"- person {person['person_id']}: {segments}")
        print("\n## Person ids\n")
        print("| clip | people in the video | person ids | box jumps > 1 face size | frames by face count |")
        print("| --- | ---: | ---: | ---: | --- |")
        for name, truth in ((TWO, "2"), (CROWD, "many, entering and leaving")):
            timeline = results[name]
            print(
                f"| {name} | {truth} | {len(timeline['people'])} | {jumps(timeline)} "
                f"| {faces_per_frame(timeline)} |"
            )
        print(
            "\n## Labelled faces with an emoji (bench/detection_labels.json, IoU >= 0.4 with the timeline's "
            "box)\n"
        )
        print(
            "| clip | labelled faces | with an emoji, scanning every frame | "
            f"with an emoji, every k-th (k={args.k}) |"
        )
        print("| --- | ---: | ---: | ---: |")
        for name, total, every, kth in seen_rows:
            print(f"| {name} | {total} | {every} | {kth} |")
        print(f"\n## Batch speed (all of a batch), every frame vs every k-th (k={args.k})\n")
        print(
            "| clip | frames | frames/s, every frame | frames/s, every k-th | ids (every frame) | "
            "ids (every k-th) |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name, frames, slow, fast, ids_slow, ids_fast in speed_rows:
            print(f"| {name} | {frames} | {slow} | {fast} | {ids_slow} | {ids_fast} |")
        classifier.close()


if __name__ == "__main__":
    main()
