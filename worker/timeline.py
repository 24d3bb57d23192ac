"""The timeline (schema_version 2): people from tracking, smoothed emotions, per-person and overall shares.

Built from the batch records by the finish step (worker.steps.write_job_timeline: `batch_frames` into
`write_timeline`, streamed): the emotions exactly as the batches drew them, person ids stitched across
batches; see docs/timeline.md for the schema.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from common.classes import EMOTIONS
from worker.video_io import atomic_target

SCHEMA_VERSION = 2
CSV_COLUMNS = (
    ["frame", "t_ms", "person_id", "x1", "y1", "x2", "y2", "score", "emotion", "shown_emotion"]
    + [f"p_{e}" for e in EMOTIONS]
    + [f"s_{e}" for e in EMOTIONS]
)


def _probs(values) -> dict[str, float]:
    return {name: round(float(p), 4) for name, p in zip(EMOTIONS, values, strict=False)}


def _share(durations: dict[str, float]) -> dict[str, float]:
    total = sum(durations.values())
    return {e: round(durations.get(e, 0.0) / total, 4) if total else 0.0 for e in EMOTIONS}


def _dominant(durations: dict[str, float]) -> str | None:
    # Ties go to the earlier emotion in EMOTIONS order, so the result is stable.
    best = max(EMOTIONS, key=lambda e: durations.get(e, 0.0))
    return best if durations.get(best, 0.0) > 0 else None


def timed_frames(frames: Iterable[dict], fps: float) -> Iterator[tuple[dict, float]]:
    """Each frame with how long it is on screen: up to the next frame; the last one lasts 1/fps. One frame
    behind its input, so frames can stream through."""
    previous = None
    for frame in frames:
        if previous is not None:
            yield previous, max(frame["t_ms"] - previous["t_ms"], 0.0)
        previous = frame
    if previous is not None:
        yield previous, 1000.0 / fps if fps > 0 else 0.0


class PeopleSummary:
    """Per person: first/last time, share of face-time per shown emotion, dominant, segments; and overall.
    Frames come one at a time, in time order, so a long video's frames need not all be held."""

    def __init__(self, max_gap_ms: float) -> None:
        self.max_gap_ms = max_gap_ms
        self.people: dict[int, dict] = {}
        self.overall: dict[str, float] = {}

    def add(self, frame: dict, duration: float) -> None:
        t = frame["t_ms"]
        for face in frame["faces"]:
            pid, emotion = face["person_id"], face["shown_emotion"]
            person = self.people.setdefault(pid, {"first_ms": t, "last_ms": t, "time": {}, "segments": []})
            segments = person["segments"]
            gap = t - person["last_ms"]
            if segments and segments[-1]["emotion"] == emotion and gap <= self.max_gap_ms:
                segments[-1]["end_ms"] = round(t + duration, 3)
            else:
                if segments and gap <= self.max_gap_ms:
                    segments[-1]["end_ms"] = t  # the next emotion starts where the last one ends
                segments.append({"start_ms": t, "end_ms": round(t + duration, 3), "emotion": emotion})
            person["last_ms"] = t
            person["time"][emotion] = person["time"].get(emotion, 0.0) + duration
            self.overall[emotion] = self.overall.get(emotion, 0.0) + duration

    def result(self, renumber: dict[int, int] | None = None) -> tuple[list[dict], dict]:
        """(people sorted by id, overall summary); `renumber` maps the frames' ids to the final ones."""
        people = [
            {
                "person_id": renumber[pid] if renumber is not None else pid,
                "first_ms": person["first_ms"],
                "last_ms": person["last_ms"],
                "dominant_emotion": _dominant(person["time"]),
                "share": _share(person["time"]),
                "segments": person["segments"],
            }
            for pid, person in self.people.items()
        ]
        summary = {
            "face_time_ms": round(sum(self.overall.values()), 3),
            "share": _share(self.overall),
            "dominant_emotion": _dominant(self.overall),
        }
        return sorted(people, key=lambda person: person["person_id"]), summary


def batch_frames(record, person_ids: dict[int, int]) -> Iterator[dict]:
    """A batch record's own frames (worker.records.BatchRecord) as timeline frames, with the person ids
    stitched across batches ({track: person id}, worker.stitching.Stitcher)."""
    for frame in record.frames:
        faces = [
            {
                "person_id": person_ids[face.track],
                "box_xyxy": [round(float(v), 1) for v in face.box_xyxy],
                "score": round(float(face.score), 4),
                "detected": face.detected,
                "emotion": EMOTIONS[int(np.argmax(face.probabilities))],
                "probabilities": _probs(face.probabilities),
                "smoothed_probabilities": _probs(face.smoothed),
                "shown_emotion": EMOTIONS[face.shown],
            }
            for face in frame.faces
        ]
        faces.sort(key=lambda f: f["person_id"])
        yield {"index": frame.index, "t_ms": frame.t_ms, "faces": faces}


def shown_people(record, person_ids: dict[int, int]) -> Iterator[dict]:
    """A batch record's own frames reduced to what PeopleSummary reads (time, each face's person and shown
    emotion): the finish step's first pass, cheaper than building whole timeline frames twice."""
    for frame in record.frames:
        faces = [{"person_id": person_ids[f.track], "shown_emotion": EMOTIONS[f.shown]} for f in frame.faces]
        yield {"t_ms": frame.t_ms, "faces": faces}


def timeline_head(job_id: str, video: dict, model: dict, settings: dict, options: dict) -> dict:
    """What comes before the frames in timeline.json; `options`: how the emoji were drawn (style, labels)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "job_id": job_id,
        "emotions": list(EMOTIONS),
        "video": video,
        "model": model,
        "settings": settings,
        "options": options,
    }


def write_timeline(json_path: Path, csv_path: Path, head: dict, frames: Iterable[dict], tail: dict) -> None:
    """timeline.json ({**head, "frames": [...], **tail}, compact) and timeline.csv (one row per frame per
    person, raw p_* and smoothed s_* probabilities), with the frames streamed through one at a time; both
    written atomically: readers see the old file or the new one, never half of one."""
    json_tmp, csv_tmp = atomic_target(Path(json_path)), atomic_target(Path(csv_path))
    try:
        with json_tmp.open("w") as out, csv_tmp.open("w", newline="") as table:
            rows = csv.writer(table)
            rows.writerow(CSV_COLUMNS)
            out.write(_compact(head)[:-1] + ',"frames":[')
            for i, frame in enumerate(frames):
                out.write(("," if i else "") + _compact(frame))
                rows.writerows(_csv_rows(frame))
            out.write("]," + _compact(tail)[1:])
        os.replace(json_tmp, json_path)
        os.replace(csv_tmp, csv_path)
    finally:
        json_tmp.unlink(missing_ok=True)  # a full disk or an error: no half-written file stays behind
        csv_tmp.unlink(missing_ok=True)


def _compact(data) -> str:
    return json.dumps(data, separators=(",", ":"))


def _csv_rows(frame: dict) -> list[list]:
    return [
        [frame["index"], frame["t_ms"], face["person_id"], *face["box_xyxy"], face["score"]]
        + [face["emotion"], face["shown_emotion"]]
        + [face["probabilities"][e] for e in EMOTIONS]
        + [face["smoothed_probabilities"][e] for e in EMOTIONS]
        for face in frame["faces"]
    ]
