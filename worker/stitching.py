"""Person ids across batches. Each batch follows people with its own track ids; the pre-roll it analysed
before its first frame overlaps frames an earlier batch owns, and the same face there (by box overlap) is
the same person. Only the timeline needs global ids: the drawn emoji shows the emotion, not the id."""

from __future__ import annotations

from collections import Counter

import numpy as np

from worker.detection import iou_matrix
from worker.records import BatchRecord

# Boxes of one face seen by two batches differ only where their trackers interpolated differently.
SAME_FACE_IOU = 0.3


class Stitcher:
    """Takes the batch records one at a time, in order, and keeps only the boxes a later pre-roll can still
    overlap, so a long video's records need not all be held at once.

    `add` answers the batch's {track id: provisional person id}; once every batch is in, `person_ids` gives
    the final ids, 1, 2, … by first appearance in the video, as a single pass would have numbered them.
    """

    def __init__(self) -> None:
        self.owned: dict[int, list[tuple[tuple[float, ...], int]]] = {}  # frame index -> (box, person) drawn
        self.mappings: list[dict[int, int]] = []
        self.first_seen: dict[int, int] = {}  # provisional person id -> final id
        self.next_id = 0

    def add(self, record: BatchRecord) -> dict[int, int]:
        first = min((frame.index for frame in record.preroll), default=record.start)
        self.owned = {index: boxes for index, boxes in self.owned.items() if index >= first}
        votes: Counter[tuple[int, int]] = Counter()
        for frame in record.preroll:
            earlier = self.owned.get(frame.index, [])
            if not earlier or not frame.faces:
                continue
            iou = iou_matrix(
                np.asarray([f.box_xyxy for f in frame.faces]), np.asarray([box for box, _ in earlier])
            )
            for i, face in enumerate(frame.faces):
                j = int(np.argmax(iou[i]))
                if iou[i, j] >= SAME_FACE_IOU:
                    votes[(face.track, earlier[j][1])] += 1
        mapping: dict[int, int] = {}
        taken: set[int] = set()
        # The pairs seen together most often first; each earlier person continues as at most one track.
        for (track, person), _ in sorted(votes.items(), key=lambda item: (-item[1], item[0])):
            if track not in mapping and person not in taken:
                mapping[track] = person
                taken.add(person)
        for frame in record.frames:
            for face in frame.faces:
                if face.track not in mapping:
                    self.next_id += 1
                    mapping[face.track] = self.next_id
                person = mapping[face.track]
                self.owned.setdefault(frame.index, []).append((face.box_xyxy, person))
                self.first_seen.setdefault(person, len(self.first_seen) + 1)
        self.mappings.append(mapping)
        return mapping

    def person_ids(self) -> list[dict[int, int]]:
        """Per batch (in order), {its track id: person id}."""
        return [
            {track: self.first_seen.get(person, 0) for track, person in mapping.items()}
            for mapping in self.mappings
        ]
