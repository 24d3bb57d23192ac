"""Steady emoji: a per-person exponential average of the probabilities over time, and hysteresis on the
shown emotion (it changes only when another emotion leads by a margin for long enough)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.classes import NUM_CLASSES


@dataclass
class PersonState:
    last_ms: float
    smoothed: np.ndarray
    shown: int
    candidate: int = -1
    candidate_since_ms: float = 0.0

    def to_dict(self) -> dict:
        return {
            "last_ms": self.last_ms,
            "smoothed": self.smoothed.tolist(),
            "shown": self.shown,
            "candidate": self.candidate,
            "candidate_since_ms": self.candidate_since_ms,
        }

    @classmethod
    def from_dict(cls, data: dict) -> PersonState:
        return cls(
            float(data["last_ms"]),
            np.asarray(data["smoothed"], np.float64),
            int(data["shown"]),
            int(data["candidate"]),
            float(data["candidate_since_ms"]),
        )


class EmotionSmoother:
    """Feed each person's raw probabilities in time order; get back smoothed ones and the emotion to show."""

    def __init__(self, smoothing_ms: float = 500.0, margin: float = 0.10, hold_ms: float = 300.0) -> None:
        if smoothing_ms < 0:
            raise ValueError(f"smoothing_ms must be >= 0, got {smoothing_ms}")
        if not 0 <= margin <= 1:
            raise ValueError(f"margin must be in [0, 1], got {margin}")
        if hold_ms < 0:
            raise ValueError(f"hold_ms must be >= 0, got {hold_ms}")
        self.smoothing_ms = smoothing_ms
        self.margin = margin
        self.hold_ms = hold_ms
        self.people: dict[int, PersonState] = {}

    def update(self, person_id: int, probabilities, t_ms: float) -> tuple[np.ndarray, int]:
        """(smoothed probabilities [7], index of the emotion to show) for this person at `t_ms`."""
        raw = np.asarray(probabilities, np.float64).reshape(-1)
        if raw.shape != (NUM_CLASSES,):
            raise ValueError(f"expected {NUM_CLASSES} probabilities, got shape {raw.shape}")
        state = self.people.get(person_id)
        if state is None:
            leader = int(np.argmax(raw))
            self.people[person_id] = PersonState(float(t_ms), raw.copy(), leader)
            return raw.copy(), leader
        dt = max(float(t_ms) - state.last_ms, 0.0)
        # Time-based weight, so the same smoothing_ms means the same at 24 and 60 fps and across gaps.
        weight = 1.0 if self.smoothing_ms == 0 else 1.0 - math.exp(-dt / self.smoothing_ms)
        state.smoothed = state.smoothed + weight * (raw - state.smoothed)
        state.last_ms = float(t_ms)
        leader = int(np.argmax(state.smoothed))
        if leader != state.shown and state.smoothed[leader] - state.smoothed[state.shown] >= self.margin:
            if state.candidate != leader:
                state.candidate, state.candidate_since_ms = leader, float(t_ms)
            if t_ms - state.candidate_since_ms >= self.hold_ms:
                state.shown, state.candidate = leader, -1
        else:
            state.candidate = -1
        return state.smoothed.copy(), state.shown

    def forget_older_than(self, t_ms: float) -> None:
        """Drop people not seen since `t_ms` (the live stream keeps its state small)."""
        self.people = {pid: s for pid, s in self.people.items() if s.last_ms >= t_ms}

    def to_dict(self) -> dict:
        return {str(pid): s.to_dict() for pid, s in self.people.items()}

    def load_state(self, data: dict) -> None:
        self.people = {int(pid): PersonState.from_dict(s) for pid, s in data.items()}
