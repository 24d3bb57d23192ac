"""Job records in a real Redis: progress counts a batch once, the index does not grow forever, and the
files of jobs whose record expired are swept from storage."""

import os
import time

import pytest
import redis

from common.errors import JobNotFound
from common.jobs import JOB_INDEX_KEY, JobStatus, JobStore
from common.storage import LocalStorage
from gateway.storage_sweep import sweep_orphaned_files


@pytest.fixture
def store(redis_url):
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/5", decode_responses=True)
    client.flushdb()
    yield JobStore(client, ttl_s=60)
    client.flushdb()


def test_a_batch_that_runs_twice_counts_once(store):
    store.create("j1", "clip.mp4", {"frames": 100})
    store.mark_running("j1")
    assert store.mark_batch_done("j1", "batch", 0, 50) == 1
    assert store.mark_batch_done("j1", "batch", 0, 50) == 1
    job = store.get("j1")
    assert job.status is JobStatus.running and job.frames_done == 50
    assert job.progress == pytest.approx(0.95 * 0.5)
    store.mark_batch_done("j1", "batch", 1, 50)
    assert store.get("j1").frames_done == 100


def test_listing_drops_index_entries_of_long_expired_jobs(store):
    store.create("old", "a.mp4", {"frames": 1})
    store.create("new", "b.mp4", {"frames": 1})
    store.redis.zadd(JOB_INDEX_KEY, {"old": time.time() - 60 - 2 * 24 * 3600})
    store.redis.delete(store.key("old"))
    assert store.list_ids() == ["new"]
    assert store.redis.zscore(JOB_INDEX_KEY, "old") is None
    with pytest.raises(JobNotFound):
        store.get("old")


def make_job_folder(storage: LocalStorage, job_id: str, age_s: float) -> None:
    """A job folder with one file, last written `age_s` seconds ago."""
    path = storage.path(job_id, "input")
    path.write_bytes(b"video")
    then = time.time() - age_s
    for item in (path, path.parent):
        os.utime(item, (then, then))


def test_sweep_removes_only_quiet_folders_without_a_record(store, tmp_path):
    storage = LocalStorage(tmp_path)
    store.create("recorded", "a.mp4", {"frames": 1})
    make_job_folder(storage, "recorded", age_s=7200)
    make_job_folder(storage, "expired", age_s=7200)
    make_job_folder(storage, "uploading", age_s=10)  # no record yet: its upload is still being checked
    assert sweep_orphaned_files(storage, store, grace_s=3600) == ["expired"]
    assert storage.job_ids() == ["recorded", "uploading"]
    assert sweep_orphaned_files(storage, store, grace_s=3600) == []


def test_sweep_with_redis_down_deletes_nothing(tmp_path):
    storage = LocalStorage(tmp_path)
    make_job_folder(storage, "job", age_s=7200)
    unreachable = JobStore(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1), ttl_s=60)
    with pytest.raises(redis.ConnectionError):
        sweep_orphaned_files(storage, unreachable, grace_s=0)
    assert storage.job_ids() == ["job"]
