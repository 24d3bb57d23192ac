"""The per-class bias (training/class_bias.py): what it does to the answers, how it is chosen, and that the
exported model applies it."""

from __future__ import annotations

import numpy as np
import pytest

from common.classes import EMOTION_INDEX, NUM_CLASSES
from training.class_bias import apply_bias, cross_fitted, fit_bias, format_bias, parse_bias, recalls

FEAR, SURPRISE, DISGUST = EMOTION_INDEX["fear"], EMOTION_INDEX["surprise"], EMOTION_INDEX["disgust"]


def _answers(rng, label: int, runner_up: int, margin: float) -> np.ndarray:
    """One face's probabilities: `label` and `runner_up` share most of the mass, `runner_up` ahead by
    `margin` (negative: behind)."""
    p = np.full(NUM_CLASSES, 0.02)
    p[label], p[runner_up] = 0.45 - margin / 2, 0.45 + margin / 2
    return p / p.sum()


@pytest.fixture
def fear_read_as_surprise():
    """Ten fear faces, four of them answered fear and six surprise by small margins; ten surprise faces
    answered surprise by wide ones; ten neutral faces."""
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for margin in (-0.2, -0.15, -0.1, -0.05, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12):
        rows.append(_answers(rng, FEAR, SURPRISE, margin))
        labels.append(FEAR)
    for _ in range(10):
        rows.append(_answers(rng, SURPRISE, FEAR, -0.6))
        labels.append(SURPRISE)
        p = np.full(NUM_CLASSES, 0.05)
        p[EMOTION_INDEX["neutral"]] = 0.7
        rows.append(p / p.sum())
        labels.append(EMOTION_INDEX["neutral"])
    return np.asarray(rows, np.float32), np.asarray(labels)


def test_the_bias_multiplies_and_renormalises():
    p = np.asarray([[0.5, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05]], np.float32)
    bias = np.zeros(NUM_CLASSES)
    bias[FEAR] = np.log(3.0)
    out = apply_bias(p, bias)
    np.testing.assert_allclose(out.sum(), 1.0, atol=1e-6)
    np.testing.assert_allclose(out[0, FEAR] / out[0, 0], 0.3 / 0.5, rtol=1e-5)  # fear tripled against angry
    np.testing.assert_allclose(apply_bias(p, np.zeros(NUM_CLASSES)), p, atol=1e-7)


def test_the_smallest_bias_that_reaches_the_floor_is_chosen(fear_read_as_surprise):
    probabilities, labels = fear_read_as_surprise
    assert recalls(probabilities, labels)[FEAR] == pytest.approx(0.4)
    bias = fit_bias(probabilities, labels, floor=0.6)
    assert recalls(apply_bias(probabilities, bias), labels)[FEAR] >= 0.6
    smaller = bias.copy()
    smaller[FEAR] -= 0.05
    assert recalls(apply_bias(probabilities, smaller), labels)[FEAR] < 0.6
    assert np.count_nonzero(bias) == 1  # surprise and neutral were above the floor: untouched
    # The wide-margin surprise faces stay surprise.
    assert recalls(apply_bias(probabilities, bias), labels)[SURPRISE] == 1.0


def test_exempt_classes_and_classes_above_the_floor_get_no_bias(fear_read_as_surprise):
    probabilities, labels = fear_read_as_surprise
    assert not np.any(fit_bias(probabilities, labels, floor=0.3))
    assert not np.any(fit_bias(probabilities, labels, floor=0.6, exempt=("fear", "disgust")))


def test_cross_fitting_chooses_on_one_half_and_scores_the_other(fear_read_as_surprise):
    probabilities, labels = fear_read_as_surprise
    result = cross_fitted(probabilities, labels, floor=0.6)
    assert len(result["biases"]) == 2 and all(b["fear"] > 0 for b in result["biases"])
    assert 0 < result["agreement"] <= 1 and result["recall"]["surprise"] == 1.0


def test_bias_text_round_trips_and_refuses_unknown_classes():
    bias = parse_bias("fear=0.3, sad=0.1")
    assert bias[FEAR] == 0.3 and bias[EMOTION_INDEX["sad"]] == 0.1 and bias[DISGUST] == 0
    assert format_bias(bias) == "fear=0.3,sad=0.1"
    with pytest.raises(ValueError, match="fear=0.4"):
        parse_bias("scared=0.4")
