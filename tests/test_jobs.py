"""Job records in a real Redis: progress counts a batch once, and the index does not grow forever."""

import time

import pytest
import redis

from common.errors import JobNotFound
from common.jobs import JOB_INDEX_KEY, JobStatus, JobStore


@pytest.fixture
def store(redis_url):
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/5", decode_responses=True)
    client.flushdb()
    yield JobStore(client, ttl_s=60)
    client.flushdb()


def test_a_batch_that_runs_twice_counts_once(store):
    store.create("j1", "clip.mp4", {"frames": 100})
    store.mark_running("j1")
    assert store.mark_batch_done("j1", "analyze", 0, 50) == 1
    assert store.mark_batch_done("j1", "analyze", 0, 50) == 1
    store.mark_batch_done("j1", "render", 0, 50)
    job = store.get("j1")
    assert job.status is JobStatus.running and job.frames_done == 50
    assert job.progress == pytest.approx(0.55 * 0.5 + 0.40 * 0.5)


def test_listing_drops_index_entries_of_long_expired_jobs(store):
    store.create("old", "a.mp4", {"frames": 1})
    store.create("new", "b.mp4", {"frames": 1})
    store.redis.zadd(JOB_INDEX_KEY, {"old": time.time() - 60 - 2 * 24 * 3600})
    store.redis.delete(store.key("old"))
    assert store.list_ids() == ["new"]
    assert store.redis.zscore(JOB_INDEX_KEY, "old") is None
    with pytest.raises(JobNotFound):
        store.get("old")
