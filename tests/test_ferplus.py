"""FER+ votes as targets and labels, and the evaluation metrics against them, on tiny known cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from common.classes import EMOTION_INDEX, NUM_CLASSES
from training.evaluate import expected_calibration_error, ferplus_metrics, mean_vote_probability, metrics
from training.ferplus import (
    NO_PLURALITY,
    VOTE_COLUMNS,
    load_ferplus_split,
    plurality,
    read_votes,
    usable,
    vote_targets,
)
from training.train import TrainConfig, train

HEADER = "file,fer_row,original_label," + ",".join(VOTE_COLUMNS) + ",majority"
# file, FER2013 label, votes over neutral happiness surprise sadness anger disgust fear contempt unknown NF
ROWS = [
    ("happy/a.jpg", "happy", (0, 10, 0, 0, 0, 0, 0, 0, 0, 0)),  # unanimous
    ("sad/b.jpg", "sad", (6, 0, 0, 2, 0, 0, 0, 2, 0, 0)),  # contempt votes dropped: 6/8 neutral, 2/8 sad
    ("angry/c.jpg", "angry", (2, 0, 0, 0, 2, 0, 0, 5, 1, 0)),  # contempt plurality: kept, not scored
    ("fear/d.jpg", "fear", (0, 0, 4, 0, 0, 0, 4, 0, 2, 0)),  # tie at the top: kept, not scored
    ("neutral/e.jpg", "neutral", (2, 0, 0, 0, 0, 0, 0, 0, 6, 2)),  # mostly unknown or NF: left out
    ("neutral/f.jpg", "neutral", (0, 0, 0, 0, 0, 0, 0, 0, 0, 10)),  # not a face: left out
    ("disgust/g.jpg", "disgust", (1, 0, 0, 0, 0, 2, 0, 2, 5, 0)),  # half unknown: kept; top unknown
    ("surprise/h.jpg", "surprise", (0, 0, 0, 0, 0, 0, 0, 10, 0, 0)),  # only contempt: nothing left, out
    ("angry/i.jpg", "angry", ("", "", "", "", "", "", "", "", "", "")),  # no votes (not tied to a row)
]


def _votes(rows=ROWS) -> np.ndarray:
    return np.asarray([[v if v != "" else 0 for v in votes] for _, _, votes in rows])


def test_targets_are_vote_shares_in_our_class_order_without_contempt():
    targets = vote_targets(_votes())
    assert targets.shape == (len(ROWS), NUM_CLASSES)
    assert targets[0, EMOTION_INDEX["happy"]] == 1.0
    assert targets[1, EMOTION_INDEX["neutral"]] == pytest.approx(0.75)
    assert targets[1, EMOTION_INDEX["sad"]] == pytest.approx(0.25)
    assert targets[2, EMOTION_INDEX["neutral"]] == pytest.approx(0.5)
    assert targets[2, EMOTION_INDEX["angry"]] == pytest.approx(0.5)
    assert targets[3, EMOTION_INDEX["surprise"]] == targets[3, EMOTION_INDEX["fear"]] == pytest.approx(0.5)
    # Unknown and NF votes are not a class either: the 1 neutral and 2 disgust votes share the target.
    assert targets[6, EMOTION_INDEX["disgust"]] == pytest.approx(2 / 3)
    np.testing.assert_allclose(targets[[0, 1, 2, 3, 4, 6]].sum(axis=1), 1.0, atol=1e-6)
    assert not targets[[5, 7, 8]].any()  # no vote for one of our classes


def test_images_mostly_unknown_or_not_a_face_or_without_votes_are_left_out():
    assert usable(_votes()).tolist() == [True, True, True, True, False, False, True, False, False]


def test_plurality_over_all_ten_columns_with_ties_contempt_and_unknown_giving_none():
    expected = [
        EMOTION_INDEX["happy"],
        EMOTION_INDEX["neutral"],
        NO_PLURALITY,  # contempt has the most votes
        NO_PLURALITY,  # 4 surprise, 4 fear
        NO_PLURALITY,  # unknown has the most
        NO_PLURALITY,  # NF
        NO_PLURALITY,  # unknown 5 beats disgust 2
        NO_PLURALITY,  # contempt
        NO_PLURALITY,  # no votes
    ]
    assert plurality(_votes()).tolist() == expected
    # A tie below the top does not matter; one vote more breaks a tie at the top.
    assert plurality(np.array([[5, 0, 0, 2, 2, 0, 0, 0, 1, 0]])).tolist() == [EMOTION_INDEX["neutral"]]
    assert plurality(np.array([[0, 0, 5, 0, 0, 0, 4, 0, 1, 0]])).tolist() == [EMOTION_INDEX["surprise"]]


@pytest.fixture
def ferplus_folder(tmp_path) -> tuple[Path, Path]:
    """A FER+ CSV of ROWS (as `val` and `train`) and the FER2013 images it names."""
    data, votes = tmp_path / "fer2013", tmp_path / "ferplus"
    votes.mkdir()
    lines = [HEADER] + [f"{file},,{label}," + ",".join(map(str, v)) + "," for file, label, v in ROWS]
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (votes / f"{split}.csv").write_text("\n".join(lines) + "\n")
        for file, _, _ in ROWS:
            path = data / split / file
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (48, 48, 1), dtype=np.uint8)
            path.write_bytes(tf.io.encode_jpeg(tf.constant(pixels)).numpy())
    return data, votes


def test_loader_reads_the_csv_and_keeps_the_usable_images(ferplus_folder):
    data, votes = ferplus_folder
    rows = read_votes(votes / "val.csv")
    assert rows.votes.tolist() == _votes().tolist()  # empty vote cells read as zeros
    loaded = load_ferplus_split(data, "val", votes)
    assert [Path(p).relative_to(data / "val").as_posix() for p in loaded.split.paths] == [
        "happy/a.jpg",
        "sad/b.jpg",
        "angry/c.jpg",
        "fear/d.jpg",
        "disgust/g.jpg",
    ]
    assert loaded.fer2013_labels.tolist() == [
        EMOTION_INDEX[n] for n in ("happy", "sad", "angry", "fear", "disgust")
    ]
    np.testing.assert_allclose(loaded.split.targets, vote_targets(_votes()[[0, 1, 2, 3, 6]]))
    scored = loaded.scored()
    assert scored.split.labels.tolist() == [EMOTION_INDEX["happy"], EMOTION_INDEX["neutral"]]


def test_loader_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no FER\\+ votes"):
        load_ferplus_split(tmp_path, "val", tmp_path)
    (tmp_path / "val.csv").write_text("file,neutral\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_votes(tmp_path / "val.csv")


def test_training_on_votes_validates_against_the_plurality(ferplus_folder, tmp_path):
    data, votes = ferplus_folder
    out = tmp_path / "run"
    config = TrainConfig(
        data=str(data),
        ferplus=str(votes),
        labels="ferplus",
        out=str(out),
        epochs=1,
        batch_size=4,
        mixup_alpha=0.4,
    )
    train(config)
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) == 2 and "val_accuracy" in history[0]
    # Two val images have a plurality: agreement is 0, 1/2 or 1.
    accuracy = float(history[1].split(",")[history[0].split(",").index("val_accuracy")])
    assert accuracy in (0.0, 0.5, 1.0)
    with pytest.raises(ValueError, match="unknown label source"):
        train(TrainConfig(**{**config.__dict__, "labels": "kaggle", "out": str(tmp_path / "x")}))


def test_expected_calibration_error_on_a_known_case():
    # Two answers at confidence 0.9 (one right), two at 0.6 (both right): |0.5-0.9|*2/4 + |1-0.6|*2/4 = 0.4.
    probabilities = np.array(
        [
            [0.9, 0.1, 0, 0, 0, 0, 0],
            [0.9, 0.1, 0, 0, 0, 0, 0],
            [0.4, 0.6, 0, 0, 0, 0, 0],
            [0.4, 0.6, 0, 0, 0, 0, 0],
        ]
    )
    labels = np.array([0, 1, 1, 1])
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.4)
    # Always right at 0.9: under-confident by 0.1.
    assert expected_calibration_error(probabilities[:2], np.array([0, 0])) == pytest.approx(0.1)
    assert expected_calibration_error(np.zeros((0, 7)), np.zeros(0, int)) == 0.0


def test_mean_vote_probability_weights_the_model_by_the_votes():
    probabilities = np.array([[0.5, 0.5, 0, 0, 0, 0, 0], [0, 0, 0, 1.0, 0, 0, 0]])
    targets = np.array([[1.0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0.6, 0, 0, 0.4]])
    assert mean_vote_probability(probabilities, targets) == pytest.approx((0.5 + 0.6) / 2)


def test_ferplus_metrics_score_only_images_with_a_plurality(ferplus_folder):
    data, votes = ferplus_folder
    loaded = load_ferplus_split(data, "val", votes)  # happy, neutral (sad by FER2013), and 3 without
    probabilities = np.full((len(loaded), NUM_CLASSES), 0.01)
    probabilities[:, EMOTION_INDEX["sad"]] = 0.94  # sad for every image
    report = ferplus_metrics(probabilities, loaded, duplicate=np.array([True, False, False, False, False]))
    assert report["usable_images"] == 5
    assert report["agreement"]["count"] == 2 and report["agreement"]["accuracy"] == 0.0
    matrix = np.asarray(report["agreement"]["confusion_matrix"]["rows_true_cols_predicted"])
    assert matrix[EMOTION_INDEX["happy"], EMOTION_INDEX["sad"]] == 1
    assert matrix[EMOTION_INDEX["neutral"], EMOTION_INDEX["sad"]] == 1 and matrix.sum() == 2
    assert report["fer2013_accuracy_same_images"] == 0.5  # b.jpg is sad in FER2013
    assert report["agreement_without_train_duplicates"]["count"] == 1
    assert report["expected_calibration_error"] == pytest.approx(0.94)
    # Sad holds 2/8 of b's votes; none of the others'.
    assert report["mean_vote_probability"] == pytest.approx(
        (0.01 + (0.75 * 0.01 + 0.25 * 0.94) + 0.01 + 0.01 + 0.01) / 5, abs=1e-4
    )
    assert report["agreement"] == metrics(loaded.scored().split.labels, probabilities[:2].argmax(axis=1))
