"""Linking face boxes across frames into people: greedy IoU matching on velocity-predicted boxes.

A person keeps their id through misses shorter than `max_miss_ms`; someone who leaves and comes back later
gets a new id (we do not recognise faces).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worker.detection import iou_matrix

# A prediction further ahead than this is more guess than motion; hold the box still beyond it.
MAX_PREDICT_MS = 300.0
# How fast a face seen only once may have moved, in face sizes per ms (12 a second: someone close to the
# camera walking across it). With no velocity yet, such a face is a face size or more away at the next scan
# (every 3rd frame) and would otherwise start a new person at every scan, never confirmed, never drawn.
FIRST_STEP_SPEED = 0.012
# ...and then only to a box of about the same size (a far face does not turn into a near one in a step).
FIRST_STEP_SIZE_RATIO = 1.5


@dataclass
class Track:
    track_id: int
    box: np.ndarray  # xyxy at last_ms
    velocity: np.ndarray  # xyxy change per ms
    last_ms: float
    hits: int = 1

    def predict(self, t_ms: float) -> np.ndarray:
        return self.box + self.velocity * min(max(t_ms - self.last_ms, 0.0), MAX_PREDICT_MS)

    def to_dict(self) -> dict:
        return {
            "track_id": self.track_id,
            "box": self.box.tolist(),
            "velocity": self.velocity.tolist(),
            "last_ms": self.last_ms,
            "hits": self.hits,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Track:
        return cls(
            int(data["track_id"]),
            np.asarray(data["box"], np.float64),
            np.asarray(data["velocity"], np.float64),
            float(data["last_ms"]),
            int(data["hits"]),
        )


def _side(boxes: np.ndarray) -> np.ndarray:
    """Mean side of each box [N,4]."""
    return ((boxes[:, 2] - boxes[:, 0]) + (boxes[:, 3] - boxes[:, 1])) / 2


def _centre_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance between box centres of a [N,4] and b [M,4], in units of the mean side of the `a` box."""
    ca = (a[:, None, :2] + a[:, None, 2:]) / 2
    cb = (b[None, :, :2] + b[None, :, 2:]) / 2
    return np.linalg.norm(ca - cb, axis=2) / np.maximum(_side(a)[:, None], 1e-6)


class IouTracker:
    """Assigns a stable id to each box of each frame; call `update` with the frames in time order."""

    def __init__(
        self,
        min_iou: float = 0.2,
        max_miss_ms: float = 700.0,
        max_centre_distance: float = 0.6,
        velocity_smoothing: float = 0.5,
        first_id: int = 1,
    ) -> None:
        if not 0 <= min_iou <= 1:
            raise ValueError(f"min_iou must be in [0, 1], got {min_iou}")
        if max_miss_ms < 0:
            raise ValueError(f"max_miss_ms must be >= 0, got {max_miss_ms}")
        if max_centre_distance < 0:
            raise ValueError(f"max_centre_distance must be >= 0 (in face sizes), got {max_centre_distance}")
        if not 0 <= velocity_smoothing <= 1:
            raise ValueError(f"velocity_smoothing must be in [0, 1], got {velocity_smoothing}")
        self.min_iou = min_iou
        self.max_miss_ms = max_miss_ms
        self.max_centre_distance = max_centre_distance
        self.velocity_smoothing = velocity_smoothing
        self.tracks: list[Track] = []
        self.next_id = first_id

    def update(self, boxes_xyxy, t_ms: float) -> list[int]:
        """Ids for `boxes_xyxy` [N,4] seen at `t_ms`, in the same order; unmatched boxes start new people."""
        boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
        self.tracks = [t for t in self.tracks if t_ms - t.last_ms <= self.max_miss_ms]
        ids = [-1] * len(boxes)
        if self.tracks and len(boxes):
            predicted = np.stack([t.predict(t_ms) for t in self.tracks])
            iou = iou_matrix(predicted, boxes).astype(np.float64)
            distance = _centre_distance(predicted, boxes)
            # IoU decides; a near centre (fast motion, a box that changed size) is a weaker fallback. A track
            # seen once has no velocity to predict with: its reach grows with the time since, for boxes of
            # its size.
            reach = np.full((len(self.tracks), 1), self.max_centre_distance)
            first = np.array([t.hits == 1 for t in self.tracks])
            if first.any():
                elapsed = np.array([max(t_ms - t.last_ms, 0.0) for t in self.tracks])
                sizes = _side(predicted)[:, None] / np.maximum(_side(boxes)[None, :], 1e-6)
                similar = (sizes <= FIRST_STEP_SIZE_RATIO) & (sizes >= 1 / FIRST_STEP_SIZE_RATIO)
                reach = np.where(
                    first[:, None] & similar,
                    self.max_centre_distance + FIRST_STEP_SPEED * elapsed[:, None],
                    reach,
                )
            near = np.clip(1.0 - distance / np.maximum(reach, 1e-6), 0.0, 1.0) * self.min_iou * 0.99
            score = np.where(iou >= self.min_iou, iou, np.where(distance <= reach, near, 0.0))
            while True:
                ti, bi = np.unravel_index(int(np.argmax(score)), score.shape)
                if score[ti, bi] <= 0:
                    break
                self._advance(self.tracks[ti], boxes[bi], t_ms)
                ids[bi] = self.tracks[ti].track_id
                score[ti, :] = 0
                score[:, bi] = 0
        for bi, box in enumerate(boxes):
            if ids[bi] < 0:
                track = Track(self.next_id, box.copy(), np.zeros(4), float(t_ms))
                self.next_id += 1
                self.tracks.append(track)
                ids[bi] = track.track_id
        return ids

    def _advance(self, track: Track, box: np.ndarray, t_ms: float) -> None:
        dt = t_ms - track.last_ms
        if dt > 0:
            # The first step is the only motion known: take it whole rather than averaged with "still".
            a = 1.0 if track.hits == 1 else self.velocity_smoothing
            track.velocity = a * (box - track.box) / dt + (1 - a) * track.velocity
        track.box = box.copy()
        track.last_ms = float(t_ms)
        track.hits += 1

    def to_dict(self) -> dict:
        return {"next_id": self.next_id, "tracks": [t.to_dict() for t in self.tracks]}

    def load_state(self, data: dict) -> None:
        """Continue from a state saved with `to_dict` (the live stream keeps it in Redis)."""
        self.next_id = int(data.get("next_id", self.next_id))
        self.tracks = [Track.from_dict(t) for t in data.get("tracks", [])]
