"""Scale-out: a job's batches run on any number of worker processes, and the result does not depend on how
many took part. The same upload through a stack with one worker process and through one with three (two
Celery workers, as on two machines) gives the same timeline: the same people, boxes and shown emotions."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_astronaut_video, start_gateway, start_worker, wait_for_job

pytestmark = pytest.mark.e2e


def run_on(workers: list[int], env: dict, logs: Path, name: str, source: Path) -> tuple[dict, set[str]]:
    """(timeline, the processes that ran its batches) of `source` through a stack with Celery workers of
    the given pool sizes."""
    started = [
        start_worker(env, logs, name=f"{name}-w{i}", queues="video", concurrency=n)
        for i, n in enumerate(workers)
    ]
    gateway, url = start_gateway(env, logs, name=f"{name}-gateway")
    try:
        with source.open("rb") as handle:
            reply = httpx.post(
                f"{url}/api/v1/jobs", files={"file": (source.name, handle, "video/mp4")}, timeout=60
            )
        assert reply.status_code == 202, reply.text
        job = wait_for_job(url, reply.json()["id"])
        assert job["status"] == "succeeded", job
        timeline = httpx.get(f"{url}/api/v1/jobs/{job['id']}/timeline", timeout=30).json()
        batches = Path(env["EMOJI_STORAGE_DIR"]) / job["id"] / "batches"
        ran_on = {json.loads(p.read_text())["worker"] for p in batches.glob("*.json")}
        return timeline, ran_on
    finally:
        gateway.stop()
        for worker in started:
            worker.stop()


def test_one_and_three_worker_processes_give_the_same_timeline(stack_env, service_logs, redis_url, tmp_path):
    source = make_astronaut_video(tmp_path / "astronaut-6s.mp4", seconds=6)
    results = {}
    for name, workers, db in (("one", [1], 5), ("three", [2, 1], 6)):
        env = {
            **stack_env,
            # A Redis database and a storage folder of its own: the session's worker must not take part.
            "EMOJI_REDIS_URL": redis_url.rsplit("/", 1)[0] + f"/{db}",
            "EMOJI_STORAGE_DIR": str(tmp_path / f"storage-{name}"),
            "EMOJI_BATCH_FRAMES": "25",
        }
        results[name] = run_on(workers, env, service_logs, f"scale-{name}", source)
    (one, one_ran_on), (three, three_ran_on) = results["one"], results["three"]
    assert len(one_ran_on) == 1 and len(three_ran_on) >= 2, (one_ran_on, three_ran_on)
    assert len(one["frames"]) == len(three["frames"]) == 150
    assert one["processing"]["batches"] == three["processing"]["batches"] >= 6
    faces_one = [
        [(f["person_id"], f["box_xyxy"], f["shown_emotion"]) for f in fr["faces"]] for fr in one["frames"]
    ]
    faces_three = [
        [(f["person_id"], f["box_xyxy"], f["shown_emotion"]) for f in fr["faces"]] for fr in three["frames"]
    ]
    assert sum(map(len, faces_one)) > 100  # the astronaut's face really was followed
    assert faces_three == faces_one
    assert [p["person_id"] for p in three["people"]] == [p["person_id"] for p in one["people"]]
    assert [p["segments"] for p in three["people"]] == [p["segments"] for p in one["people"]]
