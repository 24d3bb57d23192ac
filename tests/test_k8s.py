"""deploy/k8s renders and validates offline: `kubectl kustomize` builds each overlay, every object passes the
Kubernetes schemas (kubernetes-validate, strict: no unknown fields), and what the issue asks of the objects is
there: separate video and live workers scaled on their queues, probes, limits, non-root read-only
containers, grace periods above the longest task, the Ingress's upload limit and WebSocket timeouts.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml

from common.settings import CommonSettings
from gateway.settings import GatewaySettings
from tests.conftest import REPO_ROOT
from worker.settings import WorkerSettings

K8S = REPO_ROOT / "deploy" / "k8s"
OVERLAYS = ("local", "production")
KUBERNETES_VERSION = "1.30.0"  # the oldest release still supported upstream when this was written
KNOWN_SETTINGS = {
    f"EMOJI_{name.upper()}"
    for cls in (CommonSettings, GatewaySettings, WorkerSettings)
    for name in cls.model_fields
}

# KEDA's ScaledObject is a custom resource: the schemas above do not know it. The part of KEDA's CRD
# (keda.sh/v1alpha1) that these manifests use, with its types and required fields.
SCALED_OBJECT_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer"},
                "cooldownPeriod": {"type": "integer"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                        },
                    },
                },
            },
        },
    },
}


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the overlays cannot be rendered here")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / request.param)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return request.param, [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def objects(docs: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def containers(workload: dict, init: bool = True) -> list[dict]:
    spec = workload["spec"]["template"]["spec"]
    return spec["containers"] + (spec.get("initContainers", []) if init else [])


def test_every_object_validates_against_the_schemas(rendered):
    overlay, docs = rendered
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        if doc["kind"] == "ScaledObject":
            jsonschema.validate(doc, SCALED_OBJECT_SCHEMA)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert {"Deployment", "StatefulSet", "Service", "Ingress", "PodDisruptionBudget", "ConfigMap",
            "ScaledObject"} <= kinds
    assert all(doc["metadata"].get("namespace") == ("emoji-local" if overlay == "local" else "emoji")
               for doc in docs if doc["kind"] != "Namespace")


def test_the_schema_check_would_catch_a_mistake(rendered):
    _, docs = rendered
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_video_and_live_workers_are_separate_and_scaled_on_their_queues(rendered):
    _, docs = rendered
    deployments = objects(docs, "Deployment")
    scaled = objects(docs, "ScaledObject")
    assert {"gateway", "worker-video", "worker-live", "model-server"} <= set(deployments)
    consumed = set()
    for name, queue in (("worker-video", "video"), ("worker-live", "live")):
        args = containers(deployments[name], init=False)[0]["args"]
        assert args[:4] == ["celery", "-A", "worker.app", "worker"]
        queues = args[args.index("-Q") + 1].split(",")
        assert queues[0] == queue and "live" not in queues[1:], f"{name}: {queues}"
        consumed |= set(queues)
        (trigger,) = scaled[name]["spec"]["triggers"]
        assert scaled[name]["spec"]["scaleTargetRef"]["name"] == name
        assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == queue
        namespace = scaled[name]["metadata"]["namespace"]
        # KEDA runs in its own namespace: a short name would not resolve there.
        assert trigger["metadata"]["address"] == f"redis.{namespace}.svc.cluster.local:6379"
        assert scaled[name]["spec"]["minReplicaCount"] >= 1  # the live page must never wait for a pod
    from common.queue import LIVE_QUEUE, VIDEO_QUEUE, WEBHOOK_QUEUE

    assert consumed == {VIDEO_QUEUE, LIVE_QUEUE, WEBHOOK_QUEUE}, "every queue the apps send to has workers"


def test_grace_periods_outlast_the_longest_task_and_the_visibility_timeout_outlasts_them(rendered):
    _, docs = rendered
    deployments = objects(docs, "Deployment")
    config = objects(docs, "ConfigMap")["emoji-config"]["data"]
    grace = deployments["worker-video"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # The longest a task may run is its hard time limit (Celery kills it then).
    assert grace > WorkerSettings().task_time_limit_s > WorkerSettings().ffmpeg_timeout_s
    # A task of a pod killed after its grace period comes back once the visibility timeout has passed.
    assert int(config["EMOJI_VISIBILITY_TIMEOUT_S"]) > grace


def test_every_container_has_probes_limits_and_runs_non_root_on_a_read_only_root(rendered):
    _, docs = rendered
    for kind in ("Deployment", "StatefulSet", "Job"):
        for name, workload in objects(docs, kind).items():
            pod = workload["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            assert pod["securityContext"]["runAsUser"] != 0, name
            for container in containers(workload):
                where = f"{kind} {name}/{container['name']}"
                security = container["securityContext"]
                assert security["readOnlyRootFilesystem"] is True, where
                assert security["allowPrivilegeEscalation"] is False, where
                assert security["capabilities"]["drop"] == ["ALL"], where
                resources = container["resources"]
                assert resources["requests"]["cpu"] and resources["requests"]["memory"], where
                assert resources["limits"]["memory"], where
            if kind != "Job":
                for container in containers(workload, init=False):
                    assert "readinessProbe" in container and "livenessProbe" in container, name


def test_every_deployment_has_a_disruption_budget(rendered):
    _, docs = rendered
    budgets = objects(docs, "PodDisruptionBudget")
    for name, deployment in objects(docs, "Deployment").items():
        if name == "s3":  # the local overlay's single SeaweedFS
            continue
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert any(
            b["spec"]["selector"]["matchLabels"].items() <= labels.items() for b in budgets.values()
        ), f"{name} has no PodDisruptionBudget"


def test_redis_keeps_an_append_only_file_on_a_volume(rendered):
    _, docs = rendered
    redis = objects(docs, "StatefulSet")["redis"]
    args = containers(redis)[0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_ingress_allows_the_upload_limit_and_long_lived_sockets(rendered):
    _, docs = rendered
    annotations = objects(docs, "Ingress")["gateway"]["metadata"]["annotations"]
    body = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    value, unit = re.fullmatch(r"(\d+)([kmg]?)", body).groups()
    limit = int(value) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]
    assert limit > GatewaySettings().max_upload_bytes
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) >= 3600


def _ingress_routes(ingress: dict, url_path: str) -> bool:
    """Whether one of the Ingress's paths takes `url_path`, as Kubernetes defines Exact and Prefix (a
    Prefix matches whole path elements: /api matches /api and /api/x, not /apix)."""
    for rule in ingress["spec"]["rules"]:
        for entry in rule["http"]["paths"]:
            path, kind = entry["path"], entry["pathType"]
            if kind == "Exact" and url_path == path:
                return True
            if kind == "Prefix":
                prefix = [p for p in path.split("/") if p]
                if [p for p in url_path.split("/") if p][: len(prefix)] == prefix:
                    return True
    return False


def test_the_ingress_publishes_the_pages_and_the_api_but_not_the_metrics(rendered):
    from gateway.app import app

    _, docs = rendered
    ingress = objects(docs, "Ingress")["gateway"]
    public = [p.replace("{job_id}", "0" * 32) for p in app.openapi()["paths"]]
    public += ["/", "/live", "/jobs/" + "0" * 32, "/sign-in", "/docs", "/openapi.json", "/static/app.css",
               "/emojis/happy.png"]
    assert "/api/v1/jobs" in public and "/api/v1/session" in public
    hidden = [p for p in public if not _ingress_routes(ingress, p)]
    assert not hidden, f"the Ingress does not route {hidden}"
    for private in ("/metrics", "/metrics/"):
        assert not _ingress_routes(ingress, private), f"the Ingress publishes {private}"


def test_apps_read_known_settings_and_storage_credentials_from_a_secret(rendered):
    overlay, docs = rendered
    config = objects(docs, "ConfigMap")["emoji-config"]["data"]
    emoji = {k for k in config if k.startswith("EMOJI_")}
    assert emoji <= KNOWN_SETTINGS, f"settings nobody reads: {sorted(emoji - KNOWN_SETTINGS)}"
    assert config["EMOJI_STORAGE_URL"].startswith("s3://")
    for name in ("gateway", "worker-video", "worker-live"):
        sources = containers(objects(docs, "Deployment")[name])[0]["envFrom"]
        secret = next(s["secretRef"]["name"] for s in sources if "secretRef" in s)
        assert secret.startswith("emoji-storage")
    secrets = objects(docs, "Secret")
    if overlay == "local":
        (name,) = [n for n in secrets if n.startswith("emoji-storage")]
        # The session secret too: every gateway replica must sign browser sessions with the same one.
        assert set(secrets[name]["data"]) == {
            "EMOJI_S3_ACCESS_KEY_ID", "EMOJI_S3_SECRET_ACCESS_KEY", "EMOJI_SESSION_SECRET"
        }
        assert set(secrets[name]["data"]) <= KNOWN_SETTINGS
        assert config["EMOJI_REQUIRE_API_KEY"] == "true"
        assert config["EMOJI_S3_ENDPOINT_URL"] == "http://s3:8333"
    else:
        assert not any(n.startswith("emoji-storage") for n in secrets), "production credentials stay out"


def test_model_server_config_is_the_repository_s(rendered):
    _, docs = rendered
    data = objects(docs, "ConfigMap")["model-server-config"]["data"]
    for name in ("models.config", "batching.config", "monitoring.config"):
        assert data[name] == (REPO_ROOT / "model_server" / name).read_text(), f"{name} differs"
    server = containers(objects(docs, "Deployment")["model-server"], init=False)[0]
    assert server["image"].startswith("tensorflow/serving:")
    assert "--enable_batching=true" in server["args"]
