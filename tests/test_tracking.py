"""The tracker on synthetic boxes: people keep their ids through motion, crossings, short misses."""

import numpy as np
import pytest

from worker.tracking import IouTracker

FRAME_MS = 40.0


def box(cx, cy, side=60.0):
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def run(tracker, frames):
    """Ids per frame for a list of frames, each a list of boxes."""
    return [
        tracker.update(np.asarray(boxes, float).reshape(-1, 4), i * FRAME_MS)
        for i, boxes in enumerate(frames)
    ]


def test_one_person_moving_keeps_one_id():
    frames = [[box(100 + 8 * i, 200)] for i in range(50)]
    ids = run(IouTracker(), frames)
    assert {i[0] for i in ids} == {1}


def test_two_people_crossing_keep_their_ids():
    # A walks right, B walks left, B a little lower and nearer (bigger): they overlap for several frames.
    frames = [[box(100 + 10 * i, 200, 60), box(400 - 10 * i, 215, 70)] for i in range(31)]
    ids = run(IouTracker(), frames)
    assert ids[0] == [1, 2]
    assert all(frame_ids == [1, 2] for frame_ids in ids), ids


def test_short_miss_keeps_the_id():
    frames = (
        [[box(100 + 5 * i, 200)] for i in range(10)]
        + [[]] * 3
        + [[box(100 + 5 * i, 200)] for i in range(13, 20)]
    )
    ids = run(IouTracker(max_miss_ms=500), frames)
    assert {i[0] for i in ids if i} == {1}


def test_occlusion_of_one_person_does_not_disturb_the_other():
    frames = []
    for i in range(30):
        a = box(100 + 4 * i, 200)
        b = box(300, 200)
        frames.append([a, b] if not 10 <= i < 14 else [b])  # A is hidden behind something for 4 frames
    ids = run(IouTracker(max_miss_ms=300), frames)
    assert ids[0] == [1, 2]
    assert all(frame_ids[-1] == 2 for frame_ids in ids)
    assert ids[20] == [1, 2]


def test_long_absence_gives_a_new_id():
    frames = [[box(100, 200)]] * 5 + [[]] * 30 + [[box(100, 200)]] * 5
    ids = run(IouTracker(max_miss_ms=500), frames)
    assert ids[0] == [1] and ids[-1] == [2]


def test_people_entering_and_leaving_get_new_ids_and_others_keep_theirs():
    frames = []
    for i in range(40):
        boxes = [box(100, 100)]
        if 10 <= i < 25:
            boxes.append(box(400, 300))  # enters at 10, leaves at 25
        if i >= 30:
            boxes.append(box(250, 400))  # a third person enters
        frames.append(boxes)
    ids = run(IouTracker(max_miss_ms=200), frames)
    assert all(frame_ids[0] == 1 for frame_ids in ids)
    assert ids[10] == [1, 2] and ids[24] == [1, 2]
    assert ids[30] == [1, 3] and ids[39] == [1, 3]


def test_a_fast_face_scanned_every_third_frame_keeps_one_id():
    # Someone close to the camera crossing it: a face size further at every scan, 100 ms apart.
    frames = [(i * 100.0, [box(100 + 60 * i, 200)]) for i in range(8)]
    tracker = IouTracker()
    ids = [tracker.update(np.asarray(boxes, float), t) for t, boxes in frames]
    assert {i[0] for i in ids} == {1}, ids


def test_a_far_face_does_not_become_a_near_one_in_a_step():
    tracker = IouTracker()
    assert tracker.update(np.asarray([box(100, 200, 30)], float), 0.0) == [1]
    assert tracker.update(np.asarray([box(130, 200, 90)], float), 100.0) == [2]


def test_boxes_far_apart_never_match():
    ids = run(IouTracker(), [[box(100, 100)], [box(600, 600)]])
    assert ids == [[1], [2]]


def test_state_round_trip_continues_the_ids():
    tracker = IouTracker()
    run(tracker, [[box(100, 100), box(300, 100)]])
    restored = IouTracker()
    restored.load_state(tracker.to_dict())
    assert restored.update(np.asarray([box(302, 100), box(101, 100)]), FRAME_MS) == [2, 1]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_iou": 1.5}, "min_iou"),
        ({"max_miss_ms": -1}, "max_miss_ms"),
        ({"max_centre_distance": -0.1}, "max_centre_distance"),
        ({"velocity_smoothing": 2}, "velocity_smoothing"),
    ],
)
def test_bad_parameters_are_refused_in_the_constructor(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IouTracker(**kwargs)
