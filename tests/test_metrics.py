"""/metrics on the gateway and the worker, scraped before and after a real job through the real stack:
the counters the dashboards read must have moved by what the job did."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.jobs import JobStore
from tests.conftest import wait_for_job

pytestmark = pytest.mark.e2e


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics page, keyed by (name, labels)."""
    text = httpx.get(url, timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_gateway_and_worker_metrics_move_after_a_job(gateway, worker, astronaut_video, redis_url):
    gateway_before, worker_before = scrape(f"{gateway}/metrics"), scrape(worker.metrics_url)
    with astronaut_video.open("rb") as handle:
        reply = httpx.post(f"{gateway}/api/v1/jobs", files={"file": ("a.mp4", handle)}, timeout=120)
    assert reply.status_code == 202, reply.text
    job = wait_for_job(gateway, reply.json()["id"])
    assert job["status"] == "succeeded", job
    assert httpx.get(f"{gateway}/api/v1/jobs/{job['id']}/video", timeout=60).status_code == 200
    gateway_after, worker_after = scrape(f"{gateway}/metrics"), scrape(worker.metrics_url)

    def moved(before, after, name, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    g = (gateway_before, gateway_after)
    assert moved(*g, "emoji_gateway_requests_total", method="POST", route="/api/v1/jobs", status="202") == 1
    assert moved(*g, "emoji_gateway_requests_total", method="GET", route="/api/v1/jobs/{job_id}/video",
                 status="200") == 1
    # Polled by wait_for_job: counted under the route template, never the job id.
    assert moved(*g, "emoji_gateway_request_seconds_count", method="GET", route="/api/v1/jobs/{job_id}") >= 1
    assert not any(job["id"] in str(labels) for _, labels in gateway_after)
    assert moved(*g, "emoji_gateway_upload_bytes_total") == astronaut_video.stat().st_size
    assert moved(*g, "emoji_gateway_uploads_total", outcome="accepted") == 1

    w = (worker_before, worker_after)
    frames, batches = job["frames_total"], JobStore.from_url(redis_url).get(job["id"]).batches_total
    assert frames > 0 and batches > 0
    assert moved(*w, "emoji_worker_jobs_total", outcome="succeeded") >= 1
    assert moved(*w, "emoji_worker_tasks_total", task="start_job", outcome="succeeded") >= 1
    assert moved(*w, "emoji_worker_tasks_total", task="process_batch", outcome="succeeded") >= batches
    assert moved(*w, "emoji_worker_tasks_total", task="finish_job", outcome="succeeded") >= 1
    assert moved(*w, "emoji_worker_frames_total", stage="batch") >= frames
    assert moved(*w, "emoji_worker_task_seconds_count", task="process_batch") >= batches
    assert moved(*w, "emoji_worker_task_seconds_sum", task="process_batch") > 0
    assert moved(*w, "emoji_worker_grpc_seconds_count", method="Predict") >= 1
    assert ("emoji_queue_length", frozenset({"queue": "video"}.items())) in worker_after


def test_gateway_counts_live_sessions(gateway):
    from websockets.sync.client import connect

    url = gateway.replace("http://", "ws://") + "/api/v1/live"
    before = value(scrape(f"{gateway}/metrics"), "emoji_gateway_live_sessions")
    with connect(url, open_timeout=10) as ws:
        assert "hello" in json.loads(ws.recv(timeout=10))
        during = value(scrape(f"{gateway}/metrics"), "emoji_gateway_live_sessions")
    assert during == before + 1
    for _ in range(50):  # the server notices the close a moment later
        after = value(scrape(f"{gateway}/metrics"), "emoji_gateway_live_sessions")
        if after == before:
            break
        import time

        time.sleep(0.1)
    assert after == before
