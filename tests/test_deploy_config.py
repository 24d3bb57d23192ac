"""Static checks of the deployment files: no Docker engine here, so parse what Docker and TF Serving would.

The TF Serving config files must parse as TF Serving's own protos and point at the shipped model; the
compose file must parse, name every service, pin its images, keep videos and webcam frames on separate
workers, persist Redis, keep TensorFlow out of the gateway's image and the build context small; every
command, file and healthcheck it relies on must exist.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from model_server import config as tfs_config
from tests.conftest import REPO_ROOT

MODEL_SERVER_DIR = REPO_ROOT / "model_server"
COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
TF_SERVING = SERVICES["model-server"]
EXPECTED_SERVICES = {
    "redis", "s3", "s3-bucket", "model-server", "worker-video", "worker-live", "gateway", "flower"
}
APP_SERVICES = ("worker-video", "worker-live", "gateway")
DOCKERFILE = (REPO_ROOT / "deploy" / "Dockerfile").read_text()


def _flags(command: list[str]) -> dict[str, str]:
    return dict(
        arg.removeprefix("--").split("=", 1) for arg in command if arg.startswith("--") and "=" in arg
    )


def _container_to_host(service: dict, container_path: str) -> Path:
    """Where a path inside the container comes from on the host, through the service's bind mounts."""
    for volume in service.get("volumes", []):
        host, target = volume.split(":")[:2]
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            assert host.startswith("./"), f"{volume}: expected a bind mount of a repo path"
            return REPO_ROOT / host[2:] / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"{container_path} is not mounted into the model server container")


# --- TF Serving's config files --------------------------------------------------------------------


def test_models_config_is_a_model_server_config_pointing_at_the_model():
    config = tfs_config.load_model_server_config(MODEL_SERVER_DIR / "models.config")
    (model,) = config.model_config_list.config
    assert model.name == "emotion" and model.model_platform == "tensorflow"
    assert model.base_path == "/models/emotion"
    host_dir = _container_to_host(TF_SERVING, model.base_path)
    assert host_dir == MODEL_SERVER_DIR / "models" / "emotion"
    versions = [p for p in host_dir.iterdir() if p.name.isdigit() and (p / "saved_model.pb").is_file()]
    assert versions, f"no SavedModel version under {host_dir}"


def test_batching_config_is_batching_parameters_that_fit_the_client():
    from worker.model_client import EmotionClient

    params = tfs_config.load_batching_parameters(MODEL_SERVER_DIR / "batching.config")
    for field in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        assert params.HasField(field), f"batching.config should set {field} explicitly"
    options = tfs_config.batching_options(params, default_threads=1)
    # TF Serving refuses a request larger than max_batch_size: the worker's largest call must fit.
    assert EmotionClient("unused").faces_per_call <= options.max_batch_size


def test_batching_config_field_names_are_tf_servings():
    """The hand-built descriptor must reject what TF Serving rejects (a misspelt field)."""
    bad = "max_batch_size { value: 8 }\nmax_batch_sizes { value: 8 }\n"
    with pytest.raises(tfs_config.ConfigError, match="max_batch_sizes"):
        tfs_config.parse_text(bad, tfs_config.BatchingParameters())


def test_monitoring_config_enables_prometheus():
    monitoring = tfs_config.load_monitoring_config(MODEL_SERVER_DIR / "monitoring.config")
    assert monitoring.prometheus_config.enable
    assert monitoring.prometheus_config.path.startswith("/")


# --- docker-compose.yml --------------------------------------------------------------------------


def _command(service: dict) -> list[str]:
    command = service["command"]
    return command if isinstance(command, list) else shlex.split(command)


def _dependencies() -> list[str]:
    import tomllib

    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def _extra(name: str) -> list[str]:
    import tomllib

    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][name]


def _stage(name: str) -> str:
    """The text of one `FROM ... AS name` stage of deploy/Dockerfile."""
    match = re.search(rf"^FROM \S+ AS {name}$(.*?)(?=^FROM |\Z)", DOCKERFILE, flags=re.M | re.S)
    assert match, f"deploy/Dockerfile has no stage {name}"
    return match.group(1)


def test_compose_names_every_service_and_pins_images():
    assert set(SERVICES) == EXPECTED_SERVICES
    for name, service in SERVICES.items():
        image = service.get("image")
        assert image, f"{name}: needs an image (and a build for our own)"
        repository, _, tag = image.partition(":")
        assert tag and tag != "latest", f"{name}: pin the image tag, got {image!r}"
    assert re.fullmatch(r"tensorflow/serving:\d+\.\d+\.\d+", TF_SERVING["image"])
    assert re.fullmatch(r"redis:7(\.\d+)*", SERVICES["redis"]["image"])


def test_tf_serving_command_and_mounted_files():
    command = TF_SERVING["entrypoint"] + TF_SERVING["command"]
    assert command[0] == "tensorflow_model_server"
    flags = _flags(command)
    assert flags["port"] == "8500" and flags["rest_api_port"] == "8501"
    assert flags["enable_batching"] == "true"
    for flag, local in (
        ("model_config_file", "models.config"),
        ("batching_parameters_file", "batching.config"),
        ("monitoring_config_file", "monitoring.config"),
    ):
        assert _container_to_host(TF_SERVING, flags[flag]) == MODEL_SERVER_DIR / local
        assert (MODEL_SERVER_DIR / local).is_file()
    published = {port.split(":")[-1] for port in TF_SERVING["ports"]}
    assert published == {"8500", "8501"}


def test_every_service_has_a_healthcheck_and_waits_for_its_dependencies():
    for name, service in SERVICES.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
            wanted = "service_completed_successfully" if dependency == "s3-bucket" else "service_healthy"
            assert condition == {"condition": wanted}, f"{name} -> {dependency}: wait for {wanted}"
        if name == "s3-bucket":  # one-shot
            assert service["restart"] == "no"
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name}: needs a healthcheck"
    for worker in ("worker-video", "worker-live"):
        assert set(SERVICES[worker]["depends_on"]) == {"redis", "model-server", "s3-bucket"}
    # The model server is healthy only once the configured model is AVAILABLE.
    probe = " ".join(TF_SERVING["healthcheck"]["test"])
    assert "/v1/models/emotion" in probe and "8501" in probe and "AVAILABLE" in probe


def test_videos_and_webcam_frames_have_separate_workers():
    queues = {}
    for name in ("worker-video", "worker-live"):
        command = _command(SERVICES[name])
        assert command[:4] == ["celery", "-A", "worker.app", "worker"]
        queues[name] = set(command[command.index("-Q") + 1].split(","))
        assert "ports" not in SERVICES[name], "workers must be scalable (--scale NAME=N): no fixed ports"
    from common.queue import LIVE_QUEUE, VIDEO_QUEUE, WEBHOOK_QUEUE

    # Webhook deliveries ride with the video workers: every queue the gateway sends to has a consumer.
    assert queues == {"worker-video": {VIDEO_QUEUE, WEBHOOK_QUEUE}, "worker-live": {LIVE_QUEUE}}
    # A stopping video worker gets longer than its longest task (the hard time limit) to finish it.
    from worker.settings import WorkerSettings

    grace = SERVICES["worker-video"]["stop_grace_period"]
    assert grace.endswith("m") and int(grace[:-1]) * 60 > WorkerSettings().task_time_limit_s


def test_worker_healthcheck_starts_no_python():
    """The old check ran `celery inspect ping`: a Python importing TensorFlow every 30 s."""
    for name in ("worker-video", "worker-live"):
        check = " ".join(SERVICES[name]["healthcheck"]["test"])
        assert "python" not in check and "celery" not in check
        assert "/tmp/worker.alive" in check
    assert re.search(r"^ENV EMOJI_HEALTH_FILE=/tmp/worker.alive$", _stage("worker"), flags=re.M)
    from worker.settings import WorkerSettings

    assert WorkerSettings(health_file="/tmp/worker.alive").health_interval_s * 3 < 60


def test_redis_keeps_its_data_across_restarts():
    redis = SERVICES["redis"]
    command = _command(redis)
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] in ("everysec", "always")
    assert "redis-data:/data" in redis["volumes"]
    assert "redis-data" in COMPOSE["volumes"]


def test_app_services_use_object_storage_and_private_scratch_on_a_read_only_root():
    targets = {}
    for name in APP_SERVICES:
        service = SERVICES[name]
        build = service["build"]
        assert build["dockerfile"] == "deploy/Dockerfile"
        targets[name] = build["target"]
        env = service["environment"]
        # Production refuses key-less API calls (docs/api.md); both services see the same setting.
        assert env["EMOJI_REQUIRE_API_KEY"] == "true"
        assert env["EMOJI_MODEL_SERVER_ADDRESS"] == "model-server:8500"
        assert env["EMOJI_REDIS_URL"].startswith("redis://redis:6379")
        assert env["EMOJI_STORAGE_URL"].startswith("s3://")
        assert env["EMOJI_S3_ENDPOINT_URL"] == "http://s3:8333"
        assert service["read_only"] is True
        # An anonymous volume: private to each container, nothing shared between them.
        assert service["volumes"] == ["/scratch"], f"{name}: only a private scratch volume"
    assert targets == {"worker-video": "worker", "worker-live": "worker", "gateway": "gateway"}
    assert _command(SERVICES["gateway"])[:2] == ["uvicorn", "gateway.app:app"]
    assert "storage" not in COMPOSE["volumes"], "no shared storage volume any more"


def test_s3_service_is_seaweedfs_with_the_credentials_the_apps_use():
    s3 = SERVICES["s3"]
    assert s3["image"].startswith("chrislusf/seaweedfs:")
    command = _command(s3)
    assert command[0] == "server" and "-s3" in command and "-s3.port=8333" in command
    config_in_container = next(a.split("=", 1)[1] for a in command if a.startswith("-s3.config="))
    host = next(v.split(":")[0] for v in s3["volumes"] if v.split(":")[1] == config_in_container)
    identities = json.loads((REPO_ROOT / host).read_text())["identities"]
    keys = {(c["accessKey"], c["secretKey"]) for i in identities for c in i["credentials"]}
    env = SERVICES["gateway"]["environment"]
    assert (env["EMOJI_S3_ACCESS_KEY_ID"], env["EMOJI_S3_SECRET_ACCESS_KEY"]) in keys
    bucket = SERVICES["s3-bucket"]
    assert _command(bucket) == ["python", "-m", "common.storage", "create-bucket"]
    assert "create-bucket" in (REPO_ROOT / "common" / "storage.py").read_text()


def test_flower_watches_the_same_redis():
    flower = SERVICES["flower"]
    command = _command(flower)
    assert "flower" in command
    assert "--broker=" + SERVICES["gateway"]["environment"]["EMOJI_REDIS_URL"] in command
    assert "5555:5555" in flower["ports"]


def test_dockerfile_stages_copy_existing_code_and_the_gateway_has_no_worker_code():
    for line in re.findall(r"^COPY\s+(.+)$", DOCKERFILE, flags=re.M):
        for source in line.split()[:-1]:
            assert (REPO_ROOT / source).exists(), f"Dockerfile copies missing {source}"
            assert not _docker_ignored(source), f"{source} is copied but .dockerignore leaves it out"
    assert re.search(r"^FROM python:3\.1[1-3][\w.-]* AS base$", DOCKERFILE, flags=re.M)
    cases = (("gateway", "fastapi", "tensorflow"), ("worker", "grpcio", "tensorflow"))
    for extra, wanted, unwanted in cases:
        out = subprocess.run([sys.executable, "deploy/requirements-of.py", extra], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout.splitlines()
        names = {re.split(r"[\[<>=]", line, maxsplit=1)[0] for line in out}
        assert wanted in names and unwanted not in names and "celery" in names, (extra, names)
    gateway = _stage("gateway")
    assert "requirements-of.py gateway" in gateway and "COPY worker" not in gateway
    assert "requirements-of.py worker" in _stage("worker")
    for stage in ("gateway", "worker"):
        assert re.search(r"^USER 10001$", _stage(stage), flags=re.M), f"{stage}: run as non-root"


def _requirement_closure(requirements: list[str]) -> set[str]:
    """Names of the installed distributions these requirements pull in, transitively (extras ignored)."""
    seen: set[str] = set()
    todo = [re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for req in requires:
            if "extra ==" in req:
                continue
            todo.append(re.split(r"[\[<>=!~; (]", req, maxsplit=1)[0].lower().replace("_", "-"))
    return seen


def test_gateway_image_requirements_pull_in_no_tensorflow_or_opencv():
    closure = _requirement_closure(_dependencies() + _extra("gateway"))
    assert "fastapi" in closure and "uvicorn" in closure and "celery" in closure
    heavy = {n for n in closure if n.startswith(("tensorflow", "opencv", "keras", "tf-"))}
    assert not heavy, f"the gateway image would install {sorted(heavy)}"
    # `pip install -e '.[dev]'` (make test) still installs both services and the model server.
    everything = [d for d in _extra("dev") if d.startswith("emoji-video[")]
    assert everything and all(extra in everything[0] for extra in ("gateway", "worker", "model"))


def test_worker_image_requirements_pull_in_no_tensorflow():
    closure = _requirement_closure(_dependencies() + _extra("worker"))
    assert {"grpcio", "protobuf", "celery"} <= closure
    heavy = {n for n in closure if n.startswith(("tensorflow", "keras", "tf-"))}
    assert not heavy, f"the worker image would install {sorted(heavy)}"
    assert "tensorflow" in _requirement_closure(_extra("model"))


def _docker_ignored(path: str) -> bool:
    """Docker's rule: the last .dockerignore pattern matching the path or one of its parents decides."""
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
            ignored = not negate
    return ignored


@pytest.mark.parametrize(
    "path",
    [".venv/lib/python3.11/site-packages/tensorflow/x.so", ".venv-py313/bin/python", "var/storage/job/input",
     ".git/objects/ab", "model_server/models/emotion/3/saved_model.pb", "tests/artifacts/x.mp4",
     "common/__pycache__/jobs.cpython-311.pyc"],
)
def test_dockerignore_keeps_heavy_files_out_of_the_build_context(path):
    assert _docker_ignored(path)


# --- deploy/grafana ------------------------------------------------------------------------------


def test_grafana_dashboard_queries_only_metrics_we_export():
    from prometheus_client import REGISTRY, generate_latest

    import gateway.metrics  # noqa: F401 - registers the gateway's metrics
    import worker.metrics  # noqa: F401 - and the worker's
    from tests.conftest import free_port

    text = generate_latest(REGISTRY).decode()
    families = dict(re.findall(r"^# TYPE (emoji_\w+) (\w+)$", text, flags=re.M))
    queue = worker.metrics.QueueLength(f"redis://127.0.0.1:{free_port()}/0", ("video",))
    families.update({family.name: family.type for family in queue.collect()})
    exported = set()
    for name, kind in families.items():
        exported |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"} if kind == "histogram" else {name}
        if kind == "counter":
            exported.add(f"{name}_total")
    dashboard = json.loads((REPO_ROOT / "deploy" / "grafana" / "emoji-video.json").read_text())
    queried = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            queried |= set(re.findall(r"\bemoji_\w+", target["expr"]))
    assert queried, "the dashboard queries nothing"
    assert queried <= exported, f"the dashboard queries metrics nobody exports: {sorted(queried - exported)}"
    for wanted in (
        "emoji_gateway_requests_total", "emoji_gateway_upload_bytes_total", "emoji_gateway_live_sessions",
        "emoji_worker_jobs_total", "emoji_worker_frames_total", "emoji_worker_task_seconds_bucket",
        "emoji_worker_grpc_seconds_bucket", "emoji_worker_grpc_errors_total", "emoji_queue_length",
    ):
        assert wanted in queried, f"the dashboard should show {wanted}"
