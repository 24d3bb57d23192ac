"""Issue 22's measurement: with style=cover, how much of each hand-labelled face the emoji hides, on the
labelled frames of the shared clips (bench/detection_labels.json), and where a tracked person has no box.

    .venv/bin/python -m bench.bench_cover [--model-server HOST:PORT] [--media ../shared/data/media]

Each clip runs through the worker's own steps with style=cover (bench_tracking.analyse); the covers are
placed from the timeline's boxes exactly as the worker draws them (EmojiOverlay.placements and the sprites'
alpha), and each labelled face's ellipse (the face inside its box) is checked against them. A face counts as
covered when at least 95% of it is under an opaque part of an emoji. Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_detection import LABELS, matched  # noqa: E402
from bench.bench_tracking import analyse, model_server  # noqa: E402
from common.render_options import RenderOptions  # noqa: E402
from worker.overlay import EmojiOverlay, sprite  # noqa: E402
from worker.settings import WorkerSettings  # noqa: E402

COVERED = 0.95
COVER = RenderOptions(style="cover")


def ellipse(shape: tuple[int, int], box) -> np.ndarray:
    x1, y1, x2, y2 = box
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, max((x2 - x1) / 2, 1), max((y2 - y1) / 2, 1)
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def cover_mask(frame: dict, size_wh: tuple[int, int]) -> np.ndarray:
    """Where the frame's covers are opaque (alpha >= 0.5), placed as the worker places them."""
    width, height = size_wh
    mask = np.zeros((height, width), bool)
    boxes = [face["box_xyxy"] for face in frame["faces"]]
    for (x, y, size), face in zip(
        EmojiOverlay("cover").placements(boxes, size_wh), frame["faces"], strict=True
    ):
        alpha = sprite(face["shown_emotion"], size, "bgr").alpha[:, :, 0] >= 0.5
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + size, width), min(y + size, height)
        if x1 > x0 and y1 > y0:
            mask[y0:y1, x0:x1] |= alpha[y0 - y : y1 - y, x0 - x : x1 - x]
    return mask


def labelled_coverage(timeline: dict, clip: str) -> list[tuple[int, str, bool, float]]:
    """(frame, kind, tracked, fraction covered) of every labelled face on the clip's labelled frames;
    tracked: the timeline has a box for it on that frame (IoU >= 0.4, as bench_tracking counts)."""
    size = (timeline["video"]["width"], timeline["video"]["height"])
    frames = {f["index"]: f for f in timeline["frames"]}
    rows = []
    for item in json.loads(LABELS.read_text())["images"]:
        if item.get("file") != clip or item["frame"] not in frames:
            continue
        frame = frames[item["frame"]]
        mask = cover_mask(frame, size)
        labels = np.asarray([f["xyxy"] for f in item["faces"]], np.float32).reshape(-1, 4)
        boxes = np.asarray([f["box_xyxy"] for f in frame["faces"]], np.float32).reshape(-1, 4)
        tracked, _ = matched(labels, boxes)
        for face, hit in zip(item["faces"], tracked, strict=True):
            inside = ellipse((size[1], size[0]), face["xyxy"])
            share = float(mask[inside].mean()) if inside.any() else 1.0
            rows.append((item["frame"], face.get("kind", "?"), bool(hit), share))
    return rows


def track_gaps(timeline: dict) -> int:
    """Frames between a person's first and last appearance where that person has no box (no cover)."""
    seen: dict[int, list[int]] = {}
    for frame in timeline["frames"]:
        for face in frame["faces"]:
            seen.setdefault(face["person_id"], []).append(frame["index"])
    return sum(
        last - first + 1 - len(set(idx)) for idx in seen.values() for first, last in [(min(idx), max(idx))]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-server", help="host:port of a running model server (default: start one)")
    parser.add_argument("--media", type=Path, default=REPO.parent / "shared" / "data" / "media")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    clips = sorted(
        {i["file"] for i in json.loads(LABELS.read_text())["images"] if i.get("frame") is not None}
    )
    missing = [c for c in clips if not (args.media / c).exists()]
    if missing:
        sys.exit(f"missing shared clips: {missing}")
    from worker.model_client import EmotionClient

    with model_server(args.model_server) as address, tempfile.TemporaryDirectory() as tmp:
        settings = WorkerSettings(model_server_address=address)
        classifier = EmotionClient.from_settings(settings)
        classifier.wait_until_available(120)
        print("# Faces left uncovered by style=cover (labelled faces, bench/detection_labels.json)\n")
        print(f"Covered: at least {COVERED:.0%} of the face's ellipse under an opaque part of an emoji.\n")
        print(
            "| clip | labelled faces | tracked | tracked and covered | not tracked (detector misses) "
            "| of those covered anyway | frames in track gaps |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        misses = []
        for clip in clips:
            timeline, _, _ = analyse(args.media / clip, settings, classifier, Path(tmp), COVER)
            assert timeline["options"] == COVER.model_dump(), timeline["options"]
            rows = labelled_coverage(timeline, clip)
            tracked = [f for _, _, hit, f in rows if hit]
            lost = [f for _, _, hit, f in rows if not hit]
            covered, covered_anyway = sum(f >= COVERED for f in tracked), sum(f >= COVERED for f in lost)
            print(
                f"| {clip} | {len(rows)} | {len(tracked)} | {covered} | {len(lost)} | {covered_anyway} "
                f"| {track_gaps(timeline)} |"
            )
            misses += [(clip, *row) for row in rows if row[3] < COVERED]
        print("\nLabelled faces not covered (share of the face under an emoji):\n")
        print("| clip | frame | kind | tracked | share covered |\n| --- | ---: | --- | --- | ---: |")
        for clip, frame, kind, hit, share in misses:
            print(f"| {clip} | {frame} | {kind} | {'yes' if hit else 'no'} | {share:.0%} |")


if __name__ == "__main__":
    main()
