"""What one step hands to the next, as typed records (stored as JSON in the job's folder)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

from worker.video_io import atomic_target


class FaceRecord(BaseModel):
    """One face in one frame, as the batch step saw and drew it."""

    track: int  # the batch's own id for this person (made global by stitching)
    box_xyxy: tuple[float, float, float, float]  # displayed frame's pixels
    score: float
    detected: bool  # False: the box was interpolated between detections
    probabilities: list[float]
    smoothed: list[float]
    shown: int  # index of the emotion drawn


class FrameRecord(BaseModel):
    index: int
    t_ms: float
    faces: list[FaceRecord]


class BatchRecord(BaseModel):
    """One batch's result: its own frames, the pre-roll frames before them (for stitching person ids with the
    previous batch), and what each stage cost."""

    batch_index: int
    start: int
    end: int
    preroll: list[FrameRecord]
    frames: list[FrameRecord]
    model_version: str | None
    crops: int
    # CPU seconds of this process per stage (decode, detect, crop, classify, track, draw, encode, ...).
    cpu_s: dict[str, float]
    wall_s: float
    peak_rss_mib: float
    worker: str = ""  # host:pid of the process that ran it


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one; two writers never share a file."""
    tmp = atomic_target(Path(path))
    tmp.write_text(text)
    os.replace(tmp, path)
