"""The finish step's timeline part on long videos: does its memory stay flat as the video grows?

Writes synthetic batch records (30 fps, two faces in every frame, 150-frame batches with a 1 s pre-roll, as
the worker writes them) for each length, then runs `worker.steps.write_job_timeline` on them in this process
and reports its peak Python memory (tracemalloc), wall and CPU time, and the size of what it wrote.

    .venv/bin/python -m bench.bench_finish [--minutes 1,10,30]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

from common import job_files
from common.classes import NUM_CLASSES
from common.media import VideoInfo
from common.storage import LocalStorage
from worker.plan import Plan
from worker.records import BatchRecord, FaceRecord, FrameRecord, write_atomically
from worker.settings import WorkerSettings
from worker.steps import write_job_timeline

FPS, BATCH, PREROLL = 30, 150, 30


def frame(index: int) -> FrameRecord:
    """Two people side by side, drifting a little; the emotion turns every few seconds."""
    faces = []
    for track, x in ((1, 100.0), (2, 700.0)):
        shift = (index % 90) / 3
        probabilities = [0.05] * NUM_CLASSES
        shown = (index // 150 + track) % NUM_CLASSES
        probabilities[shown] = 0.7
        faces.append(
            FaceRecord(
                track=track,
                box_xyxy=(x + shift, 200.0, x + shift + 180, 420.0),
                score=0.9,
                detected=index % 3 == 0,
                probabilities=probabilities,
                smoothed=probabilities,
                shown=shown,
            )
        )
    return FrameRecord(index=index, t_ms=index * 1000 / FPS, faces=faces)


def make_job(storage: LocalStorage, job_id: str, minutes: int) -> Plan:
    frames = minutes * 60 * FPS
    batches = [(start, min(start + BATCH, frames)) for start in range(0, frames, BATCH)]
    for index, (start, end) in enumerate(batches):
        record = BatchRecord(
            batch_index=index,
            start=start,
            end=end,
            preroll=[frame(i) for i in range(max(start - PREROLL, 0), start)],
            frames=[frame(i) for i in range(start, end)],
            model_version="3",
            crops=(end - start) * 2 // 3,
            cpu_s={"decode": 1.0, "detect": 1.0},
            wall_s=1.0,
            peak_rss_mib=500.0,
        )
        write_atomically(storage.path(job_id, job_files.batch_record(index)), record.model_dump_json())
    info = VideoInfo(1280, 720, FPS, frames, frames / FPS, True, "aac", "h264", "mov,mp4,m4a,3gp,3g2,mj2")
    return Plan(
        info=info,
        timestamps_ms=[i * 1000 / FPS for i in range(frames)],
        keyframes=[start for start, _ in batches],
        batches=batches,
        video_start_s=0.0,
        container_start_s=0.0,
        output_size=(1280, 720),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", default="1,10,30", help="video lengths, comma-separated")
    args = parser.parse_args()
    print("| video (30 fps, 2 faces a frame) | batches | peak Python MiB | wall s | CPU s | JSON MB |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="bench-finish-") as folder:
        storage = LocalStorage(Path(folder))
        for minutes in (int(m) for m in args.minutes.split(",")):
            job_id = f"finish-{minutes}"
            storage.path(job_id, job_files.INPUT)  # makes the job's folder
            plan = make_job(storage, job_id, minutes)
            tracemalloc.start()
            t0, cpu0 = time.perf_counter(), time.process_time()
            write_job_timeline(storage, job_id, plan, WorkerSettings(), "emotion")
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            size = storage.path(job_id, job_files.TIMELINE_JSON).stat().st_size / 1e6
            figures = " | ".join(f"{v:.1f}" for v in (peak, wall, cpu, size))
            print(f"| {minutes} min | {len(plan.batches)} | {figures} |")


if __name__ == "__main__":
    main()
