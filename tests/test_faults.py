"""Failing machines, with real processes: stopped and killed ffmpeg and workers, a full disk, Redis
restarted or emptied, Redis handing a task out twice (docs/reliability.md lists every case and its test).

The stack here is the test's own (a Redis with AOF on a free port, a gateway, a worker with short time
limits), so restarting Redis or killing workers never touches the session's stack. After each fault: the
job ended as documented, nothing was lost or duplicated, no process the test started is left, no temporary
file is left, and the next job succeeds.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis

from common.errors import TimedOut
from common.jobs import JobStatus, JobStore, JobWarning
from common.processes import DeadlineProcess, run
from tests.conftest import (
    CELERY,
    PYTHON,
    ServiceProcess,
    _log_contains,
    _port_ready,
    free_port,
    make_astronaut_video,
    wait_for_job,
)

API = "/api/v1/jobs"


# --- helpers: the process table ------------------------------------------------------------------------


def processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        state = stat.rsplit(")", 1)[1].split()[0]
        if state != "Z":
            out.append((int(entry.name), ppid, cmd))
    return out


def ffmpegs_of(text: str) -> list[tuple[int, int, str]]:
    """ffmpeg/ffprobe processes whose command line contains `text` (a job id, a storage folder)."""
    return [p for p in processes() if text in p[2] and ("ffmpeg" in p[2] or "ffprobe" in p[2])]


def wait_for_process(text: str, also: str = "", timeout_s: float = 60) -> tuple[int, int, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [p for p in ffmpegs_of(text) if also in p[2]]
        if found:
            return found[0]
        time.sleep(0.01)
    raise AssertionError(f"no ffmpeg for {text} within {timeout_s} s")


def batch_pids(client: redis.Redis, job_id: str) -> set[int]:
    """The processes holding a lock on one of the job's batches now (the lock's value ends with the pid):
    the worker processes decoding, analysing and encoding it in process."""
    pids = set()
    for key in client.keys(f"*{job_id}:lock:*"):
        value = client.get(key)
        if value:
            pids.add(int(value.rsplit(":", 1)[1]))
    return pids


def wait_for_batch_pid(client: redis.Redis, job_id: str, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = batch_pids(client, job_id)
        if pids:
            return min(pids)
        time.sleep(0.01)
    raise AssertionError(f"no worker process took a batch of {job_id} within {timeout_s} s")


def temp_files(storage: Path) -> list[Path]:
    """Files a writer left half-done: every temporary name starts with a dot (see atomic_target)."""
    return [p for p in storage.rglob(".*") if p.is_file()]


def upload(base_url: str, path: Path) -> str:
    with path.open("rb") as handle:
        reply = httpx.post(f"{base_url}{API}", files={"file": (path.name, handle, "video/mp4")}, timeout=120)
    assert reply.status_code == 202, reply.text
    return reply.json()["id"]


def wait_for_status(base_url: str, job_id: str, status: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    job: dict = {}
    while time.monotonic() < deadline:
        job = httpx.get(f"{base_url}{API}/{job_id}", timeout=10).json()
        if job.get("status") == status:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not {status} after {timeout_s} s: {job}")


# --- the test's own stack --------------------------------------------------------------------------------


class Stack:
    """Redis (AOF on, its own folder), gateway and worker of this module; each can stop and start again."""

    def __init__(self, root: Path, logs: Path, model_server: str) -> None:
        self.root, self.logs = root, logs
        self.storage = root / "storage"
        self.redis_dir = root / "redis"
        self.redis_dir.mkdir(parents=True)
        self.redis_port = free_port()
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "EMOJI_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "EMOJI_STORAGE_DIR": str(self.storage),
            "EMOJI_MODEL_SERVER_ADDRESS": model_server,
            # Short limits, so every fault ends within seconds.
            "EMOJI_VISIBILITY_TIMEOUT_S": "40",
            "EMOJI_TASK_SOFT_TIME_LIMIT_S": "25",
            "EMOJI_TASK_TIME_LIMIT_S": "30",
            "EMOJI_FFMPEG_TIMEOUT_S": "8",
            "EMOJI_MAX_LOST_WORKERS": "2",
            "EMOJI_RECONCILE_INTERVAL_S": "1",
            "EMOJI_RECONCILE_GRACE_S": "3",
            "EMOJI_RECONCILE_MAX_REQUEUES": "1",
        }
        self.redis = self._redis_service()
        self.worker: ServiceProcess | None = None
        self.gateway: ServiceProcess | None = None
        self.url = ""

    def _redis_service(self) -> ServiceProcess:
        args = [shutil.which("redis-server"), "--port", str(self.redis_port), "--bind", "127.0.0.1",
                "--dir", str(self.redis_dir), "--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        return ServiceProcess("faults-redis", args, dict(os.environ), self.logs, _port_ready(self.redis_port))

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.redis_port, decode_responses=True)

    def start_worker(
        self, prefix: tuple[str, ...] = (), name: str = "faults-worker", **env: str
    ) -> ServiceProcess:
        args = [*prefix, CELERY, "-A", "worker.app", "worker", "-Q", "video", "--concurrency", "1",
                "--loglevel", "INFO", "--hostname", f"faults-{time.monotonic_ns()}@%h",
                "--without-gossip", "--without-mingle"]
        self.worker = ServiceProcess(name, args, {**self.env, **env}, self.logs,
                                     _log_contains(" ready.")).start(180)
        return self.worker

    def start_gateway(self, prefix: tuple[str, ...] = (), name: str = "faults-gateway", **env: str) -> str:
        port = free_port()
        args = [*prefix, PYTHON, "-m", "uvicorn", "gateway.app:app", "--host", "127.0.0.1",
                "--port", str(port)]
        self.gateway = ServiceProcess(name, args, {**self.env, **env}, self.logs,
                                      _port_ready(port)).start(60)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def worker_pids(self) -> set[int]:
        if not self.worker or not self.worker.proc:
            return set()
        main = self.worker.proc.pid
        return {pid for pid, ppid, _ in processes() if ppid == main} | {main}

    def assert_clean(self) -> None:
        """No ffmpeg of this stack left, no temporary file left."""
        deadline = time.monotonic() + 10
        while ffmpegs_of(str(self.storage)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not ffmpegs_of(str(self.storage)), f"orphan processes: {ffmpegs_of(str(self.storage))}"
        assert not temp_files(self.storage), f"temporary files left: {temp_files(self.storage)}"

    def assert_next_job_succeeds(self, clip: Path) -> None:
        job = wait_for_job(self.url, upload(self.url, clip), timeout_s=240)
        assert job["status"] == "succeeded", job
        assert job["frames_done"] == job["frames_total"]

    def stop(self) -> None:
        for service in (self.gateway, self.worker, self.redis):
            if service:
                service.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, service_logs, model_server):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed; run `make test`, which installs it")
    stack = Stack(tmp_path_factory.mktemp("faults"), service_logs, model_server)
    stack.redis.start(30)
    stack.start_gateway()
    stack.start_worker()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_astronaut_video(tmp_path_factory.mktemp("clips") / "one_second.mp4", seconds=1, audio=False)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """Long enough (6 batches of 120 frames) that its decoders are easy to catch running."""
    return make_astronaut_video(tmp_path_factory.mktemp("clips") / "long.mp4", seconds=28, audio=False)


# --- units of the mechanisms, on a real Redis --------------------------------------------------------------


def test_a_stopped_process_is_killed_at_its_deadline_while_the_caller_is_blocked_reading():
    proc = DeadlineProcess(["sh", "-c", "sleep 30 & kill -STOP $$; wait"], 1.0, "sh",
                           stdout=subprocess.PIPE)
    started = time.monotonic()
    with proc:
        assert proc.proc.stdout.read() == b""  # blocked until the deadline kills the group
    took = time.monotonic() - started
    assert took < 5, took
    assert proc.timed_out
    with pytest.raises(TimedOut):
        proc.check(proc.proc.returncode)
    group = [p for p in processes() if p[2].startswith("sleep 30")]
    assert not [p for p in group if p[1] == proc.pid], "the process group's child survived"
    with pytest.raises(TimedOut):
        run(["sleep", "30"], 0.5, "sleep")


def test_a_child_dies_with_the_process_that_started_it():
    code = (
        "import subprocess, sys, time; from common.processes import DeadlineProcess; "
        "p = DeadlineProcess(['sleep', '60'], 120, 'sleep'); print(p.pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 5  # until setpriv has armed the signal and become `sleep`
    cmdline = Path(f"/proc/{child}/cmdline")
    while time.monotonic() < deadline and not cmdline.read_bytes().startswith(b"sleep"):
        time.sleep(0.01)
    os.kill(parent.pid, signal.SIGKILL)  # as the OOM killer would
    parent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{child}").exists():
        state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            break
        time.sleep(0.05)
    alive = Path(f"/proc/{child}").exists() and Path(f"/proc/{child}/stat").read_text().rsplit(
        ")", 1)[1].split()[0] != "Z"
    assert not alive, "ffmpeg outlived its worker"


def test_state_changes_of_a_deleted_job_do_not_recreate_it(redis_url):
    store = JobStore(redis.Redis.from_url(redis_url, decode_responses=True))
    job_id = "d" * 32
    store.create(job_id, "a.mp4", {"frames": 10})
    store.delete(job_id)
    assert store.mark_running(job_id) is False
    assert store.update(job_id, frames_total=5) is False
    assert store.mark_batch_done(job_id, 0, 10) == -1
    assert store.add_warning(job_id, "x", JobWarning(code="c", message="m")) is False
    store.count_delivery(job_id, "process_batch:0")
    store.end_delivery(job_id, "process_batch:0")
    assert store.mark_failed(job_id, "internal_error", "late") is False
    assert store.mark_succeeded(job_id) is False
    assert not store.redis.keys(f"*{job_id}*"), "a late write re-created the deleted job"


def test_a_finished_job_keeps_its_first_outcome(redis_url):
    store = JobStore(redis.Redis.from_url(redis_url, decode_responses=True))
    job_id = "e" * 32
    store.create(job_id, "a.mp4", {"frames": 10})
    try:
        assert store.mark_running(job_id)
        assert store.mark_failed(job_id, "timed_out", "first")
        assert not store.mark_succeeded(job_id)
        assert not store.mark_running(job_id)
        job = store.get(job_id)
        assert job.status is JobStatus.failed and job.error.code == "timed_out"
    finally:
        store.delete(job_id)


def test_a_batch_runs_once_at_a_time_and_a_stale_run_cannot_write(redis_url):
    from worker.batch_lock import BatchLock, LockLost

    store = JobStore(redis.Redis.from_url(redis_url, decode_responses=True))
    first = BatchLock(store, "a" * 32, "batch", 0, ttl_s=30)
    second = BatchLock(store, "a" * 32, "batch", 0, ttl_s=30)
    assert first.acquire()
    assert not second.acquire(), "two runs of one batch at once"
    first.check()
    # The holder's process dies (its pid is gone): a new run takes over, and the old one is fenced off.
    dead = subprocess.Popen(["true"])
    dead.wait()
    token, host, _ = store.redis.get(first.key).rsplit(":", 2)
    store.redis.set(first.key, f"{token}:{host}:{dead.pid}")
    first.value = f"{token}:{host}:{dead.pid}"
    assert second.acquire()
    with pytest.raises(LockLost):
        first.check()
    second.check()
    second.release()
    assert store.redis.get(first.key) is None


def test_retry_waits_are_jittered_and_outlast_a_few_minutes_of_outage():
    from worker.settings import WorkerSettings
    from worker.tasks import retry_countdown

    settings = WorkerSettings()
    rng = random.Random(7)
    waits = [retry_countdown(r, settings, rng) for r in range(settings.model_retries)]
    plain = WorkerSettings(model_retry_jitter=False)
    least = sum(retry_countdown(r, plain) / 2 for r in range(settings.model_retries))
    assert least >= 180, f"the retries give up after {least:.0f} s at worst"
    assert sum(waits) >= least
    # Ten batches failing in the same second come back spread out, not in lockstep.
    again = [retry_countdown(3, settings, rng) for _ in range(10)]
    assert max(again) - min(again) > 1.0
    assert all(8 <= w <= 16 for w in again)


def test_each_passing_fault_has_its_own_count_limit_and_wait():
    from common.errors import ModelServerError, ModelServerUnavailable, StorageUnavailable, VideoError
    from worker.settings import WorkerSettings
    from worker.tasks import BatchBusy, retry_rule

    settings = WorkerSettings(model_retries=4, storage_retries=2, model_retry_jitter=False,
                              task_time_limit_s=400, task_soft_time_limit_s=390, ffmpeg_timeout_s=300)
    busy, model, store = (retry_rule(e("x"), settings)
                          for e in (BatchBusy, ModelServerUnavailable, StorageUnavailable))
    assert len({busy.cause, model.cause, store.cause}) == 3, "two causes share one count"
    assert (busy.limit, model.limit, store.limit) == (None, 4, 2)
    assert busy.wait_s(0) == busy.wait_s(50) == 100  # a quarter of the hard time limit, every time
    assert [model.wait_s(n) for n in range(3)] == [2.0, 4.0, 8.0]
    assert "tries" in model.gave_up and "object store" in store.gave_up
    assert all(retry_rule(e("x"), settings) is None for e in (VideoError, ModelServerError))


def test_time_limits_stay_below_the_visibility_timeout():
    from common.settings import CommonSettings

    settings = CommonSettings()
    assert settings.task_soft_time_limit_s < settings.task_time_limit_s < settings.visibility_timeout_s
    with pytest.raises(ValueError):
        CommonSettings(visibility_timeout_s=60, task_time_limit_s=120, task_soft_time_limit_s=100)
    from worker.settings import WorkerSettings

    with pytest.raises(ValueError):
        WorkerSettings(ffmpeg_timeout_s=600)
    from common.queue import make_celery

    conf = make_celery(settings).conf
    assert (conf.task_soft_time_limit, conf.task_time_limit) == (540, 570)


# --- faults against the running stack -------------------------------------------------------------------


@pytest.mark.e2e
def test_a_stopped_ffmpeg_is_killed_at_its_deadline_and_the_job_fails_timed_out(stack, clip):
    # Frames are decoded and encoded in process (PyAV); the ffmpeg program joins the pieces with the audio.
    job_id = upload(stack.url, clip)
    pid, _, _ = wait_for_process(job_id, also="concat", timeout_s=120)
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    job = wait_for_job(stack.url, job_id, timeout_s=60)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "timed_out", job
    assert "EMOJI_FFMPEG_TIMEOUT_S" in job["error"]["message"]
    assert time.monotonic() - started < 30
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    stack.assert_clean()
    stack.assert_next_job_succeeds(clip)


@pytest.mark.e2e
def test_a_stopped_worker_process_is_killed_at_the_hard_time_limit_and_the_job_fails(stack, long_clip, clip):
    job_id = upload(stack.url, long_clip)
    pool_pid = wait_for_batch_pid(stack.client(), job_id)
    assert pool_pid in stack.worker_pids()
    os.kill(pool_pid, signal.SIGSTOP)
    job = wait_for_job(stack.url, job_id, timeout_s=90)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "timed_out", job
    assert "EMOJI_TASK_TIME_LIMIT_S" in job["error"]["message"]
    # The job fails as Celery decides to kill the process; the kill itself follows within moments.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and pool_pid in {p for p, _, _ in processes()}:
        time.sleep(0.2)
    assert pool_pid not in {p for p, _, _ in processes()}, "the stopped worker process was not killed"
    stack.assert_clean()
    stack.assert_next_job_succeeds(clip)


@pytest.mark.e2e
def test_a_job_whose_worker_is_killed_every_time_fails_resource_exhausted(stack, long_clip, clip):
    job_id = upload(stack.url, long_clip)
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:
        # Every worker process that takes a batch of this job dies, as an OOM kill would do.
        client = stack.client()
        while not stop.is_set():
            for pid in batch_pids(client, job_id):
                if pid in stack.worker_pids() and pid not in killed:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        job = wait_for_job(stack.url, job_id, timeout_s=180)
    finally:
        stop.set()
        thread.join()
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "resource_exhausted", job
    # Each task gives up after 2 lost workers; the first task to lose a third fails the job.
    assert len(killed) >= 3, killed
    time.sleep(2)
    assert wait_for_job(stack.url, job_id)["status"] == "failed"  # and it does not come back
    stack.assert_clean()
    stack.assert_next_job_succeeds(clip)


@pytest.mark.e2e
def test_a_batch_delivered_again_records_nothing_twice(stack, tmp_path):
    """Redis hands a batch out again (a visibility timeout, a restored task): the second delivery finds the
    batch done (or waits for its lock) and records nothing twice."""
    from common.queue import make_celery
    from common.settings import CommonSettings

    source = make_astronaut_video(tmp_path / "six.mp4", seconds=6, audio=False)
    job_id = upload(stack.url, source)
    store = JobStore(stack.client())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not store.batch_done(job_id, 0):
        time.sleep(0.1)
    plan = json.loads((stack.storage / job_id / "plan.json").read_text())
    celery = make_celery(CommonSettings(redis_url=stack.env["EMOJI_REDIS_URL"]))
    for index, (start, end) in enumerate(plan["batches"]):
        celery.send_task("worker.process_batch", args=[job_id, index, start, end], queue="video")
    job = wait_for_job(stack.url, job_id, timeout_s=240)
    assert job["status"] == "succeeded", job
    assert store.batches_done(job_id) == len(plan["batches"])
    timeline = httpx.get(f"{stack.url}{API}/{job_id}/timeline", timeout=30).json()
    assert [f["index"] for f in timeline["frames"]] == list(range(job["frames_total"]))
    stack.assert_clean()


@pytest.mark.e2e
def test_disk_full_in_the_worker_fails_the_job_storage_full_and_leaves_no_temp_file(stack, tmp_path, clip):
    noisy = tmp_path / "noisy.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=s=640x480:r=25:d=3",
                    "-vf", "noise=alls=80:allf=t", "-c:v", "libx264", "-preset", "ultrafast", str(noisy)],
                   check=True)
    stack.worker.stop()
    # A file-size limit on the worker and its ffmpeg: any file past 1 MB fails as a full disk would.
    # Its own log file: the limit applies to the worker's log too.
    stack.start_worker(prefix=("prlimit", "--fsize=1000000", "--"), name="faults-worker-fsize")
    try:
        job = wait_for_job(stack.url, upload(stack.url, noisy), timeout_s=180)
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "storage_full", job
        stack.assert_clean()
        stack.assert_next_job_succeeds(clip)  # a small job still fits
    finally:
        stack.worker.stop()
        stack.start_worker()


@pytest.mark.e2e
def test_disk_full_in_the_gateway_answers_507_and_keeps_nothing(stack, tmp_path, clip):
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(3_000_000))
    before = set(os.listdir(stack.storage)) if stack.storage.exists() else set()
    service, url = stack.gateway, stack.url
    limited = stack.start_gateway(prefix=("prlimit", "--fsize=1000000", "--"), name="faults-gateway-fsize")
    try:
        with big.open("rb") as handle:
            files = {"file": ("big.mp4", handle, "video/mp4")}
            reply = httpx.post(f"{limited}{API}", files=files, timeout=60)
        assert reply.status_code == 507, reply.text
        assert reply.json()["error"]["code"] == "storage_full"
        assert set(os.listdir(stack.storage)) == before
        job = wait_for_job(limited, upload(limited, clip), timeout_s=240)
        assert job["status"] == "succeeded", job
    finally:
        stack.gateway.stop()
        stack.gateway, stack.url = service, url


@pytest.mark.e2e
def test_queued_jobs_survive_a_redis_restart_and_workers_resume(stack, clip):
    # Workers resume consuming after Redis comes back (they were connected through the restart).
    stack.redis.kill()
    stack.redis.start(30)
    assert wait_for_job(stack.url, upload(stack.url, clip), timeout_s=240)["status"] == "succeeded"
    # A job queued while no worker runs survives a crash of Redis (SIGKILL: only the AOF keeps it).
    stack.worker.stop()
    job_id = upload(stack.url, clip)
    stack.redis.kill()
    stack.redis.start(30)
    assert httpx.get(f"{stack.url}{API}/{job_id}", timeout=10).json()["status"] == "queued"
    stack.start_worker()
    job = wait_for_job(stack.url, job_id, timeout_s=240)
    assert job["status"] == "succeeded", job
    stack.assert_clean()


@pytest.mark.e2e
def test_jobs_whose_tasks_are_gone_are_requeued_then_failed_by_the_reconciler(stack, clip):
    client = stack.client()
    stack.worker.stop()
    job_id = upload(stack.url, clip)
    for key in client.scan_iter(match="video*"):  # the queue flushed: the record stays, the task is gone
        client.delete(key)
    # Re-queued once (EMOJI_RECONCILE_MAX_REQUEUES=1) after the grace period...
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and client.hget(JobStore.key(job_id), "requeues") != "1":
        time.sleep(0.2)
    assert client.hget(JobStore.key(job_id), "requeues") == "1"
    stack.start_worker()
    job = wait_for_job(stack.url, job_id, timeout_s=240)
    assert job["status"] == "succeeded", job
    # ...and a job that loses its tasks again fails with tasks_lost instead of waiting forever.
    stack.worker.stop()
    lost = upload(stack.url, clip)
    client.hset(JobStore.key(lost), "requeues", 1)
    for key in client.scan_iter(match="video*"):
        client.delete(key)
    job = wait_for_status(stack.url, lost, "failed", timeout_s=30)
    assert job["error"]["code"] == "tasks_lost", job
    stack.start_worker()
    stack.assert_clean()
    stack.assert_next_job_succeeds(clip)


class Forwarder:
    """A TCP port that refuses connections until `open()`, then forwards each one to `target`: a model
    server that is down for a moment and comes back."""

    def __init__(self, target: str) -> None:
        self.port, self.target = free_port(), target
        self.server: socket.socket | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def open(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        host, port = self.target.rsplit(":", 1)
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection((host, int(port)))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    def close(self) -> None:
        if self.server:
            self.server.close()


def wait_for_log(service: ServiceProcess, text: str, count: int = 1, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while service.log_text().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not {count} times in {service.name}'s log"
        time.sleep(0.2)


@pytest.mark.e2e
def test_retries_of_one_cause_do_not_use_up_another_causes_limit(stack, clip, model_server):
    """A batch waits out another run's lock three times, then the model server is down for a moment:
    the model server's own limit (3 retries) still holds, so the job succeeds."""
    from worker.batch_lock import BatchLock

    forwarder = Forwarder(model_server)
    stack.worker.stop()
    job_id = upload(stack.url, clip)
    # Another run holds batch 0 (this process: alive, on this machine), so the batch is busy.
    lock = BatchLock(JobStore(stack.client()), job_id, "batch", 0, ttl_s=120)
    assert lock.acquire()
    worker = stack.start_worker(
        name="faults-worker-retries", EMOJI_MODEL_SERVER_ADDRESS=forwarder.address,
        EMOJI_MODEL_RETRIES="3", EMOJI_MODEL_RETRY_BACKOFF_S="2",
    )
    try:
        wait_for_log(worker, "BatchBusy(", count=3)  # Celery logs each retry once, with its cause
        lock.release()
        wait_for_log(worker, f"model server {forwarder.address}")
        forwarder.open()
        job = wait_for_job(stack.url, job_id, timeout_s=120)
        assert job["status"] == "succeeded", job
        assert job["frames_done"] == job["frames_total"]
    finally:
        forwarder.close()
        stack.worker.stop()
        stack.start_worker()


@pytest.mark.e2e
def test_a_batch_delivered_again_after_its_worker_died_before_sending_the_finish_sends_it(stack, clip):
    """The last batch's worker recorded the batch, then died before it queued the finish: its task comes
    back (acks_late), finds the batch done, and must queue the finish itself, not leave the job to the
    reconciler. The state such a death leaves is made from a finished job: every batch recorded, the job
    running, no result, no finish queued, the batch's task in the queue again."""
    from common.queue import make_celery
    from common.settings import CommonSettings

    job_id = upload(stack.url, clip)
    assert wait_for_job(stack.url, job_id, timeout_s=240)["status"] == "succeeded"
    client, key = stack.client(), JobStore.key(job_id)
    for name in ("result.mp4", "timeline.json", "timeline.csv"):
        (stack.storage / job_id / name).unlink()
    client.hdel(key, "finished_at")
    client.hset(key, mapping={"status": "running", "heartbeat_at": time.time()})
    plan = json.loads((stack.storage / job_id / "plan.json").read_text())
    last = len(plan["batches"]) - 1
    celery = make_celery(CommonSettings(redis_url=stack.env["EMOJI_REDIS_URL"]))
    celery.send_task("worker.process_batch", args=[job_id, last, *plan["batches"][last]], queue="video")
    job = wait_for_job(stack.url, job_id, timeout_s=120)
    assert job["status"] == "succeeded", job
    assert client.hget(key, "requeues") is None, "the reconciler had to re-queue the job"
    assert (stack.storage / job_id / "result.mp4").stat().st_size > 0
    stack.assert_clean()


def test_the_reconciler_sees_tasks_waiting_in_the_queue_however_they_were_sent(redis_url):
    from common.queue import make_celery, pending_job_ids
    from common.settings import CommonSettings

    url = redis_url.rsplit("/", 1)[0] + "/7"  # a database no worker consumes
    celery = make_celery(CommonSettings(redis_url=url))
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    sent, applied = "1" * 32, "2" * 32
    celery.send_task("worker.start_job", args=[sent], queue="video", ignore_result=True)
    celery.send_task("worker.process_batch", args=(applied, 0, 0, 120), queue="video", priority=6)
    assert pending_job_ids(client) == {sent, applied}
    client.flushdb()
    assert pending_job_ids(client) == set()
