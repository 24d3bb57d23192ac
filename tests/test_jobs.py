"""Job records in a real Redis: progress counts a batch once, the index does not grow forever, and the
files of jobs whose record expired are swept from storage."""

import os
import time

import pytest
import redis

from common.errors import JobNotFound
from common.jobs import JOB_INDEX_KEY, PARTS, JobStatus, JobStore, JobWarning
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
    assert store.mark_batch_done("j1", 0, 50) == 1
    assert store.mark_batch_done("j1", 0, 50) == 1
    job = store.get("j1")
    assert job.status is JobStatus.running and job.frames_done == 50
    assert job.progress == pytest.approx(0.95 * 0.5)
    store.mark_batch_done("j1", 1, 50)
    assert store.get("j1").frames_done == 100


# --- the Lua scripts: each change conditional on the job's state, in one round trip -------------------------


def test_state_changes_happen_only_while_the_job_is_queued_or_running(store):
    assert store.mark_running("none") is False and store.update("none", frames_total=3) is False
    assert store.redis.keys("*none*") == [], "a change to a missing job created its record"
    store.create("j", "clip.mp4", {"frames": 10})
    assert store.update("j", batches_total=2)
    assert store.mark_running("j")
    started = store.get("j").started_at
    time.sleep(0.01)
    assert store.mark_running("j")  # a task that came back: still running, started when it first started
    assert store.get("j").started_at == started
    assert store.mark_succeeded("j")
    assert store.update("j", frames_total=99) is False and store.mark_running("j") is False
    job = store.get("j")
    assert job.status is JobStatus.succeeded and job.frames_total == 10 and job.batches_total == 2


def test_batches_count_while_active_and_expire_with_the_job(store):
    store.create("j", "clip.mp4", {"frames": 100})
    store.mark_running("j")
    store.redis.hdel(store.key("j"), "heartbeat_at")
    assert store.mark_batch_done("j", 1, 40) == 1
    assert store.mark_batch_done("j", 0, 50) == 2
    assert store.batch_done("j", 0) and not store.batch_done("j", 2)
    assert store.batches_done("j") == 2 and store.frames_decoded("j") == 90
    assert store.redis.hget(store.key("j"), "heartbeat_at"), "a finished batch is a sign of life"
    assert 0 < store.redis.ttl(store.key("j", "batch")) <= 60
    job = store.get("j")
    assert job.frames_done == 90 and job.progress == pytest.approx(0.95 * 0.9)
    store.reset_batches("j")
    assert store.batches_done("j") == 0 and store.get("j").frames_done == 0
    store.mark_batch_done("j", 0, 50)
    store.count_delivery("j", "t")
    store.add_warning("j", "x", JobWarning(code="c", message="m"))
    store.mark_failed("j", "timed_out", "too slow")
    assert store.mark_batch_done("j", 1, 50) == -1, "a batch was recorded on a failed job"
    assert store.batches_done("j") == 1
    # Finished: every part of the job expires with it.
    assert all(0 < store.redis.ttl(store.key("j", part)) <= 60 for part in PARTS)


def test_frames_done_never_exceeds_the_total_and_a_succeeded_job_is_whole(store):
    store.create("j", "clip.mp4", {"frames": 100})
    store.mark_running("j")
    store.mark_batch_done("j", 0, 80)
    store.mark_batch_done("j", 1, 80)  # the probe counted fewer frames than the decoder found
    job = store.get("j")
    assert job.frames_done == 100 and job.progress == pytest.approx(0.95)
    store.mark_succeeded("j")
    job = store.get("j")
    assert (job.progress, job.frames_done) == (1.0, 100)


def test_a_warning_is_kept_once_per_key_and_only_while_active(store):
    store.create("j", "clip.mp4", {"frames": 100})
    lost = JobWarning(code="frames_lost", message="m", frames=[50, 59])
    assert store.add_warning("j", "batch:1", lost)
    assert store.add_warning("j", "batch:1", lost)  # the batch ran twice
    assert store.add_warning("j", "batch:0", JobWarning(code="frames_lost", message="m", frames=[10, 19]))
    assert [w.frames for w in store.get("j").warnings] == [[10, 19], [50, 59]]  # in frame order
    store.mark_failed("j", "invalid_video", "m")
    assert store.add_warning("j", "batch:2", lost) is False
    assert len(store.get("j").warnings) == 2


def test_deliveries_count_up_and_down_and_only_for_an_existing_job(store):
    assert store.count_delivery("none", "start_job") == 0
    assert store.redis.keys("*none*") == []
    store.create("j", "clip.mp4", {"frames": 1})
    assert store.count_delivery("j", "process_batch:0") == 1
    assert store.count_delivery("j", "process_batch:0") == 2  # the first one's worker died
    assert store.count_delivery("j", "process_batch:1") == 1
    store.end_delivery("j", "process_batch:0")
    assert store.count_delivery("j", "process_batch:0") == 2
    assert 0 < store.redis.ttl(store.key("j", "deliveries")) <= 60


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
