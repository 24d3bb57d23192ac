"""The timeline as the finish step writes it (steps.write_job_timeline, from the batch records): person ids
stitched across batches, shares and segments, the JSON schema and the CSV export."""

import csv
import json

import numpy as np
import pytest

from common import job_files
from common.classes import EMOTION_INDEX, EMOTIONS
from common.media import VideoInfo
from common.storage import LocalStorage
from worker.plan import Plan
from worker.records import BatchRecord, FaceRecord, FrameRecord, write_atomically
from worker.settings import WorkerSettings
from worker.steps import TIMELINE_SETTINGS, write_job_timeline
from worker.timeline import CSV_COLUMNS, SCHEMA_VERSION, timed_frames, write_timeline

FPS = 25.0
FRAME_MS = 1000 / FPS
JOB = "job1"


def probs(emotion, confidence=0.9):
    p = [(1 - confidence) / 6] * 7
    p[EMOTION_INDEX[emotion]] = confidence
    return p


def face(track, box, emotion, detected=True, shown=None):
    """A face as a batch recorded it; `shown` (the emotion drawn, after smoothing) defaults to `emotion`."""
    raw = probs(emotion)
    drawn = shown or emotion
    return FaceRecord(
        track=track, box_xyxy=tuple(box), score=0.9, detected=detected, probabilities=raw,
        smoothed=probs(drawn, 0.6), shown=EMOTION_INDEX[drawn],
    )


def frame(index, faces):
    return FrameRecord(index=index, t_ms=index * FRAME_MS, faces=faces)


def record(batch_index, frames, preroll=()):
    start, end = frames[0].index, frames[-1].index + 1
    return BatchRecord(
        batch_index=batch_index, start=start, end=end, preroll=list(preroll), frames=frames,
        model_version="1", crops=0, cpu_s={"detect": 0.5}, wall_s=1.0, peak_rss_mib=100.0,
    )


def make(records, folder, max_miss_ms=200.0) -> dict:
    """The timeline the finish step writes for these batch records (job JOB, stored under `folder`)."""
    storage = LocalStorage(folder)
    for rec in records:
        write_atomically(storage.path(JOB, job_files.batch_record(rec.batch_index)), rec.model_dump_json())
    frames = records[-1].end
    info = VideoInfo(640, 360, FPS, frames, frames / FPS, False, None, "h264", "mov,mp4")
    plan = Plan(
        info=info, timestamps_ms=[i * FRAME_MS for i in range(frames)], keyframes=[0],
        batches=[(r.start, r.end) for r in records], video_start_s=0.0, container_start_s=0.0,
        output_size=(640, 360),
    )
    write_job_timeline(storage, JOB, plan, WorkerSettings(track_max_miss_ms=max_miss_ms), "emotion")
    return json.loads(storage.path(JOB, job_files.TIMELINE_JSON).read_text())


def two_people(n=50, a=1, b=2):
    """Person A (left, track `a`) sad then happy; person B (right, track `b`) neutral, detected on every
    third frame (interpolated between); frames 20-24 empty."""
    frames = []
    for i in range(n):
        faces = (
            []
            if 20 <= i < 25
            else [
                face(a, (100, 100, 160, 160), "sad" if i < 10 else "happy"),
                face(b, (400, 100, 460, 160), "neutral", detected=i % 3 == 0),
            ]
        )
        frames.append(frame(i, faces))
    return frames


def test_schema_has_every_part_and_every_frame(tmp_path):
    timeline = make([record(0, two_people())], tmp_path)
    assert timeline["schema_version"] == SCHEMA_VERSION == 2
    assert timeline["emotions"] == list(EMOTIONS)
    assert set(timeline) >= {"job_id", "video", "model", "settings", "frames", "people", "summary"}
    assert timeline["job_id"] == JOB and timeline["model"] == {"name": "emotion", "version": "1"}
    assert timeline["processing"]["batches"] == 1 and timeline["processing"]["cpu_s"] == {"detect": 0.5}
    # The settings the worker ran with, the one passed in and the defaults alike.
    assert timeline["settings"] == {
        name: getattr(WorkerSettings(track_max_miss_ms=200.0), name) for name in TIMELINE_SETTINGS
    }
    assert timeline["settings"]["track_max_miss_ms"] == 200.0
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
    assert [f["detected"] for f in timeline["frames"][0]["faces"]] == [True, True]
    assert [f["detected"] for f in timeline["frames"][1]["faces"]] == [True, False]


def test_people_are_numbered_by_first_appearance_whatever_their_track_ids(tmp_path):
    frames = two_people(20, a=9, b=4)
    frames[0].faces.reverse()  # the faces' order within a frame does not matter either
    timeline = make([record(0, frames)], tmp_path)
    ids = [[f["person_id"] for f in frame["faces"]] for frame in timeline["frames"]]
    assert ids[0] == [1, 2] and ids[19] == [1, 2]
    assert timeline["frames"][0]["faces"][0]["box_xyxy"] == [400.0, 100.0, 460.0, 160.0]
    assert [p["person_id"] for p in timeline["people"]] == [1, 2]


def test_person_share_dominant_and_segments(tmp_path):
    timeline = make([record(0, two_people()[:20])], tmp_path)
    a, b = timeline["people"]
    assert a["share"]["sad"] == pytest.approx(0.5) and a["share"]["happy"] == pytest.approx(0.5)
    assert a["dominant_emotion"] == "happy"  # a tie goes to the earlier emotion in EMOTIONS order
    assert [s["emotion"] for s in a["segments"]] == ["sad", "happy"]
    assert a["segments"][0]["start_ms"] == 0 and a["segments"][0]["end_ms"] == pytest.approx(10 * FRAME_MS)
    assert a["segments"][1]["end_ms"] == pytest.approx(20 * FRAME_MS)
    assert b["dominant_emotion"] == "neutral" and b["share"]["neutral"] == 1.0
    assert a["first_ms"] == 0 and a["last_ms"] == pytest.approx(19 * FRAME_MS)


def test_a_gap_longer_than_the_miss_budget_starts_a_new_segment(tmp_path):
    a = make([record(0, two_people())], tmp_path / "short", max_miss_ms=150.0)["people"][0]
    # Frames 20-24 are empty: 240 ms between frame 19 and frame 25, longer than 150 ms.
    assert [s["emotion"] for s in a["segments"]] == ["sad", "happy", "happy"]
    assert a["segments"][1]["end_ms"] == pytest.approx(20 * FRAME_MS)
    assert a["segments"][2]["start_ms"] == pytest.approx(25 * FRAME_MS)
    a = make([record(0, two_people())], tmp_path / "long", max_miss_ms=1000.0)["people"][0]
    assert [s["emotion"] for s in a["segments"]] == ["sad", "happy"]


def test_summary_is_share_of_face_time(tmp_path):
    timeline = make([record(0, two_people()[:20])], tmp_path)
    summary = timeline["summary"]
    assert summary["face_time_ms"] == pytest.approx(2 * 20 * FRAME_MS)
    assert summary["share"]["neutral"] == pytest.approx(0.5)
    assert summary["share"]["sad"] == pytest.approx(0.25) and summary["share"]["happy"] == pytest.approx(0.25)
    assert summary["dominant_emotion"] == "neutral"
    assert sum(summary["share"].values()) == pytest.approx(1.0, abs=1e-3)


def test_no_faces_gives_an_empty_but_valid_timeline(tmp_path):
    timeline = make([record(0, [frame(i, []) for i in range(10)])], tmp_path)
    assert timeline["people"] == [] and len(timeline["frames"]) == 10
    assert timeline["summary"] == {
        "face_time_ms": 0,
        "share": {e: 0.0 for e in EMOTIONS},
        "dominant_emotion": None,
    }


def test_raw_and_smoothed_are_both_kept(tmp_path):
    emotions = ["sad"] * 5 + ["happy"] * 5
    frames = [frame(i, [face(1, (0, 0, 50, 50), e, shown="sad")]) for i, e in enumerate(emotions)]
    f = make([record(0, frames)], tmp_path)["frames"][6]["faces"][0]
    assert f["emotion"] == "happy" and f["shown_emotion"] == "sad"
    assert f["probabilities"]["happy"] == pytest.approx(0.9)
    assert f["smoothed_probabilities"]["sad"] == pytest.approx(0.6)


# --- stitching person ids across batches ------------------------------------------------------------------


def crossing(start, end, people, first_track=1, preroll_from=None):
    """Frames [start, end) of `people` [(left x, y, step a frame)] as one batch saw them, with its own track
    ids from `first_track`; with `preroll_from`, also the pre-roll frames [preroll_from, start)."""

    def frames(lo, hi):
        return [
            frame(i, [
                face(first_track + n, (x + dx * i, y, x + dx * i + 60, y + 60), "neutral")
                for n, (x, y, dx) in enumerate(people)
            ])
            for i in range(lo, hi)
        ]

    preroll = frames(preroll_from, start) if preroll_from is not None else []
    return record(0, frames(start, end), preroll)


def test_several_people_crossing_a_batch_boundary_keep_their_ids(tmp_path):
    # Three people walking (two towards each other), seen by two batches with different track ids, the
    # second batch's own order of tracks reversed; its pre-roll overlaps the first batch's last 10 frames.
    people = [(0, 100, 4), (400, 100, -4), (200, 250, 0)]
    first = crossing(0, 30, people)
    second = crossing(30, 60, people[::-1], first_track=7, preroll_from=20)
    second.batch_index = 1
    timeline = make([first, second], tmp_path)
    by_box = {}
    for fr in timeline["frames"]:
        for f in fr["faces"]:
            by_box.setdefault(f["person_id"], []).append((fr["index"], f["box_xyxy"][0]))
    assert sorted(by_box) == [1, 2, 3], "a person got a new id at the boundary"
    for person, seen in by_box.items():
        assert [i for i, _ in seen] == list(range(60)), f"person {person} is missing frames"
        steps = {round(x2 - x1, 3) for (_, x1), (_, x2) in zip(seen, seen[1:], strict=False)}
        assert len(steps) == 1, f"person {person} jumps at the boundary: {steps}"
    assert len(timeline["people"]) == 3


def test_a_new_person_in_the_next_batch_gets_the_next_id_and_one_who_left_keeps_theirs(tmp_path):
    first = crossing(0, 30, [(0, 100, 0), (300, 100, 0)])
    # The second batch: the left person is gone, the right one stays, a new one comes in.
    second = crossing(30, 60, [(300, 100, 0), (500, 250, 0)], first_track=1, preroll_from=20)
    second.batch_index = 1
    people = make([first, second], tmp_path)["people"]
    assert [(p["person_id"], p["first_ms"], p["last_ms"]) for p in people] == [
        (1, 0, pytest.approx(29 * FRAME_MS)),
        (2, 0, pytest.approx(59 * FRAME_MS)),
        (3, pytest.approx(30 * FRAME_MS), pytest.approx(59 * FRAME_MS)),
    ]


def write(timeline: dict, folder) -> list[int]:
    """Write a whole timeline as the finish step does, its frames streamed one at a time; answers the order
    in which the frames were read."""
    head = {k: v for k, v in timeline.items() if k not in ("frames", "people", "summary", "processing")}
    read = []

    def frames():
        for frame in timeline["frames"]:
            read.append(frame["index"])
            yield frame

    tail = {k: timeline[k] for k in ("people", "summary", "processing")}
    write_timeline(folder / "timeline.json", folder / "timeline.csv", head, frames(), tail)
    return read


def test_csv_has_one_row_per_frame_per_person(tmp_path):
    timeline = make([record(0, two_people())], tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    write(timeline, out)
    rows = list(csv.DictReader((out / "timeline.csv").open()))
    assert list(rows[0]) == CSV_COLUMNS
    assert len(rows) == sum(len(f["faces"]) for f in timeline["frames"]) == 2 * 45
    assert rows[0]["person_id"] == "1" and rows[1]["person_id"] == "2"
    assert float(rows[0]["p_sad"]) == pytest.approx(0.9) and rows[0]["shown_emotion"] == "sad"


def test_streamed_json_reads_back_as_the_whole_timeline_and_leaves_no_temporary_file(tmp_path):
    timeline = make([record(0, two_people())], tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    assert write(timeline, out) == list(range(50))  # frame by frame, in order
    assert json.loads((out / "timeline.json").read_text()) == timeline
    assert sorted(p.name for p in out.iterdir()) == ["timeline.csv", "timeline.json"]
    # The finish step's own write left nothing beside its files either.
    assert sorted(p.name for p in (tmp_path / JOB).glob(".*")) == []


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
