"""Evaluation against the FER+ plurality (the figure of record) and FER2013's own labels: agreement, per-class
recall, confusion matrix, the probability given to the annotators' votes, calibration; duplicates removed."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from common.classes import EMOTION_INDEX, EMOTIONS, NUM_CLASSES
from training.checkpoints import load_checkpoints
from training.data import DEFAULT_DATA_ROOT, IMAGE_SUFFIXES, list_split, load_images, pixel_hashes
from training.export import DEFAULT_MODEL_BASE, INPUT_KEY, OUTPUT_KEY, SIGNATURE_NAME, serving_function
from training.ferplus import DEFAULT_FERPLUS_ROOT, NO_PLURALITY, FerPlusSplit, load_ferplus_split

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]  # uint8 faces [N, 48, 48, 1] -> probabilities [N, 7]


def shipped_model_dir(model_base: Path = DEFAULT_MODEL_BASE) -> Path:
    """The highest integer version folder under the model base (the one TF Serving serves)."""
    versions = sorted(
        (p for p in Path(model_base).glob("*") if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    )
    if not versions:
        raise FileNotFoundError(f"no exported model version under {model_base}")
    return versions[-1]


def load_predictor(
    model_paths: Sequence[Path] = (), flip_average: bool = False, bn_data: Path | None = None
) -> Predict:
    """A SavedModel folder (its serving signature) or .keras checkpoints (weights averaged, BatchNorm
    recalibrated on the faces of `<bn_data>/train` if given) as a predictor."""
    paths = [Path(p) for p in model_paths] or [shipped_model_dir()]
    path = paths[0]
    if path.suffix == ".keras":
        bn_images = load_images(list_split(bn_data, "train")) if bn_data else None
        function = tf.function(serving_function([load_checkpoints(paths, bn_images)], flip_average))
    elif flip_average or bn_data:
        raise ValueError(
            f"{path} is an exported model: flip averaging and BatchNorm recalibration are fixed at export; "
            "pass .keras checkpoints to try them"
        )
    else:
        function = tf.saved_model.load(str(path)).signatures[SIGNATURE_NAME]

    def predict(faces: np.ndarray, batch_size: int = 256) -> np.ndarray:
        outputs = [
            function(**{INPUT_KEY: tf.constant(faces[i : i + batch_size], tf.uint8)})[OUTPUT_KEY].numpy()
            for i in range(0, len(faces), batch_size)
        ]
        return np.concatenate(outputs) if outputs else np.zeros((0, NUM_CLASSES), np.float32)

    log.info("evaluating %s", ", ".join(str(p) for p in paths))
    return predict


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Counts [true class, predicted class] in the project's class order."""
    matrix = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def metrics(labels: np.ndarray, predictions: np.ndarray) -> dict:
    """Accuracy, macro-F1 and per-class precision, recall, F1 and support."""
    matrix = confusion_matrix(labels, predictions)
    true_positive = np.diag(matrix).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.nan_to_num(true_positive / matrix.sum(axis=0))
        recall = np.nan_to_num(true_positive / matrix.sum(axis=1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return {
        "count": int(len(labels)),
        "accuracy": float(np.mean(labels == predictions)) if len(labels) else 0.0,
        "macro_f1": float(np.mean(f1)),
        "per_class": {
            name: {
                "precision": round(float(precision[i]), 4),
                "recall": round(float(recall[i]), 4),
                "f1": round(float(f1[i]), 4),
                "support": int(matrix[i].sum()),
            }
            for i, name in enumerate(EMOTIONS)
        },
        "confusion_matrix": {"classes": list(EMOTIONS), "rows_true_cols_predicted": matrix.tolist()},
    }


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """How far the top probability is from the share of answers that are right, averaged over equal-width
    confidence bins weighted by how many answers fall in each (0: perfectly calibrated)."""
    if len(labels) == 0:
        return 0.0
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    # Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 cannot happen with 7 classes.
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    gap = 0.0
    for i in range(bins):
        members = which == i
        if members.any():
            gap += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(gap / len(labels))


def mean_vote_probability(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """The probability the model gives, on average, to the class an annotator voted for (vote shares as
    weights): 1 only for a model that is sure of each image's one unanimous class."""
    return float(np.mean(np.sum(probabilities * targets, axis=1))) if len(targets) else 0.0


def ferplus_metrics(probabilities: np.ndarray, votes: FerPlusSplit, duplicate: np.ndarray | None) -> dict:
    """Agreement with the FER+ plurality (images that have one), per class and confusion matrix; the mean
    probability of the votes (all usable images); ECE; and FER2013's labels on the same scored images."""
    scored = votes.split.labels != NO_PLURALITY
    labels = votes.split.labels[scored]
    predictions = probabilities.argmax(axis=1)
    report = {
        "usable_images": int(len(votes)),
        "agreement": metrics(labels, predictions[scored]),
        "mean_vote_probability": round(mean_vote_probability(probabilities, votes.split.targets), 4),
        "expected_calibration_error": round(expected_calibration_error(probabilities[scored], labels), 4),
        "fer2013_accuracy_same_images": round(
            float(np.mean(votes.fer2013_labels[scored] == predictions[scored])), 4
        ),
    }
    if duplicate is not None:
        keep = scored & ~duplicate
        report["agreement_without_train_duplicates"] = {
            "count": int(keep.sum()),
            "accuracy": round(float(np.mean(votes.split.labels[keep] == predictions[keep])), 4),
        }
    return report


def _ferplus_report(
    data: Path,
    split: str,
    ferplus: Path,
    paths: Sequence[str],
    probabilities: np.ndarray,
    duplicate: np.ndarray | None,
) -> dict:
    """`ferplus_metrics` for the evaluated images (`paths`, with their `probabilities`) that FER+ keeps."""
    split_dir = Path(data) / split
    row_of = {Path(path).relative_to(split_dir).as_posix(): i for i, path in enumerate(paths)}
    votes = load_ferplus_split(data, split, ferplus)
    keys = [Path(path).relative_to(split_dir).as_posix() for path in votes.split.paths]
    kept = np.asarray([i for i, key in enumerate(keys) if key in row_of], int)
    rows = np.asarray([row_of[keys[i]] for i in kept], int)
    return ferplus_metrics(
        probabilities[rows], votes.select(kept), None if duplicate is None else duplicate[rows]
    )


def train_duplicates(data: Path, images: np.ndarray) -> np.ndarray:
    """A mask of the images whose decoded pixels are exactly those of some train image."""
    train_hashes = set(pixel_hashes(load_images(list_split(data, "train"))))
    return np.array([digest in train_hashes for digest in pixel_hashes(images)], bool)


def faces_per_second(predict: Predict, batch_size: int = 64, seconds: float = 5.0) -> float:
    """In-process throughput on random faces, whole batches of `batch_size`."""
    faces = np.random.default_rng(0).integers(0, 256, (batch_size, 48, 48, 1), dtype=np.uint8)
    predict(faces, batch_size)  # the first call traces the function
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        predict(faces, batch_size)
        count += batch_size
    return count / (time.perf_counter() - start)


def save_confusion_png(matrix: np.ndarray, path: Path, title: str) -> None:
    """The confusion matrix, row-normalised (recall on the diagonal), with counts in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure, axes = plt.subplots(figsize=(6.5, 5.5))
    image = axes.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(NUM_CLASSES), EMOTIONS, rotation=45, ha="right")
    axes.set_yticks(range(NUM_CLASSES), EMOTIONS)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for i in range(NUM_CLASSES):
        for j in range(NUM_CLASSES):
            colour = "white" if normalised[i, j] > 0.5 else "black"
            axes.text(
                j,
                i,
                f"{normalised[i, j]:.2f}\n{matrix[i, j]}",
                ha="center",
                va="center",
                fontsize=7,
                color=colour,
            )
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def load_frames(frames: Path) -> tuple[np.ndarray, np.ndarray]:
    """Photos in `<frames>/<class>/`, the largest detected face of each cropped as at serving time."""
    import cv2

    from common.face_crop import crop_face
    from worker.detection import make_detector
    from worker.settings import WorkerSettings

    detector = make_detector(WorkerSettings())
    faces, labels = [], []
    for class_dir in sorted(p for p in Path(frames).iterdir() if p.is_dir() and p.name in EMOTION_INDEX):
        for file in sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            image = cv2.imread(str(file))
            if image is None:
                continue
            found = detector.detect(image).xyxy
            if len(found) == 0:
                log.info("no face found in %s; skipped", file)
                continue
            areas = (found[:, 2] - found[:, 0]) * (found[:, 3] - found[:, 1])
            faces.append(crop_face(image, found[int(np.argmax(areas))]))
            labels.append(EMOTION_INDEX[class_dir.name])
    if not faces:
        return np.zeros((0, 48, 48, 1), np.uint8), np.zeros((0,), np.int32)
    return np.stack(faces), np.asarray(labels, np.int32)


def evaluate(
    data: Path = DEFAULT_DATA_ROOT,
    split: str = "val",
    model_paths: Sequence[Path] = (),
    out: Path = Path("var/training/eval"),
    limit: int | None = None,
    dedup: bool = True,
    frames: Path | None = None,
    flip_average: bool = False,
    throughput: bool = True,
    recalibrate_bn: bool = False,
    ferplus: Path | None = DEFAULT_FERPLUS_ROOT,
) -> dict:
    """Evaluate a model on `<data>/<split>` against the FER+ plurality (when `<ferplus>/<split>.csv` exists)
    and FER2013's labels; writes report.json, confusion.json and confusion.png to `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    predict = load_predictor(model_paths, flip_average, data if recalibrate_bn else None)
    split_files = list_split(data, split, limit)
    images = load_images(split_files)
    probabilities = predict(images)
    predictions = probabilities.argmax(axis=1)
    models = [str(p) for p in model_paths] or [str(shipped_model_dir())]
    report: dict = {
        "models": models,
        "flip_average": flip_average,
        "batch_norm_recalibrated": recalibrate_bn,
        "data": str(data),
        "split": split,
    }
    duplicate = train_duplicates(data, images) if dedup else None
    if ferplus and (Path(ferplus) / f"{split}.csv").is_file():
        report["ferplus"] = _ferplus_report(data, split, ferplus, split_files.paths, probabilities, duplicate)
    report["as_is"] = metrics(split_files.labels, predictions)
    if duplicate is not None:
        report["duplicates_of_train"] = int(duplicate.sum())
        report["deduplicated"] = metrics(split_files.labels[~duplicate], predictions[~duplicate])
    if frames:
        frame_faces, frame_labels = load_frames(frames)
        report["frames"] = metrics(frame_labels, predict(frame_faces).argmax(axis=1))
    if throughput:
        report["faces_per_second_batch64"] = round(faces_per_second(predict), 1)
    _write_reports(report, out, split)
    _log_report(report, split, out)
    return report


def _write_reports(report: dict, out: Path, split: str) -> None:
    """report.json; the confusion matrix of the figure of record (FER+ if scored, else FER2013) as JSON and
    PNG, and FER2013's beside it."""
    (out / "report.json").write_text(json.dumps(report, indent=2))
    sections = [("fer2013", report["as_is"], "FER2013 labels")]
    if "ferplus" in report:
        sections.insert(0, ("ferplus", report["ferplus"]["agreement"], "FER+ plurality"))
    for i, (name, section, what) in enumerate(sections):
        suffix = "" if i == 0 else f"_{name}"
        matrix = np.asarray(section["confusion_matrix"]["rows_true_cols_predicted"])
        (out / f"confusion{suffix}.json").write_text(json.dumps(section["confusion_matrix"], indent=2))
        title = f"{split} vs {what}: {section['accuracy']:.1%}, macro-F1 {section['macro_f1']:.3f}"
        save_confusion_png(matrix, out / f"confusion{suffix}.png", title)


def _log_report(report: dict, split: str, out: Path) -> None:
    if "ferplus" in report:
        fp = report["ferplus"]
        log.info(
            "%s agreement with the FER+ plurality %.4f (%d images), macro-F1 %.4f; mean probability of the "
            "votes %.4f; ECE %.4f; FER2013 labels on the same images %.4f",
            split,
            fp["agreement"]["accuracy"],
            fp["agreement"]["count"],
            fp["agreement"]["macro_f1"],
            fp["mean_vote_probability"],
            fp["expected_calibration_error"],
            fp["fer2013_accuracy_same_images"],
        )
        if "agreement_without_train_duplicates" in fp:
            dedup = fp["agreement_without_train_duplicates"]
            log.info(
                "  without exact duplicates of train images: %.4f (%d)", dedup["accuracy"], dedup["count"]
            )
        for name, row in fp["agreement"]["per_class"].items():
            log.info(
                "  %-8s FER+ recall %.3f precision %.3f (n=%d)",
                name,
                row["recall"],
                row["precision"],
                row["support"],
            )
    log.info(
        "%s accuracy against FER2013's labels %.4f, macro-F1 %.4f (%d images)",
        split,
        report["as_is"]["accuracy"],
        report["as_is"]["macro_f1"],
        report["as_is"]["count"],
    )
    if "deduplicated" in report:
        log.info(
            "without the %d exact duplicates of train images: accuracy %.4f, macro-F1 %.4f",
            report["duplicates_of_train"],
            report["deduplicated"]["accuracy"],
            report["deduplicated"]["macro_f1"],
        )
    for name, row in report["as_is"]["per_class"].items():
        log.info(
            "  %-8s precision %.3f recall %.3f (n=%d)", name, row["precision"], row["recall"], row["support"]
        )
    if "faces_per_second_batch64" in report:
        log.info("throughput: %.0f faces/s at batch 64 (in process)", report["faces_per_second_batch64"])
    log.info("reports in %s", out)
