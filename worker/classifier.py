"""The emotion model as the pipeline sees it: a port (`EmotionClassifier`), batched calls, and calls made in
the background so the batch keeps decoding and detecting while the model server works."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import numpy as np

from common.classes import NUM_CLASSES
from common.errors import EmojiServiceError, ModelServerError


class EmotionClassifier(Protocol):
    model_version: str | int | None

    def predict(self, faces: np.ndarray) -> np.ndarray:
        """Probabilities float32 [N, 7] for faces uint8 [N, 48, 48, 1]."""


def classify(classifier: EmotionClassifier, faces: np.ndarray, per_call: int) -> np.ndarray:
    """Probabilities [N, 7] for all crops, in as few Predict calls as the per-call limit allows."""
    if not len(faces):
        return np.zeros((0, NUM_CLASSES), np.float32)
    parts = [classifier.predict(faces[i : i + per_call]) for i in range(0, len(faces), per_call)]
    probabilities = np.concatenate(parts).astype(np.float32)
    if probabilities.shape != (len(faces), NUM_CLASSES):
        raise ModelServerError(
            f"expected probabilities of shape {(len(faces), NUM_CLASSES)}, got {probabilities.shape}"
        )
    return probabilities


def model_version(classifier: EmotionClassifier) -> str | None:
    try:
        version = classifier.model_version
    except EmojiServiceError:
        return None
    return None if version is None else str(version)


class BackgroundClassifier:
    """Collects crops and sends them `per_call` at a time from one background thread (gRPC waits without
    the GIL, so decoding and detection go on meanwhile). `submit` returns where each crop's answer will be.

    A call goes out at `per_call` crops, or once the oldest waiting crop has waited `max_wait_ms` of video
    time (`due`), or on `flush()`: the caller flushes before it needs an answer that was not sent yet."""

    def __init__(self, classifier: EmotionClassifier, per_call: int, max_wait_ms: float = 150.0) -> None:
        self.classifier = classifier
        self.per_call = per_call
        self.max_wait_ms = max_wait_ms
        self.first_waiting_ms = 0.0
        self.cpu_s = 0.0  # CPU seconds of the calls (request building, gRPC), counted on their thread
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="classify")
        self.waiting: list[np.ndarray] = []
        self.waiting_slots: list[Slot] = []
        self.calls = 0

    def submit(self, crop: np.ndarray, t_ms: float = 0.0) -> Slot:
        slot = Slot()
        if not self.waiting:
            self.first_waiting_ms = t_ms
        self.waiting.append(crop)
        self.waiting_slots.append(slot)
        if len(self.waiting) >= self.per_call:
            self.flush()
        return slot

    def due(self, now_ms: float) -> None:
        if self.waiting and now_ms - self.first_waiting_ms >= self.max_wait_ms:
            self.flush()

    def flush(self) -> None:
        if not self.waiting:
            return
        crops, slots = np.stack(self.waiting), self.waiting_slots
        self.waiting, self.waiting_slots = [], []
        future = self.pool.submit(self._classify, crops)
        self.calls += 1
        for row, slot in enumerate(slots):
            slot.future, slot.row = future, row

    def _classify(self, crops: np.ndarray) -> np.ndarray:
        start = time.thread_time()
        try:
            return classify(self.classifier, crops, self.per_call)
        finally:
            self.cpu_s += time.thread_time() - start

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class Slot:
    """Where one crop's probabilities will be: row `row` of a call's answer."""

    __slots__ = ("future", "row")

    def __init__(self) -> None:
        self.future: Future | None = None
        self.row = -1

    def result(self) -> np.ndarray:
        if self.future is None:
            raise RuntimeError("the crop was never sent; flush() first")
        return self.future.result()[self.row]
