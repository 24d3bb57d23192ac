"""Emotion model versions against real faces labelled by hand (bench/real_face_labels.json).

    .venv/bin/python -m bench.bench_real_faces [--model DIR ...] [--git-version 3 ...] [--media DIR]

Each labelled box on the shared photos and clip frames is cropped by `common.face_crop.crop_face` as the
worker crops it (from the luma plane of the decoded frame; from the photo in grayscale) and classified by
each model version's serving signature, in process. Scores: agreement with the hand labels ("unclear" left
out) on the frames at least a second apart (the figure of record) and on all labelled frames (every half
second, so neighbouring frames of one person count twice), recall per labelled expression, and what each
labelled expression was called. Default model: the shipped version. `--git-version N` also scores version
N as it was last committed (an older version that the export has since removed). Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common.classes import EMOTION_INDEX, EMOTIONS  # noqa: E402
from common.face_crop import crop_face  # noqa: E402
from common.media import frame_index, probe  # noqa: E402
from worker.video_io import DecodeWindow, DisplayFrames, decode_frames, even  # noqa: E402

LABELS = REPO / "bench" / "real_face_labels.json"
MODEL_BASE = REPO / "model_server" / "models" / "emotion"
UNCLEAR = "unclear"


def luma_frames(path: Path, wanted: set[int]) -> dict[int, np.ndarray]:
    """The luma plane [H, W] of the `wanted` frames of a clip, decoded as the worker decodes (PyAV, the
    plan's frame times, rotation applied); the worker crops faces from this plane."""
    info = probe(path)
    times, _ = frame_index(path)
    display = DisplayFrames(info.rotation, (even(info.width), even(info.height)))
    frames = {}
    window = DecodeWindow(0, 0, 0, min(len(times), max(wanted) + 1))
    for index, raw in decode_frames(path, info.format_name, times, window):
        if index in wanted:
            frame = display(raw)
            frames[index] = frame.to_ndarray()[: frame.height].copy()  # yuv420p: the first H rows are Y
    return frames


def labelled_crops(media: Path) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """(uint8 faces [N, 48, 48, 1], hand labels, mask of the faces on the one-second grid, files)."""
    items = json.loads(LABELS.read_text())["faces"]
    wanted: dict[str, set[int]] = {}
    for item in items:
        if "frame" in item:
            wanted.setdefault(item["file"], set()).add(item["frame"])
    frames = {name: luma_frames(media / name, indices) for name, indices in wanted.items()}
    photos = {
        item["file"]: cv2.imread(str(media / item["file"]), cv2.IMREAD_GRAYSCALE)
        for item in items
        if "frame" not in item
    }
    faces = [
        crop_face(
            frames[item["file"]][item["frame"]] if "frame" in item else photos[item["file"]], item["xyxy"]
        )
        for item in items
    ]
    grid = np.asarray([item.get("one_second_grid", True) for item in items], bool)
    return np.stack(faces), [item["label"] for item in items], grid, [item["file"] for item in items]


def committed_version(version: int, into: Path) -> Path:
    """Version N's folder as last committed (before the commit that removed it, if one did)."""
    path = f"model_server/models/emotion/{version}"
    last = subprocess.run(
        ["git", "rev-list", "-n", "1", "HEAD", "--", path],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not last:
        raise SystemExit(f"version {version} was never committed under {path}")
    # The last commit touching the folder either added or changed it (the folder is in that commit) or
    # removed it (the folder is in its parent).
    for commit in (last, f"{last}^"):
        archive = subprocess.run(["git", "archive", commit, path], cwd=REPO, capture_output=True)
        if archive.returncode == 0:
            subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
            return into / path
    raise SystemExit(f"could not read version {version} from git")


def predictor(folder: Path):
    import tensorflow as tf

    signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
    return lambda faces: signature(faces=tf.constant(faces))["probabilities"].numpy()


def score(predictions: np.ndarray, labels: list[str], keep: np.ndarray) -> dict:
    """Agreement, recall per labelled expression and what each was called, over the faces in `keep` that have
    a label other than unclear."""
    chosen = [i for i in np.flatnonzero(keep) if labels[i] != UNCLEAR]
    truth = np.asarray([EMOTION_INDEX[labels[i]] for i in chosen], int)
    said = predictions[chosen]
    report = {
        "faces": len(chosen),
        "agreement": float(np.mean(said == truth)) if chosen else 0.0,
        "classes": {},
    }
    for name in sorted({labels[i] for i in chosen}, key=EMOTION_INDEX.get):
        members = truth == EMOTION_INDEX[name]
        called = Counter(EMOTIONS[p] for p in said[members])
        report["classes"][name] = {
            "faces": int(members.sum()),
            "recall": float(np.mean(said[members] == truth[members])),
            "called": dict(called.most_common()),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--media", type=Path, default=REPO.parent / "shared" / "data" / "media")
    parser.add_argument("--model", type=Path, nargs="*", default=[], help="exported version folders")
    parser.add_argument(
        "--git-version", type=int, nargs="*", default=[], help="versions read from git history"
    )
    args = parser.parse_args()
    if not args.media.is_dir():
        raise SystemExit(f"no media folder {args.media} (the shared data); nothing to score")
    faces, labels, grid, files = labelled_crops(args.media)
    with tempfile.TemporaryDirectory() as tmp:
        models = {f"version {n} (git)": committed_version(n, Path(tmp)) for n in args.git_version}
        if not args.model:
            shipped = max((p for p in MODEL_BASE.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
            models[f"version {shipped.name} (shipped)"] = shipped
        models.update({str(p): p for p in args.model})
        results = {name: predictor(folder)(faces).argmax(axis=1) for name, folder in models.items()}
    counts = Counter(label for label in labels)
    print(
        f"{len(labels)} labelled faces ({', '.join(f'{n} {k}' for k, n in counts.most_common())}); "
        f"{int(grid.sum())} on frames at least a second apart\n"
    )
    print("| model | agreement, frames 1 s apart | all frames (0.5 s) | recall neutral / happy / sad (1 s) |")
    print("| --- | ---: | ---: | --- |")
    for name, predictions in results.items():
        second, every = (
            score(predictions, labels, grid),
            score(predictions, labels, np.ones(len(labels), bool)),
        )
        recalls = " / ".join(
            f"{second['classes'].get(c, {}).get('recall', float('nan')):.0%}"
            for c in ("neutral", "happy", "sad")
        )
        figures = (
            f"{second['agreement']:.1%} ({second['faces']}) | {every['agreement']:.1%} ({every['faces']})"
        )
        print(f"| {name} | {figures} | {recalls} |")
    print("\nWhat each labelled expression was called (frames 1 s apart):\n")
    for name, predictions in results.items():
        second = score(predictions, labels, grid)
        called = "; ".join(
            f"{c} ({v['faces']}): " + ", ".join(f"{k} {n}" for k, n in v["called"].items())
            for c, v in second["classes"].items()
        )
        print(f"- {name}: {called}")

    print("\nEmoji per file, every labelled face (unclear ones too), by model:\n")
    print("| file | hand labels | " + " | ".join(results) + " |")
    print("| --- | --- |" + " --- |" * len(results))
    for file in sorted(set(files)):
        members = [i for i, f in enumerate(files) if f == file]
        cells = [_tally(labels[i] for i in members)]
        cells += [_tally(EMOTIONS[p] for p in predictions[members]) for predictions in results.values()]
        print(f"| {file} | " + " | ".join(cells) + " |")


def _tally(names) -> str:
    return ", ".join(f"{name} {count}" for name, count in Counter(names).most_common())


if __name__ == "__main__":
    main()
