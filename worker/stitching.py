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


def stitch(records: list[BatchRecord]) -> list[dict[int, int]]:
    """Per batch (in order), {its track id: person id}; person ids count 1, 2, … by first appearance."""
    owned: dict[int, list[tuple[tuple[float, ...], int]]] = {}  # frame index -> (box, global id) drawn there
    mappings: list[dict[int, int]] = []
    next_id = 0
    for record in records:
        votes: Counter[tuple[int, int]] = Counter()
        for frame in record.preroll:
            earlier = owned.get(frame.index, [])
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
                    next_id += 1
                    mapping[face.track] = next_id
                owned.setdefault(frame.index, []).append((face.box_xyxy, mapping[face.track]))
        mappings.append(mapping)
    # Renumber by first appearance in the video, as a single pass would have numbered them.
    order: dict[int, int] = {}
    for record, mapping in zip(records, mappings, strict=True):
        for frame in record.frames:
            for face in frame.faces:
                order.setdefault(mapping[face.track], len(order) + 1)
    return [{track: order.get(person, 0) for track, person in mapping.items()} for mapping in mappings]
