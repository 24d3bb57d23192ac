"""The object-store backend against a real S3 server (SeaweedFS started like Redis), and the worker's
scratch folders. The whole service on it, with no shared disk, is in tests/test_s3_system.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from common.errors import StorageError, StorageUnavailable
from common.settings import CommonSettings
from common.storage import S3Storage
from tests.conftest import REPO_ROOT, free_port
from worker import scratch
from worker.task_files import TaskFiles

MIB = 1024 * 1024


def make_storage(seaweedfs, bucket: str, **overrides) -> S3Storage:
    settings = {
        "storage_url": f"s3://{bucket}/jobs",
        "s3_endpoint_url": seaweedfs.endpoint,
        "s3_addressing_style": "path",
        "s3_access_key_id": seaweedfs.access_key,
        "s3_secret_access_key": seaweedfs.secret_key,
        "s3_part_bytes": 5 * MIB,
        "s3_timeout_s": 3,
        **overrides,
    }
    return S3Storage.from_settings(CommonSettings(**settings))


@pytest.fixture(scope="module")
def bucket(seaweedfs) -> str:
    return seaweedfs.make_bucket(f"unit-{uuid.uuid4().hex[:8]}")


@pytest.fixture()
def s3(seaweedfs, bucket) -> S3Storage:
    return make_storage(seaweedfs, bucket)


def job() -> str:
    return uuid.uuid4().hex


def test_multipart_writer_streams_parts_and_the_object_appears_whole_only_at_close(s3, seaweedfs, bucket):
    job_id = job()
    data = os.urandom(12 * MIB + 123)  # two full 5 MiB parts and a short last one
    out = s3.writer(job_id, "input")
    for start in range(0, len(data), 1 * MIB):
        out.write(data[start : start + 1 * MIB])
        assert len(out.buffer) < s3.part_bytes + MIB, "the writer holds at most about one part"
    assert len(out.parts) == 2
    assert not s3.exists(job_id, "input"), "nothing is visible before the upload completes"
    out.close()
    assert s3.size(job_id, "input") == len(data)
    body = seaweedfs.client().get_object(Bucket=bucket, Key=f"jobs/{job_id}/input")["Body"].read()
    assert body == data


def test_aborted_upload_leaves_no_object_and_no_parts(s3, seaweedfs, bucket):
    job_id = job()
    out = s3.writer(job_id, "input")
    out.write(os.urandom(6 * MIB))
    assert out.upload_id
    out.abort()
    assert not s3.exists(job_id, "input")
    uploads = seaweedfs.client().list_multipart_uploads(Bucket=bucket, Prefix=f"jobs/{job_id}/")
    assert not uploads.get("Uploads")


def test_small_file_is_one_put(s3):
    job_id = job()
    out = s3.writer(job_id, "input")
    out.write(b"tiny")
    out.close()
    assert out.upload_id is None and s3.size(job_id, "input") == 4


def test_put_fetch_read_ranges_and_presign(s3, tmp_path):
    job_id = job()
    source = tmp_path / "result.mp4"
    data = os.urandom(7 * MIB)
    source.write_bytes(data)
    s3.put_file(job_id, "result.mp4", source)
    dest = tmp_path / "fetched" / "result.mp4"
    assert s3.fetch(job_id, "result.mp4", dest) and dest.read_bytes() == data
    assert not s3.fetch(job_id, "missing", tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
    assert b"".join(s3.read(job_id, "result.mp4", 100, 199)) == data[100:200]
    assert b"".join(s3.read(job_id, "result.mp4", len(data) - 10)) == data[-10:]
    url = s3.presign(job_id, "result.mp4", 60)
    reply = httpx.get(url, headers={"Range": "bytes=0-9"})
    assert reply.status_code == 206 and reply.content == data[:10]
    assert reply.headers["content-type"] == "video/mp4"


def test_delete_job_removes_objects_and_unfinished_uploads_and_listing_sees_jobs(s3, seaweedfs, bucket):
    job_id, other = job(), job()
    for name in ("input", "analysis/plan.json", "pieces/0000.mp4"):
        out = s3.writer(job_id, name)
        out.write(b"x")
        out.close()
    out = s3.writer(other, "input")
    out.write(b"y")
    out.close()
    pending = s3.writer(job_id, "result.mp4")
    pending.write(os.urandom(5 * MIB))  # one part sent, never completed
    assert {job_id, other} <= set(s3.job_ids())
    assert s3.has_job(job_id)
    assert abs(s3.last_written(job_id) - time.time()) < 120
    s3.delete_job(job_id)
    assert not s3.has_job(job_id) and job_id not in s3.job_ids()
    assert s3.exists(other, "input"), "other jobs are untouched"
    uploads = seaweedfs.client().list_multipart_uploads(Bucket=bucket, Prefix=f"jobs/{job_id}/")
    assert not uploads.get("Uploads")
    with pytest.raises(FileNotFoundError):
        s3.last_written(job_id)


def test_missing_bucket_is_a_clear_storage_error(seaweedfs):
    s3 = make_storage(seaweedfs, "no-such-bucket-here")
    with pytest.raises(StorageError, match="no bucket 'no-such-bucket-here'.*create-bucket"):
        s3.check()
    out = s3.writer(job(), "input")
    out.write(b"data")
    with pytest.raises(StorageError, match="no bucket"):
        out.close()


def test_wrong_credentials_are_a_clear_storage_error(seaweedfs, bucket):
    s3 = make_storage(seaweedfs, bucket, s3_secret_access_key="wrong")
    with pytest.raises(StorageError, match="refused our credentials.*EMOJI_S3_SECRET_ACCESS_KEY"):
        out = s3.writer(job(), "input")
        out.write(b"data")
        out.close()
    with pytest.raises(StorageError, match="credentials"):
        s3.fetch(job(), "input", REPO_ROOT / "var" / "never")


def test_store_down_is_storage_unavailable(seaweedfs, bucket, tmp_path):
    s3 = make_storage(seaweedfs, bucket, s3_endpoint_url=f"http://127.0.0.1:{free_port()}", s3_timeout_s=1)
    with pytest.raises(StorageUnavailable, match="did not answer"):
        s3.fetch(job(), "input", tmp_path / "input")
    with pytest.raises(StorageUnavailable):
        s3.check()


def test_create_bucket_command(seaweedfs):
    name = f"made-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **seaweedfs.env(name)}
    command = [sys.executable, "-m", "common.storage", "create-bucket"]
    first = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and "created" in first.stdout, first.stderr
    again = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "already exists" in again.stdout
    seaweedfs.client().head_bucket(Bucket=name)


def test_task_files_fetch_on_first_use_and_publish_only_what_the_task_wrote(s3, tmp_path):
    job_id = job()
    for name, body in (("input", b"video"), ("analysis/plan.json", b"{}")):
        out = s3.writer(job_id, name)
        out.write(body)
        out.close()
    files = TaskFiles(s3, tmp_path / "task")
    assert files.path(job_id, "input").read_bytes() == b"video"
    assert files.path(job_id, "analysis/plan.json").read_bytes() == b"{}"
    piece = files.path(job_id, "pieces/0001.mp4")
    assert not piece.exists()
    piece.write_bytes(b"piece")
    (piece.parent / ".0002.mp4.tmp").write_bytes(b"half")  # a write in progress
    assert files.publish() == ["pieces/0001.mp4"]
    assert b"".join(s3.read(job_id, "pieces/0001.mp4")) == b"piece"
    assert not s3.exists(job_id, "pieces/.0002.mp4.tmp")
    assert files.publish() == [], "nothing new to upload"


def test_scratch_sweep_removes_dead_processes_folders_only(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f"task-{dead.pid}-abc123").mkdir()
    (tmp_path / f"metrics-{dead.pid}").mkdir()
    alive = tmp_path / f"task-{os.getppid()}-def456"
    alive.mkdir()
    own = tmp_path / f"task-{os.getpid()}-0a0a0a"  # an earlier life of this pid (a restarted container)
    own.mkdir()
    unrelated = tmp_path / "notes"
    unrelated.mkdir()
    removed = scratch.sweep(tmp_path)
    assert sorted(removed) == sorted([f"task-{dead.pid}-abc123", f"metrics-{dead.pid}", own.name])
    assert alive.exists() and unrelated.exists()
