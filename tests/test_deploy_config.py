"""Static checks of the deployment files: no Docker engine here, so parse what Docker and TF Serving would.

The TF Serving config files must parse as TF Serving's own protos and point at the shipped model; the
compose file must parse, name every service, pin its images, and every command, file and healthcheck it
relies on must exist.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from model_server import config as tfs_config
from tests.conftest import REPO_ROOT

MODEL_SERVER_DIR = REPO_ROOT / "model_server"
COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
TF_SERVING = SERVICES["model-server"]
EXPECTED_SERVICES = {"redis", "model-server", "worker", "gateway"}


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


def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies():
    for name, service in SERVICES.items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name}: needs a healthcheck"
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}: wait for healthy"
    assert set(SERVICES["worker"]["depends_on"]) == {"redis", "model-server"}
    # The model server is healthy only once the configured model is AVAILABLE.
    probe = " ".join(TF_SERVING["healthcheck"]["test"])
    assert "/v1/models/emotion" in probe and "8501" in probe and "AVAILABLE" in probe


def test_app_services_build_our_image_and_their_commands_exist():
    dockerfile = REPO_ROOT / "deploy" / "Dockerfile"
    copied = re.findall(r"^COPY\s+(\S+)\s+\S+", dockerfile.read_text(), flags=re.MULTILINE)
    for source in copied:
        assert (REPO_ROOT / source).exists(), f"Dockerfile copies missing {source}"
    assert re.search(r"^FROM python:3\.11[\w.-]*$", dockerfile.read_text(), flags=re.MULTILINE)
    commands = {}
    for name in ("worker", "gateway"):
        service = SERVICES[name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (REPO_ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        env = service["environment"]
        # Production refuses key-less API calls (docs/api.md); both services see the same setting.
        assert env["EMOJI_REQUIRE_API_KEY"] == "true"
        assert env["EMOJI_MODEL_SERVER_ADDRESS"] == "model-server:8500"
        assert env["EMOJI_REDIS_URL"].startswith("redis://redis:6379")
        assert f"storage:{env['EMOJI_STORAGE_DIR']}" in service["volumes"], f"{name}: shared storage volume"
        command = service["command"]
        commands[name] = command if isinstance(command, list) else shlex.split(command)
    worker = commands["worker"]
    assert worker[:4] == ["celery", "-A", "worker.app", "worker"]
    from common.queue import LIVE_QUEUE, VIDEO_QUEUE, WEBHOOK_QUEUE

    assert set(worker[worker.index("-Q") + 1].split(",")) == {VIDEO_QUEUE, LIVE_QUEUE, WEBHOOK_QUEUE}
    assert commands["gateway"][:2] == ["uvicorn", "gateway.app:app"]
    for module in ("worker/app.py", "gateway/app.py"):
        assert (REPO_ROOT / module).is_file(), f"{module} is what the compose commands start"
    for package in ("celery", "uvicorn"):
        assert any(package == dep.split("[")[0].split("=")[0].split(">")[0] for dep in _dependencies())


def test_storage_volume_is_shared_and_declared():
    assert "storage" in COMPOSE["volumes"]
    assert "ports" not in SERVICES["worker"], "workers must be scalable (--scale worker=N): no fixed ports"


def _dependencies() -> list[str]:
    import tomllib

    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
