"""The whole service on an object store, with no shared disk: a real SeaweedFS, Redis, two Celery workers,
the model server and gateways, each process with its own scratch folder and no common storage folder.

A job goes end to end with its batches handed between workers through the bucket; downloads work with
Range, streamed or presigned; delete and expiry remove its objects; JSON logs name the job on each line.
The failure cases: a missing bucket, wrong credentials, and the store going down mid-job (the task
retries, then the job fails with a clear code and nothing half-written is served).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from common.jobs import JobStore
from common.settings import CommonSettings
from common.storage import S3Storage
from gateway.storage_sweep import sweep_orphaned_files
from tests.conftest import start_gateway, start_seaweedfs, start_worker, wait_for_job
from tests.test_metrics import scrape, value

pytestmark = pytest.mark.e2e


def own_folders(root: Path, name: str) -> dict[str, str]:
    """Settings that give one process folders nobody else has: proof that nothing is shared."""
    return {
        "EMOJI_STORAGE_DIR": str(root / name / "storage-unused"),
        "EMOJI_SCRATCH_DIR": str(root / name / "scratch"),
    }


def submit(base_url: str, path: Path) -> httpx.Response:
    with path.open("rb") as handle:
        return httpx.post(f"{base_url}/api/v1/jobs", files={"file": (path.name, handle)}, timeout=120)


def keys(seaweedfs, bucket: str, job_id: str) -> set[str]:
    reply = seaweedfs.client().list_objects_v2(Bucket=bucket, Prefix=f"jobs/{job_id}/")
    return {entry["Key"].split("/", 2)[2] for entry in reply.get("Contents", [])}


@pytest.fixture(scope="module")
def short_gop_video(astronaut_video, tmp_path_factory) -> Path:
    """The astronaut clip with a keyframe every 15 frames: batches start at keyframes, so it splits into
    several batches and the job's tasks spread over both workers."""
    out = tmp_path_factory.mktemp("gop") / "astronaut.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(astronaut_video), "-c:v", "libx264", "-preset",
                    "veryfast", "-g", "15", "-keyint_min", "15", "-c:a", "copy", str(out)], check=True)
    return out


class Stack:
    def __init__(self, env, bucket, gateway, workers, root):
        self.env, self.bucket, self.gateway, self.workers, self.root = env, bucket, gateway, workers, root


@pytest.fixture(scope="module")
def s3_stack(stack_env, service_logs, seaweedfs, tmp_path_factory):
    root = tmp_path_factory.mktemp("no-shared-disk")
    bucket = seaweedfs.make_bucket(f"system-{uuid.uuid4().hex[:8]}")
    env = {k: v for k, v in stack_env.items() if k != "EMOJI_STORAGE_DIR"}
    env.update(seaweedfs.env(bucket))
    # Redis database 1: this stack's queues, apart from the session's workers on database 0.
    env["EMOJI_REDIS_URL"] = env["EMOJI_REDIS_URL"].rsplit("/", 1)[0] + "/1"
    env["EMOJI_LOG_FORMAT"] = "json"
    # Small batches: one clip becomes several tasks, spread over both workers through the bucket.
    env["EMOJI_BATCH_FRAMES"] = "30"
    workers = [
        start_worker({**env, **own_folders(root, name)}, service_logs, name, queues="video", concurrency=1)
        for name in ("s3-worker-a", "s3-worker-b")
    ]
    gateway, url = start_gateway({**env, **own_folders(root, "s3-gateway")}, service_logs, "s3-gateway")
    yield Stack(env, bucket, url, workers, root)
    gateway.stop()
    for worker in workers:
        worker.stop()


def test_a_job_runs_end_to_end_with_no_shared_disk(s3_stack, seaweedfs, short_gop_video, tmp_path):
    stack = s3_stack
    reply = submit(stack.gateway, short_gop_video)
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["id"]
    job = wait_for_job(stack.gateway, job_id)
    assert job["status"] == "succeeded", job
    # Probed by the worker (the gateway never had the file on disk); batches of 30 frames.
    assert job["video"]["frames"] == job["frames_total"] == 75
    record = JobStore.from_url(stack.env["EMOJI_REDIS_URL"]).get(job_id)
    assert record.batches_total >= 3
    ran = [w.name for w in stack.workers if job_id in w.log_text()]
    assert len(ran) == 2, f"the job's tasks ran on {ran} only; both workers should share it"
    stored = keys(seaweedfs, stack.bucket, job_id)
    assert {"input", "result.mp4", "timeline.json", "timeline.csv"} <= stored

    video = httpx.get(f"{stack.gateway}/api/v1/jobs/{job_id}/video", timeout=60)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert video.headers["accept-ranges"] == "bytes"
    size = len(video.content)
    assert int(video.headers["content-length"]) == size > 10_000
    part = httpx.get(f"{stack.gateway}/api/v1/jobs/{job_id}/video", headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == video.content[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{size}"
    tail = httpx.get(f"{stack.gateway}/api/v1/jobs/{job_id}/video", headers={"Range": "bytes=-500"})
    assert tail.status_code == 206 and tail.content == video.content[-500:]
    beyond = httpx.get(f"{stack.gateway}/api/v1/jobs/{job_id}/video", headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"
    result = tmp_path / "result.mp4"
    result.write_bytes(video.content)
    probe = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-of", "json",
                            str(result)], capture_output=True, check=True).stdout
    streams = json.loads(probe)["streams"]
    assert int(next(s for s in streams if s["codec_type"] == "video")["nb_read_frames"]) == 75
    assert any(s["codec_type"] == "audio" for s in streams), "the original audio is kept"
    timeline = httpx.get(f"{stack.gateway}/api/v1/jobs/{job_id}/timeline", timeout=30).json()
    assert timeline["people"], "the astronaut is found"
    csv = httpx.get(f"{stack.gateway}/api/v1/jobs/{job_id}/timeline.csv", timeout=30)
    assert csv.status_code == 200 and "attachment" in csv.headers["content-disposition"]

    # Nothing on any shared disk: no storage folder was ever made; every task's scratch folder is gone.
    for name in ("s3-gateway", "s3-worker-a", "s3-worker-b"):
        assert not (stack.root / name / "storage-unused").exists(), f"{name} used a local storage folder"
    for name in ("s3-worker-a", "s3-worker-b"):
        leftovers = [p.name for p in (stack.root / name / "scratch").iterdir() if p.name.startswith("task-")]
        assert leftovers == [], f"{name} left task folders: {leftovers}"
    assert all(" ready." in w.log_text() for w in stack.workers)

    # JSON logs: every worker line that speaks of the job carries its id, Celery's own lines included.
    lines = [json.loads(line) for w in stack.workers for line in w.log_text().splitlines()
             if line.startswith("{")]
    about_job = [entry for entry in lines if entry.get("job_id") == job_id]
    assert any(entry["logger"].startswith("worker.") for entry in about_job)
    assert any(entry["logger"] == "celery.app.trace" for entry in about_job), "Celery's task lines too"
    assert any(entry["logger"] == "celery.worker.strategy" for entry in about_job), "'received' lines too"
    for entry in lines:
        if job_id in entry["message"]:
            assert entry.get("job_id") == job_id, entry

    # Expiry: once Redis has forgotten the job, the gateway's sweep removes its objects.
    settings = CommonSettings(**{k.removeprefix("EMOJI_").lower(): v for k, v in stack.env.items()
                                 if k.startswith("EMOJI_") and k.removeprefix("EMOJI_").lower()
                                 in CommonSettings.model_fields})
    store = JobStore.from_url(settings.redis_url)
    store.delete(job_id)  # what the record's TTL does
    assert job_id in sweep_orphaned_files(S3Storage.from_settings(settings), store, grace_s=0)
    assert keys(seaweedfs, stack.bucket, job_id) == set()


def test_delete_removes_the_job_objects_and_presigned_downloads_work(
    s3_stack, seaweedfs, astronaut_video, service_logs
):
    stack = s3_stack
    reply = submit(stack.gateway, astronaut_video)
    job_id = reply.json()["id"]
    assert wait_for_job(stack.gateway, job_id)["status"] == "succeeded"
    streamed = httpx.get(f"{stack.gateway}/api/v1/jobs/{job_id}/video", timeout=60).content

    env = {**stack.env, **own_folders(stack.root, "redirect-gateway"), "EMOJI_DOWNLOAD_REDIRECT": "true"}
    service, url = start_gateway(env, service_logs, "redirect-gateway")
    try:
        redirect = httpx.get(f"{url}/api/v1/jobs/{job_id}/video", timeout=30)
        assert redirect.status_code == 307
        location = redirect.headers["location"]
        assert location.startswith(seaweedfs.endpoint) and "X-Amz-Signature" in location
        ranged = httpx.get(location, headers={"Range": "bytes=0-99"}, timeout=30)
        assert ranged.status_code == 206 and ranged.content == streamed[:100]
        assert ranged.headers["content-type"] == "video/mp4"
        # A download under the upload's name is streamed: the name is a header presigning cannot set.
        download = httpx.get(f"{url}/api/v1/jobs/{job_id}/video?download=true", timeout=60)
        assert download.status_code == 200 and download.content == streamed
        assert "astronaut-emoji.mp4" in download.headers["content-disposition"]
    finally:
        service.stop()

    assert httpx.delete(f"{stack.gateway}/api/v1/jobs/{job_id}", timeout=30).status_code == 204
    assert keys(seaweedfs, stack.bucket, job_id) == set()
    gone = httpx.get(f"{stack.gateway}/api/v1/jobs/{job_id}/video", timeout=30)
    assert gone.status_code == 404


@pytest.mark.parametrize(
    ("case", "overrides", "expected"),
    [
        ("missing-bucket", {"EMOJI_STORAGE_URL": "s3://no-such-bucket-xyz/jobs"},
         "no bucket 'no-such-bucket-xyz'"),
        ("wrong-credentials", {"EMOJI_S3_SECRET_ACCESS_KEY": "not-the-secret"}, "refused our credentials"),
    ],
)
def test_storage_misconfiguration_is_a_clear_error_and_keeps_nothing(
    s3_stack, seaweedfs, astronaut_video, service_logs, case, overrides, expected
):
    env = {**s3_stack.env, **own_folders(s3_stack.root, case), **overrides}
    service, url = start_gateway(env, service_logs, f"gateway-{case}")
    try:
        before = seaweedfs.client().list_objects_v2(Bucket=s3_stack.bucket).get("KeyCount", 0)
        reply = submit(url, astronaut_video)
        assert reply.status_code == 502, reply.text
        error = reply.json()["error"]
        assert error["code"] == "storage_error" and expected in error["message"]
        assert "EMOJI_" in error["message"] or "create-bucket" in error["message"], "says what to fix"
        after = seaweedfs.client().list_objects_v2(Bucket=s3_stack.bucket).get("KeyCount", 0)
        assert after == before
        assert "object store not usable" in service.log_text(), "the gateway says so at start"
    finally:
        service.stop()


def test_store_down_mid_job_retries_then_fails_clearly_and_serves_nothing(
    stack_env, service_logs, astronaut_video, tmp_path
):
    root = tmp_path
    store_server = start_seaweedfs(service_logs, root / "weed-data", "seaweedfs-down")
    bucket = store_server.make_bucket("down")
    env = {k: v for k, v in stack_env.items() if k != "EMOJI_STORAGE_DIR"}
    env.update(store_server.env(bucket))
    env.update({
        "EMOJI_REDIS_URL": env["EMOJI_REDIS_URL"].rsplit("/", 1)[0] + "/2",
        "EMOJI_STORAGE_RETRIES": "2", "EMOJI_STORAGE_RETRY_BACKOFF_S": "0.5", "EMOJI_S3_TIMEOUT_S": "1",
    })
    gateway, url = start_gateway({**env, **own_folders(root, "gateway")}, service_logs, "gateway-down")
    worker = None
    try:
        reply = submit(url, astronaut_video)
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["id"]
        store_server.service.kill()  # the store dies with the job queued

        # A task folder left by a killed worker process goes when the worker starts.
        worker_folders = own_folders(root, "worker")
        scratch = Path(worker_folders["EMOJI_SCRATCH_DIR"])
        dead = subprocess.Popen(["true"])
        dead.wait()
        (scratch / f"task-{dead.pid}-0123456789ab").mkdir(parents=True)
        worker = start_worker({**env, **worker_folders}, service_logs, "worker-down", queues="video")
        assert not (scratch / f"task-{dead.pid}-0123456789ab").exists()

        job = wait_for_job(url, job_id, timeout_s=120)
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "storage_unavailable"
        assert "object store did not answer after 3 tries" in job["error"]["message"]
        samples = scrape(worker.metrics_url)
        assert value(samples, "emoji_worker_tasks_total", task="start_job", outcome="retried") == 2
        assert value(samples, "emoji_worker_jobs_total", outcome="failed") == 1
        result = httpx.get(f"{url}/api/v1/jobs/{job_id}/video", timeout=30)
        assert result.status_code == 409 and result.json()["error"]["code"] == "job_not_ready"
        assert [p for p in scratch.iterdir() if p.name.startswith("task-")] == []
    finally:
        gateway.stop()
        if worker:
            worker.stop()
        store_server.service.stop()


@pytest.mark.parametrize(
    ("filename", "body"),
    [("notes.mp4", b"these are not moving pictures\n" * 100), ("list.m3u8", b"#EXTM3U\n#EXTINF:1,\nhttp://x/a.ts\n")],
)
def test_an_upload_that_is_no_video_is_refused_at_once_and_never_stored(s3_stack, seaweedfs, filename, body):
    before = seaweedfs.client().list_objects_v2(Bucket=s3_stack.bucket).get("KeyCount", 0)
    reply = httpx.post(f"{s3_stack.gateway}/api/v1/jobs", files={"file": (filename, body)}, timeout=60)
    assert reply.status_code == 415, reply.text
    error = reply.json()["error"]
    assert error["code"] == "invalid_video" and "convert it to MP4" in error["message"]
    assert seaweedfs.client().list_objects_v2(Bucket=s3_stack.bucket).get("KeyCount", 0) == before
    uploads = seaweedfs.client().list_multipart_uploads(Bucket=s3_stack.bucket).get("Uploads", [])
    assert uploads == []
