"""The names of a job's files inside its storage folder, defined once for the gateway and the worker.

input               the upload, as received (the gateway writes it)
plan.json           frame times, keyframes and batch ranges (worker: plan step)
batches/NNNNN.json  one batch's faces, ids, emotions and stage timings (worker: batch step)
pieces/NNNNN.mp4    one batch's frames with the emoji drawn, H.264 (worker: batch step)
timeline.json/.csv  the whole video's timeline (worker: finish step)
result.mp4          the pieces joined with the original audio (worker: finish step)
result.<ext>        a photo job's photo with its emoji, in the upload's format: jpg, png, webp, heic
                    (worker: photo step, which also writes batches/00000.json and the timeline)
"""

from __future__ import annotations

INPUT = "input"
PLAN = "plan.json"
TIMELINE_JSON = "timeline.json"
TIMELINE_CSV = "timeline.csv"
RESULT = "result.mp4"


def batch_record(batch_index: int) -> str:
    return f"batches/{batch_index:05d}.json"


def piece(batch_index: int) -> str:
    return f"pieces/{batch_index:05d}.mp4"


def photo_result(image_format: str) -> str:
    """The drawn photo's name for a format of common.images.IMAGE_FORMATS (jpeg -> result.jpg)."""
    from common.images import IMAGE_FORMATS

    return f"result.{IMAGE_FORMATS[image_format].extension}"
