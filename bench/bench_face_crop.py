"""Calibrates the detector box -> classifier crop mapping (common/face_crop.py) on FER2013 faces.

    .venv/bin/python -m bench.bench_face_crop [--fer ../shared/data/fer2013] [--limit 1500]

Each validation face (48x48, framed the FER2013 way) is upscaled 4x into a larger frame, found by the worker's
detector, cropped as the worker crops, and classified by the shipped model (in-process). The accuracy on
those crops, for several margins and vertical shifts of the square around the box, is compared with the
accuracy on the original images: the best mapping is the one that frames a detected face as FER2013 does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common.face_crop import FACE_MARGIN, FACE_SHIFT, LEVEL_MIN_DEGREES, crop_face, eye_angle  # noqa: E402
from worker.detection import iou_matrix, make_detector  # noqa: E402
from worker.settings import WorkerSettings  # noqa: E402

UPSCALE = 4
# Border around the upscaled face, as a fraction of its side (edge pixels repeated: no hard frame to find).
BORDER = 0.75
MARGINS = (0.0, 0.06, 0.09, 0.12, 0.15, 0.18)
SHIFTS = (-0.05, -0.03, 0.0, 0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fer", type=Path, default=REPO.parent / "shared" / "data" / "fer2013")
    parser.add_argument("--limit", type=int, default=1500, help="validation faces (class-stratified)")
    args = parser.parse_args()
    from training.data import list_split, load_images
    from training.evaluate import load_predictor

    split = list_split(args.fer, "val", limit=args.limit)
    faces, labels = load_images(split), split.labels
    predict = load_predictor()
    original = float(np.mean(predict(faces).argmax(axis=1) == labels))
    detector = make_detector(WorkerSettings())
    side = faces.shape[1] * UPSCALE
    pad = round(side * BORDER)
    truth = np.array([pad, pad, pad + side, pad + side], np.float32)
    frames, boxes, eyes, found = [], [], [], []
    for index, face in enumerate(faces):
        big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
        frame = cv2.cvtColor(
            cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE), cv2.COLOR_GRAY2BGR
        )
        detected = detector.detect(frame)
        if not len(detected):
            continue
        best = int(np.argmax(iou_matrix(detected.xyxy, [truth])[:, 0]))
        frames.append(frame)
        boxes.append(detected.xyxy[best])
        eyes.append(None if detected.eyes is None else detected.eyes[best])
        found.append(index)
    found_labels = labels[found]
    original_found = float(np.mean(predict(faces[found]).argmax(axis=1) == found_labels))
    rows = []
    levels = (False, True) if any(e is not None for e in eyes) else (False,)
    for margin in MARGINS:
        for shift in SHIFTS:
            for level in levels:
                crops = np.stack(
                    [
                        crop_face(f, b, margin, shift, e if level else None)
                        for f, b, e in zip(frames, boxes, eyes, strict=True)
                    ]
                )
                accuracy = float(np.mean(predict(crops).argmax(axis=1) == found_labels))
                rows.append((margin, shift, level, accuracy))
    ratio = np.mean([(b[2] - b[0]) / side for b in boxes])
    centre = np.mean([((b[1] + b[3]) / 2 - pad) / side - 0.5 for b in boxes])
    print(
        f"{len(faces)} FER2013 val faces, upscaled {UPSCALE}x with a {BORDER:.0%} border; the detector found "
        f"{len(found)} ({len(found) / len(faces):.1%}); its box is {ratio:.2f} of the FER2013 frame wide, "
        f"centred {centre:+.2f} of it below the frame's centre\n"
    )
    print(
        f"Accuracy on the original 48x48 images: {original_found:.1%} on the {len(found)} found "
        f"({original:.1%} on all {len(faces)})\n"
    )
    angles = [abs(eye_angle(e)) for e in eyes if e is not None]
    if angles:
        print(
            f"Eye line off level (detector's landmarks): median {np.median(angles):.1f} degrees, "
            f"{np.mean(np.asarray(angles) >= LEVEL_MIN_DEGREES):.0%} of faces at {LEVEL_MIN_DEGREES} or more"
            "\n"
        )
    print("| margin | shift (of the square, + = down) | eyes levelled | accuracy on detected crops |")
    print("| ---: | ---: | --- | ---: |")
    for margin, shift, level, accuracy in rows:
        mark = " (current)" if (margin, shift) == (FACE_MARGIN, FACE_SHIFT) else ""
        print(f"| {margin:.2f} | {shift:+.2f} | {'yes' if level else 'no'} | {accuracy:.1%}{mark} |")
    for level in levels:
        best = max((r for r in rows if r[2] == level), key=lambda r: r[3])
        print(
            f"\nBest {'with' if level else 'without'} levelling: margin {best[0]:.2f}, shift {best[1]:+.2f}: "
            f"{best[3]:.1%}"
        )


if __name__ == "__main__":
    main()
