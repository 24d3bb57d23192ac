"""The timeline: people, smoothing, shares and segments, the JSON schema and the CSV export."""

import csv
import json

import numpy as np
import pytest

from common.classes import EMOTION_INDEX, EMOTIONS
from worker.smoothing import EmotionSmoother
from worker.timeline import (
    CSV_COLUMNS,
    SCHEMA_VERSION,
    build_timeline,
    timed_frames,
    write_timeline,
)
from worker.tracking import IouTracker

FPS = 25.0
FRAME_MS = 1000 / FPS
VIDEO = {"width": 640, "height": 360, "fps": FPS, "frames": 0, "duration_s": 0.0, "has_audio": False}


def probs(emotion, confidence=0.9):
    p = [(1 - confidence) / 6] * 7
    p[EMOTION_INDEX[emotion]] = confidence
    return p


def face(box, emotion, detected=True):
    return {"box_xyxy": list(box), "score": 0.9, "detected": detected, "probabilities": probs(emotion)}


def make(frames, min_detections=1):
    return build_timeline(
        "job1",
        {**VIDEO, "frames": len(frames)},
        frames,
        {"name": "emotion", "version": "1"},
        {"detect_every": 1, "smoothing_ms": 0},
        IouTracker(max_miss_ms=200),
        EmotionSmoother(0, 0, 0),
        min_detections,
    )


def two_people(n=50):
    """Person A (left) sad then happy; person B (right) neutral throughout; frames 20-24 empty."""
    frames = []
    for i in range(n):
        faces = (
            []
            if 20 <= i < 25
            else [
                face((100, 100, 160, 160), "sad" if i < 10 else "happy"),
                face((400, 100, 460, 160), "neutral", detected=i % 3 == 0),
            ]
        )
        frames.append({"index": i, "t_ms": i * FRAME_MS, "faces": faces})
    return frames


def test_schema_has_every_part_and_every_frame():
    timeline = make(two_people())
    assert timeline["schema_version"] == SCHEMA_VERSION == 2
    assert timeline["emotions"] == list(EMOTIONS)
    assert set(timeline) >= {"job_id", "video", "model", "settings", "frames", "people", "summary"}
    assert [f["index"] for f in timeline["frames"]] == list(range(50))
    assert timeline["frames"][22]["faces"] == []
    one = timeline["frames"][0]["faces"][0]
    assert set(one) == {
        "person_id",
        "box_xyxy",
        "score",
        "detected",
        "emotion",
        "probabilities",
        "smoothed_probabilities",
        "shown_emotion",
    }
    assert set(one["probabilities"]) == set(EMOTIONS) == set(one["smoothed_probabilities"])
    json.dumps(timeline)  # plain JSON types only


def test_people_get_ids_and_a_gap_longer_than_the_miss_budget_starts_new_ones():
    timeline = make(two_people())
    ids = [[f["person_id"] for f in frame["faces"]] for frame in timeline["frames"]]
    assert ids[0] == [1, 2] and ids[19] == [1, 2]
    assert ids[25] == [3, 4]  # 5 frames = 200 ms away: longer than max_miss_ms=200 allows
    assert [p["person_id"] for p in timeline["people"]] == [1, 2, 3, 4]


def test_person_share_dominant_and_segments():
    frames = two_people()[:20]
    timeline = make(frames)
    a, b = timeline["people"]
    assert a["share"]["sad"] == pytest.approx(0.5) and a["share"]["happy"] == pytest.approx(0.5)
    assert a["dominant_emotion"] == "happy"  # a tie goes to the earlier emotion in EMOTIONS order
    assert [s["emotion"] for s in a["segments"]] == ["sad", "happy"]
    assert a["segments"][0]["start_ms"] == 0 and a["segments"][0]["end_ms"] == pytest.approx(10 * FRAME_MS)
    assert a["segments"][1]["end_ms"] == pytest.approx(20 * FRAME_MS)
    assert b["dominant_emotion"] == "neutral" and b["share"]["neutral"] == 1.0
    assert a["first_ms"] == 0 and a["last_ms"] == pytest.approx(19 * FRAME_MS)


def test_summary_is_share_of_face_time():
    timeline = make(two_people()[:20])
    summary = timeline["summary"]
    assert summary["face_time_ms"] == pytest.approx(2 * 20 * FRAME_MS)
    assert summary["share"]["neutral"] == pytest.approx(0.5)
    assert summary["share"]["sad"] == pytest.approx(0.25) and summary["share"]["happy"] == pytest.approx(0.25)
    assert summary["dominant_emotion"] == "neutral"
    assert sum(summary["share"].values()) == pytest.approx(1.0, abs=1e-3)


def test_no_faces_gives_an_empty_but_valid_timeline():
    frames = [{"index": i, "t_ms": i * FRAME_MS, "faces": []} for i in range(10)]
    timeline = make(frames)
    assert timeline["people"] == [] and len(timeline["frames"]) == 10
    assert timeline["summary"] == {
        "face_time_ms": 0,
        "share": {e: 0.0 for e in EMOTIONS},
        "dominant_emotion": None,
    }


def test_tracks_the_detector_confirmed_too_rarely_are_dropped():
    frames = two_people()[:20]
    # A one-frame false detection far from everyone.
    frames[5]["faces"].append(face((600, 300, 630, 330), "angry"))
    assert len(make(frames, min_detections=1)["people"]) == 3
    timeline = make(frames, min_detections=2)
    assert [p["person_id"] for p in timeline["people"]] == [1, 2]


def test_raw_and_smoothed_are_both_kept():
    frames = [
        {"index": i, "t_ms": i * FRAME_MS, "faces": [face((0, 0, 50, 50), "sad" if i < 5 else "happy")]}
        for i in range(10)
    ]
    timeline = build_timeline("j", VIDEO, frames, {}, {}, IouTracker(), EmotionSmoother(500, 0.1, 300))
    f = timeline["frames"][6]["faces"][0]
    assert f["emotion"] == "happy" and f["shown_emotion"] == "sad"
    assert f["probabilities"]["happy"] > f["smoothed_probabilities"]["happy"]


def write(timeline: dict, folder) -> list[int]:
    """Write a whole timeline as the finish step does, its frames streamed one at a time; answers the order
    in which the frames were read."""
    head = {k: v for k, v in timeline.items() if k not in ("frames", "people", "summary")}
    read = []

    def frames():
        for frame in timeline["frames"]:
            read.append(frame["index"])
            yield frame

    tail = {"people": timeline["people"], "summary": timeline["summary"]}
    write_timeline(folder / "timeline.json", folder / "timeline.csv", head, frames(), tail)
    return read


def test_csv_has_one_row_per_frame_per_person(tmp_path):
    timeline = make(two_people())
    write(timeline, tmp_path)
    rows = list(csv.DictReader((tmp_path / "timeline.csv").open()))
    assert list(rows[0]) == CSV_COLUMNS
    assert len(rows) == sum(len(f["faces"]) for f in timeline["frames"]) == 2 * 45
    assert rows[0]["person_id"] == "1" and rows[1]["person_id"] == "2"
    assert float(rows[0]["p_sad"]) == pytest.approx(0.9) and rows[0]["shown_emotion"] == "sad"


def test_streamed_json_reads_back_as_the_whole_timeline_and_leaves_no_temporary_file(tmp_path):
    timeline = make(two_people())
    assert write(timeline, tmp_path) == list(range(50))  # frame by frame, in order
    assert json.loads((tmp_path / "timeline.json").read_text()) == json.loads(json.dumps(timeline))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timeline.csv", "timeline.json"]


def test_a_failed_streamed_write_leaves_no_file_behind(tmp_path):
    def frames():
        yield {"index": 0, "t_ms": 0.0, "faces": []}
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_timeline(tmp_path / "t.json", tmp_path / "t.csv", {"job_id": "j"}, frames(), {"people": []})
    assert list(tmp_path.iterdir()) == []


def frame_durations_ms(times_ms, fps):
    return [duration for _, duration in timed_frames(({"t_ms": t} for t in times_ms), fps)]


def test_frame_durations():
    assert frame_durations_ms([0.0, 40.0, 100.0], 25.0) == [40.0, 60.0, 40.0]
    assert frame_durations_ms([], 25.0) == []
    assert np.isclose(sum(frame_durations_ms([i * 40.0 for i in range(25)], 25.0)), 1000.0)
