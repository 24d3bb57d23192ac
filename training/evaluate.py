"""Evaluation: accuracy, macro-F1, per-class precision and recall, confusion matrix, duplicates removed."""

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
        function = tf.function(serving_function(load_checkpoints(paths, bn_images), flip_average))
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
) -> dict:
    """Evaluate a model on `<data>/<split>`; writes report.json, confusion.json and confusion.png to `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    predict = load_predictor(model_paths, flip_average, data if recalibrate_bn else None)
    split_files = list_split(data, split, limit)
    images = load_images(split_files)
    predictions = predict(images).argmax(axis=1)
    models = [str(p) for p in model_paths] or [str(shipped_model_dir())]
    report: dict = {
        "models": models,
        "flip_average": flip_average,
        "batch_norm_recalibrated": recalibrate_bn,
        "data": str(data),
        "split": split,
    }
    report["as_is"] = metrics(split_files.labels, predictions)
    if dedup:
        duplicate = train_duplicates(data, images)
        report["duplicates_of_train"] = int(duplicate.sum())
        report["deduplicated"] = metrics(split_files.labels[~duplicate], predictions[~duplicate])
    if frames:
        frame_faces, frame_labels = load_frames(frames)
        report["frames"] = metrics(frame_labels, predict(frame_faces).argmax(axis=1))
    if throughput:
        report["faces_per_second_batch64"] = round(faces_per_second(predict), 1)

    matrix = np.asarray(report["as_is"]["confusion_matrix"]["rows_true_cols_predicted"])
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "confusion.json").write_text(json.dumps(report["as_is"]["confusion_matrix"], indent=2))
    title = f"{split}: accuracy {report['as_is']['accuracy']:.1%}, macro-F1 {report['as_is']['macro_f1']:.3f}"
    save_confusion_png(matrix, out / "confusion.png", title)
    log.info(
        "%s accuracy %.4f, macro-F1 %.4f (%d images)",
        split,
        report["as_is"]["accuracy"],
        report["as_is"]["macro_f1"],
        report["as_is"]["count"],
    )
    if dedup:
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
    if throughput:
        log.info("throughput: %.0f faces/s at batch 64 (in process)", report["faces_per_second_batch64"])
    log.info("reports in %s", out)
    return report
