"""The smoother: a real change shows once, noise and single-frame blips never flip the emoji."""

import numpy as np
import pytest

from common.classes import EMOTION_INDEX, EMOTIONS
from worker.smoothing import EmotionSmoother

FRAME_MS = 1000 / 30


def probs(emotion, confidence=0.8):
    p = np.full(len(EMOTIONS), (1 - confidence) / (len(EMOTIONS) - 1))
    p[EMOTION_INDEX[emotion]] = confidence
    return p


def shown_sequence(smoother, sequence, person_id=1):
    return [EMOTIONS[smoother.update(person_id, p, i * FRAME_MS)[1]] for i, p in enumerate(sequence)]


def changes(sequence):
    return sum(a != b for a, b in zip(sequence, sequence[1:], strict=False))


def test_a_step_change_shows_exactly_once_and_not_instantly():
    sequence = [probs("sad")] * 60 + [probs("happy")] * 60
    shown = shown_sequence(EmotionSmoother(500, 0.1, 300), sequence)
    assert changes(shown) == 1
    switch = shown.index("happy")
    assert 60 < switch < 60 + 30  # after the change, within a second
    assert shown[-1] == "happy"


def test_noise_does_not_flip_the_emoji():
    rng = np.random.default_rng(0)
    sequence = []
    for _ in range(300):
        p = probs("neutral", 0.3) + rng.uniform(0, 0.4, len(EMOTIONS))
        sequence.append(p / p.sum())
    raw = [EMOTIONS[int(np.argmax(p))] for p in sequence]
    shown = shown_sequence(EmotionSmoother(500, 0.1, 300), sequence)
    assert changes(raw) > 50  # the raw argmax flickers
    assert changes(shown) == 0 and shown[0] == "neutral"


def test_a_single_frame_blip_is_ignored():
    sequence = [probs("neutral")] * 30 + [probs("angry", 0.99)] + [probs("neutral")] * 30
    assert set(shown_sequence(EmotionSmoother(500, 0.1, 300), sequence)) == {"neutral"}


def test_people_are_smoothed_separately():
    smoother = EmotionSmoother(500, 0.1, 300)
    for i in range(60):
        smoother.update(1, probs("happy"), i * FRAME_MS)
        _, shown = smoother.update(2, probs("sad"), i * FRAME_MS)
    assert EMOTIONS[smoother.people[1].shown] == "happy" and EMOTIONS[shown] == "sad"


def test_smoothed_values_stay_probabilities():
    smoother = EmotionSmoother(500)
    for i, emotion in enumerate(["sad", "happy", "fear", "happy"] * 10):
        smoothed, _ = smoother.update(1, probs(emotion), i * FRAME_MS)
        assert smoothed.sum() == pytest.approx(1.0) and smoothed.min() >= 0


def test_zero_smoothing_and_no_hysteresis_follows_the_raw_argmax():
    sequence = [probs(e) for e in ["sad", "happy", "happy", "angry"]]
    assert shown_sequence(EmotionSmoother(0, 0, 0), sequence) == ["sad", "happy", "happy", "angry"]


def test_state_round_trip():
    smoother = EmotionSmoother()
    smoother.update(3, probs("fear"), 0)
    restored = EmotionSmoother()
    restored.load_state(smoother.to_dict())
    assert EMOTIONS[restored.update(3, probs("fear"), FRAME_MS)[1]] == "fear"


def test_wrong_number_of_probabilities_is_refused():
    with pytest.raises(ValueError, match="expected 7 probabilities"):
        EmotionSmoother().update(1, [0.5, 0.5], 0)


@pytest.mark.parametrize("kwargs", [{"smoothing_ms": -1}, {"margin": 2}, {"hold_ms": -5}])
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        EmotionSmoother(**kwargs)
