"""FER+ crowd votes (Barsoum et al. 2016) as training targets and labels for the FER2013 images.

`../shared/data/ferplus/<split>.csv` has, for each image of `fer2013/<split>/`, the votes of 10 annotators
over neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown and NF (not a face).
From them:

- the **target** of an image is the share of its votes per class over our seven classes (the FER+ paper's
  "probability distribution" scheme). Contempt has no emoji: its votes are dropped and the other votes
  renormalised (a contempt face is then learned as what the other annotators saw, mostly neutral; see
  `docs/model_card.md` for the measured effect). Unknown and NF votes are dropped the same way;
- images are **left out** when unknown and NF together hold more than half of the votes, when there are no
  votes, or when no vote is left for one of the seven classes;
- the **plurality** is the column with the most votes over all ten columns; there is none (-1) when the top
  count is tied, or when the top column is contempt, unknown or NF. It is the label of record for
  evaluation: images without one are left out of scoring.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.classes import EMOTION_INDEX, NUM_CLASSES
from training.data import DEFAULT_DATA_ROOT, Split, _stratified_subset

DEFAULT_FERPLUS_ROOT = DEFAULT_DATA_ROOT.parent / "ferplus"
# The vote columns, in the order of FER+'s fer2013new.csv.
VOTE_COLUMNS: tuple[str, ...] = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
)
FERPLUS_TO_CLASS: dict[str, str] = {
    "neutral": "neutral",
    "happiness": "happy",
    "surprise": "surprise",
    "sadness": "sad",
    "anger": "angry",
    "disgust": "disgust",
    "fear": "fear",
}
CONTEMPT = VOTE_COLUMNS.index("contempt")
NOT_EMOTIONS = (VOTE_COLUMNS.index("unknown"), VOTE_COLUMNS.index("NF"))
# Row i of this matrix takes the vote column i to our class order (contempt, unknown and NF to nothing).
_VOTES_TO_CLASSES = np.zeros((len(VOTE_COLUMNS), NUM_CLASSES), np.float64)
for _column, _name in FERPLUS_TO_CLASS.items():
    _VOTES_TO_CLASSES[VOTE_COLUMNS.index(_column), EMOTION_INDEX[_name]] = 1.0
NO_PLURALITY = -1


@dataclass(frozen=True)
class Votes:
    """The FER+ rows of one split: file (relative to the split folder), votes [N, 10], FER2013's label."""

    files: tuple[str, ...]
    votes: np.ndarray  # int, columns in VOTE_COLUMNS order
    fer2013_labels: np.ndarray  # int, the class folder of the image, in our class order

    def __post_init__(self):
        if self.votes.shape != (len(self.files), len(VOTE_COLUMNS)):
            raise ValueError(
                f"votes must be [{len(self.files)}, {len(VOTE_COLUMNS)}], got {list(self.votes.shape)}"
            )


def read_votes(csv_path: Path) -> Votes:
    """One split's CSV; rows with empty votes (images FER+ could not be tied to) read as all zeros."""
    files, votes, labels = [], [], []
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in (*VOTE_COLUMNS, "file", "original_label") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path}: missing columns {missing}; expected the FER+ CSV of SOURCE.md")
        for row in reader:
            files.append(row["file"])
            votes.append([int(row[c]) if row[c].strip() else 0 for c in VOTE_COLUMNS])
            labels.append(EMOTION_INDEX[row["original_label"]])
    return Votes(tuple(files), np.asarray(votes, np.int64).reshape(-1, len(VOTE_COLUMNS)), np.asarray(labels))


def vote_targets(votes: np.ndarray) -> np.ndarray:
    """Share of the votes per class in our class order [N, 7]; contempt, unknown and NF votes dropped and the
    rest renormalised. A row with no vote left is all zeros (such images are left out, see `usable`)."""
    counts = np.asarray(votes, np.float64) @ _VOTES_TO_CLASSES
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0).astype(np.float32)


def usable(votes: np.ndarray) -> np.ndarray:
    """Mask of the images kept: some votes, at most half of them unknown or NF, and one for our classes."""
    votes = np.asarray(votes)
    total = votes.sum(axis=1)
    not_emotion = votes[:, list(NOT_EMOTIONS)].sum(axis=1)
    ours = (votes @ _VOTES_TO_CLASSES).sum(axis=1)
    return (total > 0) & (2 * not_emotion <= total) & (ours > 0)


def plurality(votes: np.ndarray) -> np.ndarray:
    """The class (our order) with the most of all ten columns' votes; NO_PLURALITY when the top count is
    tied, when it is contempt, unknown or NF, or when there are no votes."""
    votes = np.asarray(votes)
    top = votes.max(axis=1, keepdims=True)
    winners = votes == top
    column = votes.argmax(axis=1)
    ours = _VOTES_TO_CLASSES[column].argmax(axis=1)
    has_class = _VOTES_TO_CLASSES[column].sum(axis=1) > 0
    clear = (winners.sum(axis=1) == 1) & (top[:, 0] > 0) & has_class
    return np.where(clear, ours, NO_PLURALITY).astype(np.int32)


@dataclass(frozen=True)
class FerPlusSplit:
    """The usable images of a split with their vote targets, plurality and FER2013 label."""

    split: Split  # paths; labels = FER+ plurality (NO_PLURALITY where none); targets = vote shares
    fer2013_labels: np.ndarray
    votes: np.ndarray

    def __len__(self) -> int:
        return len(self.split)

    def scored(self) -> FerPlusSplit:
        """Only the images that have a plurality (the ones evaluation scores)."""
        return self.select(np.flatnonzero(self.split.labels != NO_PLURALITY))

    def select(self, rows: np.ndarray) -> FerPlusSplit:
        """The images at the given row indices."""
        split = Split(
            tuple(self.split.paths[i] for i in rows), self.split.labels[rows], self.split.targets[rows]
        )
        return FerPlusSplit(split, self.fer2013_labels[rows], self.votes[rows])


def load_ferplus_split(
    data: Path,
    split: str,
    ferplus: Path = DEFAULT_FERPLUS_ROOT,
    limit: int | None = None,
    seed: int = 0,
) -> FerPlusSplit:
    """The images of `<data>/<split>/` that FER+ votes keep (see `usable`), with their targets and plurality.

    `limit` keeps a random subset of about that many, stratified by plurality (for quick runs and tests).
    """
    csv_path = Path(ferplus) / f"{split}.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"no FER+ votes at {csv_path} (expected <ferplus>/{split}.csv, see SOURCE.md)"
        )
    rows = read_votes(csv_path)
    keep = np.flatnonzero(usable(rows.votes))
    split_dir = Path(data) / split
    paths = tuple(str(split_dir / rows.files[i]) for i in keep)
    missing = [p for p in paths[:20] if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"FER+ rows name images that are not under {split_dir}: {missing[:3]}")
    votes = rows.votes[keep]
    result = FerPlusSplit(
        Split(paths, plurality(votes), vote_targets(votes)), rows.fer2013_labels[keep], votes
    )
    if limit is not None and limit < len(result):
        result = result.select(_stratified_subset(result.split.labels, limit, seed))
    return result
