"""A job's steps as plain functions; the Celery tasks in worker/tasks.py only call them and chain them.

    plan_job             probe the upload, index its frames, cut batches     -> plan.json
    run_batch (each)     decode once, analyse, draw, encode                  -> batches/N.json, pieces/N.mp4
    finish_job           stitch person ids, write the timeline, join pieces  -> timeline.*, result.mp4

Why these steps: the only thing a batch needs from outside its frames is a warm tracker and smoother, and
the pre-roll gives it that (see worker.batch_pass), so every batch can draw its emoji and encode its piece at
once, in parallel with the others on any worker, decoding each frame once. What needs the whole video, person
ids and the summary, is cheap and comes last. Every step reads and writes files of its job only, through the
storage object and the names in common.job_files, and replaces its outputs atomically, so any step may run
twice (a worker died, the task came back) with the same result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

from common import job_files
from common.errors import VideoError
from common.storage import LocalStorage
from worker.batch_pass import run_batch
from worker.plan import Plan, load_plan, plan_job
from worker.records import BatchRecord
from worker.settings import WorkerSettings
from worker.stitching import Stitcher
from worker.timeline import (
    PeopleSummary,
    batch_frames,
    shown_people,
    timed_frames,
    timeline_head,
    write_timeline,
)
from worker.video_io import JoinSource, join_pieces

__all__ = ["Plan", "finish_job", "load_plan", "load_record", "plan_job", "run_batch"]

logger = logging.getLogger(__name__)


def load_record(storage: LocalStorage, job_id: str, index: int) -> BatchRecord:
    return BatchRecord.model_validate_json(storage.path(job_id, job_files.batch_record(index)).read_text())


class ProcessingReport:
    """What the batches cost, summed over the job (the benchmark reads it from the timeline)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.batches, self.wall_s, self.peak_rss_mib = 0, 0.0, 0.0

    def add(self, record: BatchRecord) -> None:
        for stage, seconds in record.cpu_s.items():
            self.cpu[stage] = self.cpu.get(stage, 0.0) + seconds
        self.batches += 1
        self.wall_s += record.wall_s
        self.peak_rss_mib = max(self.peak_rss_mib, record.peak_rss_mib)

    def as_dict(self) -> dict:
        return {
            "batches": self.batches,
            "cpu_s": {stage: round(seconds, 3) for stage, seconds in self.cpu.items()},
            "batch_wall_s": round(self.wall_s, 3),
            "peak_rss_mib": self.peak_rss_mib,
        }


# The settings that shape a timeline, recorded in it.
TIMELINE_SETTINGS = (
    "detect_every",
    "detect_width",
    "detect_min_score",
    "preroll_ms",
    "lookahead_ms",
    "smoothing_ms",
    "hysteresis_margin",
    "hysteresis_hold_ms",
    "track_max_miss_ms",
    "track_min_detections",
    "track_sure_score",
)


def write_job_timeline(
    storage: LocalStorage, job_id: str, plan: Plan, settings: WorkerSettings, model_name: str
) -> tuple[int, int, list[tuple[int, int]]]:
    """Stitch person ids and write timeline.json and timeline.csv from the batch records. Answers the frames
    and people in the timeline, and (batch, first frame) of the batches that drew frames.

    Two passes over the records, one record in memory at a time, so memory does not grow with the video:
    the first stitches person ids and sums up people and costs, the second streams the frames into the files.
    """
    info = plan.info
    stitcher, people, report = Stitcher(), PeopleSummary(settings.track_max_miss_ms), ProcessingReport()
    frames, model_version, present = 0, None, []

    def first_pass() -> Iterator[dict]:
        nonlocal frames, model_version
        for index in range(len(plan.batches)):
            record = load_record(storage, job_id, index)
            report.add(record)
            frames += len(record.frames)
            model_version = model_version or record.model_version
            if record.frames:
                present.append((record.batch_index, record.start))
            yield from shown_people(record, stitcher.add(record))

    for frame, duration in timed_frames(first_pass(), info.fps):
        people.add(frame, duration)
    person_ids = stitcher.person_ids()
    video = {
        "width": info.width,
        "height": info.height,
        "fps": round(info.fps, 6),
        "frames": frames,
        "duration_s": info.duration_s,
        "has_audio": info.has_audio,
    }
    model = {"name": model_name, "version": model_version}
    used = {name: getattr(settings, name) for name in TIMELINE_SETTINGS}
    people_list, summary = people.result(stitcher.first_seen)
    write_timeline(
        storage.path(job_id, job_files.TIMELINE_JSON),
        storage.path(job_id, job_files.TIMELINE_CSV),
        timeline_head(job_id, video, model, used, plan.options.model_dump()),
        (
            frame
            for index, ids in enumerate(person_ids)
            for frame in batch_frames(load_record(storage, job_id, index), ids)
        ),
        {"people": people_list, "summary": summary, "processing": report.as_dict()},
    )
    return frames, len(people_list), present


def finish_job(
    storage: LocalStorage, job_id: str, plan: Plan, settings: WorkerSettings, model_name: str
) -> Path:
    """Stitch person ids, write timeline.json and timeline.csv, join the pieces with the original audio into
    result.mp4 (faststart)."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    info = plan.info
    frames, people, present = write_job_timeline(storage, job_id, plan, settings, model_name)
    times = plan.timestamps_ms
    # Batches of a damaged stretch may have decoded nothing and have no piece. Each piece lasts until the
    # next piece's first frame, so the joined frames keep the source's times (lost frames leave a gap).
    if not present:
        raise VideoError("no frame of the video could be decoded; the file is damaged")
    pieces = []
    for (index, start), following in zip(present, present[1:] + [None], strict=True):
        duration = (times[following[1]] - times[start]) / 1000 if following else None
        pieces.append((storage.path(job_id, job_files.piece(index)), duration))
    missing = [p.name for p, _ in pieces if not p.exists()]
    if missing:
        raise RuntimeError(f"job {job_id}: pieces {missing} are missing; cannot join")
    target = storage.path(job_id, job_files.RESULT)
    source = JoinSource(
        storage.path(job_id, job_files.INPUT),
        info.format_name,
        info.audio_codec if info.has_audio else None,
        tuple(settings.mp4_audio_codecs),
        video_offset_s=max(plan.video_start_s - plan.container_start_s, 0.0),
    )
    join_pieces(pieces, source, target, timeout_s=settings.ffmpeg_timeout_s)
    logger.info(
        "job %s: timeline (%d frames, %d people) and %s from %d pieces in %.2f s wall, %.2f s CPU",
        job_id,
        frames,
        people,
        target.name,
        len(pieces),
        time.perf_counter() - t0,
        time.process_time() - cpu0,
    )
    return target
