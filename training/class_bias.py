"""A per-class bias on the model's answers, so that a class the model says too rarely reaches a recall floor.

A model trained on vote shares learns the classes' shares too: fear is the plurality of 2% of FER+ images
and its faces are easily read as surprise, so the model says fear only when it is sure. Multiplying each
class's probability by exp(bias) and renormalising (logit adjustment, as in Menon et al. 2021, "Long-tail
learning via logit adjustment") moves the boundary between fear and its neighbours without retraining. The
bias is chosen on val, so its figure is measured the honest way: chosen on one half of val, scored on the
other, both ways round (`cross_fitted`); the exported bias is then chosen on all of val.

    python -m training class-bias [--model VERSION_DIR] [--floor 0.55]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.classes import EMOTION_INDEX, EMOTIONS, NUM_CLASSES

log = logging.getLogger(__name__)

# The floor: every class but disgust (0.6% of FER+ train images, 31 val faces) at 55% recall.
RECALL_FLOOR = 0.55
EXEMPT = ("disgust",)
BIAS_STEP = 0.05
MAX_BIAS = 3.0


def apply_bias(probabilities: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Probabilities [N, 7] times exp(bias) per class, renormalised to sum to 1."""
    weighted = probabilities * np.exp(np.asarray(bias, np.float64))[None, :]
    return (weighted / weighted.sum(axis=1, keepdims=True)).astype(np.float32)


def recalls(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Recall of each class (0 for a class with no faces)."""
    predicted = probabilities.argmax(axis=1)
    out = np.zeros(NUM_CLASSES)
    for index in range(NUM_CLASSES):
        members = labels == index
        if members.any():
            out[index] = float(np.mean(predicted[members] == index))
    return out


def fit_bias(
    probabilities: np.ndarray,
    labels: np.ndarray,
    floor: float = RECALL_FLOOR,
    exempt: Sequence[str] = EXEMPT,
) -> np.ndarray:
    """The smallest bias, class by class, that lifts each class below `floor` (not exempt) to it.

    Raising one class takes faces from the others, so the search goes round until no class changes (at most
    a few rounds); a class that cannot reach the floor within MAX_BIAS keeps the bias that came closest."""
    bias = np.zeros(NUM_CLASSES)
    watched = [i for i, name in enumerate(EMOTIONS) if name not in exempt]
    for _ in range(5):
        changed = False
        for index in watched:
            if recalls(apply_bias(probabilities, bias), labels)[index] >= floor:
                continue
            best, best_recall = bias[index], -1.0
            for value in np.arange(bias[index], MAX_BIAS + 1e-9, BIAS_STEP):
                trial = bias.copy()
                trial[index] = value
                recall = recalls(apply_bias(probabilities, trial), labels)[index]
                if recall > best_recall:
                    best, best_recall = value, recall
                if recall >= floor:
                    best = value
                    break
            if best != bias[index]:
                bias[index], changed = best, True
        if not changed:
            break
    return np.round(bias, 4)


def cross_fitted(
    probabilities: np.ndarray, labels: np.ndarray, floor: float = RECALL_FLOOR, seed: int = 0
) -> dict:
    """Agreement and recalls with a bias chosen on the other half of the faces (two halves, stratified by
    class), pooled over both halves: what the bias does on faces it was not chosen on."""
    rng = np.random.default_rng(seed)
    half = np.zeros(len(labels), bool)
    for index in range(NUM_CLASSES):
        members = np.flatnonzero(labels == index)
        half[rng.permutation(members)[: len(members) // 2]] = True
    predicted = np.empty(len(labels), np.int64)
    biases = []
    for chosen_on in (half, ~half):
        bias = fit_bias(probabilities[chosen_on], labels[chosen_on], floor)
        biases.append(bias)
        predicted[~chosen_on] = apply_bias(probabilities[~chosen_on], bias).argmax(axis=1)
    pooled = np.eye(NUM_CLASSES)[predicted]
    return {
        "agreement": float(np.mean(predicted == labels)),
        "recall": dict(zip(EMOTIONS, np.round(recalls(pooled, labels), 4).tolist(), strict=True)),
        "biases": [dict(zip(EMOTIONS, b.tolist(), strict=True)) for b in biases],
    }


def parse_bias(text: str) -> np.ndarray:
    """ "fear=0.4,sad=0.1" -> the bias vector in the class order."""
    bias = np.zeros(NUM_CLASSES)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in EMOTION_INDEX or not value:
            raise ValueError(f"expected class=number pairs like fear=0.4, got {part!r}")
        bias[EMOTION_INDEX[name]] = float(value)
    return bias


def format_bias(bias: np.ndarray) -> str:
    return ",".join(f"{name}={value:g}" for name, value in zip(EMOTIONS, bias, strict=True) if value)


def report(model: Path | None, data: Path, ferplus: Path, floor: float = RECALL_FLOOR) -> dict:
    """The model's answers on val against the FER+ plurality: as they are, with a cross-fitted bias, and the
    bias chosen on all of val (the one to export)."""
    from training.data import load_images
    from training.evaluate import load_predictor
    from training.ferplus import NO_PLURALITY, load_ferplus_split

    votes = load_ferplus_split(data, "val", ferplus)
    scored = votes.split.labels != NO_PLURALITY
    images = load_images(votes.split)[scored]
    labels = votes.split.labels[scored]
    probabilities = load_predictor([model] if model else [])(images)
    bias = fit_bias(probabilities, labels, floor)
    biased = apply_bias(probabilities, bias)
    result = {
        "faces": int(len(labels)),
        "as_is": {
            "agreement": float(np.mean(probabilities.argmax(axis=1) == labels)),
            "recall": dict(zip(EMOTIONS, np.round(recalls(probabilities, labels), 4).tolist(), strict=True)),
        },
        "cross_fitted": cross_fitted(probabilities, labels, floor),
        "chosen_on_all_of_val": {
            "bias": format_bias(bias),
            "agreement": float(np.mean(biased.argmax(axis=1) == labels)),
            "recall": dict(zip(EMOTIONS, np.round(recalls(biased, labels), 4).tolist(), strict=True)),
        },
    }
    log.info("class bias for %s: %s", model or "the shipped model", result)
    return result
