"""`python -m model_server` against TF Serving's API: the worker's client, raw example-client requests,
metadata, status, health, error codes, dynamic batching and version hot-swap under load.

Every server here is a real `python -m model_server` subprocess serving the shipped SavedModel (a temporary
copy where a test adds versions); expected outputs come from the same SavedModel run in this process.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from common import tf_serving
from common.classes import NUM_CLASSES
from common.errors import ModelServerError, ModelServerUnavailable
from tests.conftest import MODEL_BASE_PATH, REPO_ROOT, ServiceProcess, free_port, port_open
from worker.model_client import EmotionClient

pytestmark = pytest.mark.slow

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END
# Developers without the exported model yet may point the tests at another one with the same signature.
SHIPPED = Path(os.environ.get("MODEL_SERVER_TEST_MODEL_BASE", MODEL_BASE_PATH))
BATCH_TIMEOUT_MICROS = 200_000
MAX_BATCH = 64


def _versions(base: Path) -> list[int]:
    return sorted(int(p.name) for p in base.glob("[0-9]*") if (p / "saved_model.pb").is_file())


@pytest.fixture(scope="module")
def shipped_version() -> int:
    versions = _versions(SHIPPED)
    if not versions:
        pytest.fail(f"no exported model under {SHIPPED}; run `python -m training export`")
    return versions[-1]


def _health_serving(port: int):
    def ready(service: ServiceProcess) -> bool:
        if not port_open(port):
            return False
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            except grpc.RpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    return ready


def _start_server(name: str, flags: list[str], log_dir: Path) -> tuple[ServiceProcess, int]:
    port = free_port()
    args = [sys.executable, "-m", "model_server", f"--port={port}", *flags]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return ServiceProcess(name, args, env, log_dir, _health_serving(port)).start(180), port


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory, shipped_version) -> str:
    """The shipped model with batching: a long batch timeout so that concurrent requests must merge."""
    tmp = tmp_path_factory.mktemp("batching_server")
    batching = tmp / "batching.config"
    batching.write_text(
        f"max_batch_size {{ value: {MAX_BATCH} }}\n"
        f"batch_timeout_micros {{ value: {BATCH_TIMEOUT_MICROS} }}\n"
        "num_batch_threads { value: 1 }\nmax_enqueued_batches { value: 100 }\n"
    )
    flags = [
        "--rest_api_port=0",
        "--model_name=emotion",
        f"--model_base_path={SHIPPED}",
        "--enable_batching=true",
        f"--batching_parameters_file={batching}",
    ]
    server, port = _start_server("model_server_batching", flags, tmp)
    yield f"127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
def config_server(tmp_path_factory, shipped_version):
    """A models.config with two models on temporary copies: "emotion" (latest) and "pinned" (all, labels)."""
    tmp = tmp_path_factory.mktemp("config_server")
    latest_base, pinned_base = tmp / "emotion", tmp / "pinned"
    shutil.copytree(SHIPPED / str(shipped_version), latest_base / "1")
    for version in (1, 2):
        shutil.copytree(SHIPPED / str(shipped_version), pinned_base / str(version))
    config = tmp / "models.config"
    config.write_text(f"""
model_config_list {{
  config {{ name: "emotion" base_path: "{latest_base}" model_platform: "tensorflow" }}
  config {{
    name: "pinned" base_path: "{pinned_base}" model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
}}
""")
    rest_port = free_port()
    flags = [
        f"--model_config_file={config}",
        "--file_system_poll_wait_seconds=1",
        f"--rest_api_port={rest_port}",
        f"--monitoring_config_file={REPO_ROOT / 'model_server' / 'monitoring.config'}",
    ]
    server, port = _start_server("model_server_config", flags, tmp)
    yield {
        "address": f"127.0.0.1:{port}",
        "rest": f"http://127.0.0.1:{rest_port}",
        "emotion_base": latest_base,
    }
    server.stop()


@pytest.fixture(scope="module")
def in_process(shipped_version):
    """The shipped SavedModel's serving signature, called in this process: the reference outputs."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(SHIPPED / str(shipped_version))).signatures["serving_default"]
    return lambda faces: signature(faces=tf.constant(faces))["probabilities"].numpy()


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """Varied crops: a real face from skimage plus noise, so that the classes' probabilities differ."""
    from skimage import data, transform

    face = transform.resize(data.astronaut()[30:230, 140:320].mean(axis=2), (48, 48), preserve_range=True)
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (9, 48, 48), dtype=np.uint8)
    batch = np.concatenate([face[None].astype(np.uint8), noise, 255 - face[None].astype(np.uint8)])
    return batch[..., None]


def _stubs(address: str):
    channel = grpc.insecure_channel(address)
    return (
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
        channel,
    )


def _request(faces, model="emotion", signature="serving_default", version=None, label="", key="faces"):
    """A PredictRequest the way TF Serving's example clients build one (tf.make_tensor_proto)."""
    import tensorflow as tf

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if signature is not None:
        request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    request.inputs[key].CopyFrom(tf.make_tensor_proto(faces))
    return request


# --- the worker's client -------------------------------------------------------------------------


def test_client_predict_equals_in_process(batching_server, in_process, faces, shipped_version):
    client = EmotionClient(batching_server)
    assert client.wait_until_available(timeout_s=30) == shipped_version
    probabilities = client.predict(faces)
    assert probabilities.shape == (len(faces), NUM_CLASSES) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, in_process(faces), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert client.model_version == shipped_version


def test_client_from_settings_uses_the_settings(batching_server, faces, in_process):
    from common.settings import CommonSettings

    settings = CommonSettings(model_server_address=batching_server, model_timeout_s=7.5)
    client = EmotionClient.from_settings(settings)
    assert (client.address, client.model_name, client.timeout_s) == (batching_server, "emotion", 7.5)
    np.testing.assert_allclose(client.predict(faces[:2]), in_process(faces[:2]), rtol=1e-5, atol=1e-6)


class _CountingStub:
    """Forwards to the real PredictionService stub, remembering each request's batch size and deadline."""

    def __init__(self, address: str):
        self._stub = tf_serving.PredictionServiceStub(grpc.insecure_channel(address))
        self.calls: list[tuple[int, float | None]] = []

    def Predict(self, request, timeout=None):  # noqa: N802 (the stub's method name)
        self.calls.append((request.inputs["faces"].tensor_shape.dim[0].size, timeout))
        return self._stub.Predict(request, timeout=timeout)


def test_client_splits_under_the_message_limit(batching_server, in_process, faces):
    stub = _CountingStub(batching_server)
    face_bytes = 48 * 48
    # Room for exactly 4 faces after the client's fixed allowance for the rest of the message.
    client = EmotionClient("unused", max_message_bytes=16 * 1024 + 4 * face_bytes + 100, prediction_stub=stub)
    assert client.faces_per_call == 4
    probabilities = client.predict(faces)  # 11 faces -> 4 + 4 + 3
    assert [size for size, _ in stub.calls] == [4, 4, 3]
    assert all(timeout == client.timeout_s for _, timeout in stub.calls), "every call needs a deadline"
    np.testing.assert_allclose(probabilities, in_process(faces), rtol=1e-5, atol=1e-6)


def test_client_default_limit_sends_one_call_under_4_mib(batching_server):
    stub = _CountingStub(batching_server)
    client = EmotionClient("unused", prediction_stub=stub)
    many = np.zeros((MAX_BATCH, 48, 48, 1), np.uint8)
    assert client.predict(many).shape == (MAX_BATCH, NUM_CLASSES)
    assert [size for size, _ in stub.calls] == [MAX_BATCH]
    assert client.faces_per_call * 48 * 48 < 4 * 1024 * 1024


def test_client_no_faces_makes_no_call():
    class Refusing:
        def Predict(self, request, timeout=None):  # noqa: N802
            raise AssertionError("no call expected for zero faces")

    result = EmotionClient("unused", prediction_stub=Refusing()).predict(np.zeros((0, 48, 48, 1), np.uint8))
    assert result.shape == (0, NUM_CLASSES) and result.dtype == np.float32


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 48, 48, 1), np.float32), "uint8"),
        (np.zeros((2, 48, 48), np.uint8), "[N, 48, 48, 1]"),
        (np.zeros((2, 64, 64, 1), np.uint8), "[N, 48, 48, 1]"),
    ],
)
def test_client_rejects_wrong_faces_locally(bad, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        EmotionClient("unused").predict(bad)


class _FailingStub:
    """Raises a gRPC error with the given status, as a real channel does."""

    def __init__(self, code: grpc.StatusCode):
        self.code = code

    def Predict(self, request, timeout=None):  # noqa: N802
        error = grpc.RpcError()
        error.code = lambda: self.code
        error.details = lambda: "injected"
        raise error


@pytest.mark.parametrize(
    "code, expected",
    [
        (grpc.StatusCode.UNAVAILABLE, ModelServerUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, ModelServerUnavailable),
        (grpc.StatusCode.INVALID_ARGUMENT, ModelServerError),
        (grpc.StatusCode.NOT_FOUND, ModelServerError),
        (grpc.StatusCode.INTERNAL, ModelServerError),
    ],
)
def test_client_maps_grpc_codes(code, expected):
    client = EmotionClient("unused", prediction_stub=_FailingStub(code))
    with pytest.raises(expected) as info:
        client.predict(np.zeros((1, 48, 48, 1), np.uint8))
    assert type(info.value) is expected and isinstance(info.value.__cause__, grpc.RpcError)
    assert code.name in str(info.value)


def test_client_against_real_errors(batching_server):
    with pytest.raises(ModelServerError, match="NOT_FOUND"):
        EmotionClient(batching_server, model_name="nope").predict(np.zeros((1, 48, 48, 1), np.uint8))
    nobody = f"127.0.0.1:{free_port()}"
    with pytest.raises(ModelServerUnavailable):
        EmotionClient(nobody, timeout_s=1).predict(np.zeros((1, 48, 48, 1), np.uint8))
    started = time.monotonic()
    with pytest.raises(ModelServerUnavailable, match="not AVAILABLE"):
        EmotionClient(nobody, timeout_s=0.5).wait_until_available(timeout_s=1.5, poll_s=0.2)
    assert time.monotonic() - started < 30, "waiting must end at its timeout, not hang"


FORK_SCRIPT = """
import multiprocessing, sys
import numpy as np
from worker.model_client import EmotionClient

def child(client, queue):
    queue.put(client.predict(np.zeros((2, 48, 48, 1), np.uint8)).shape)

client = EmotionClient(sys.argv[1], timeout_s=20)
client.wait_until_available(timeout_s=20)  # the parent uses its channel before forking, as a readiness check
context = multiprocessing.get_context("fork")
queue = context.Queue()
for _ in range(2):
    process = context.Process(target=child, args=(client, queue), daemon=True)
    process.start()
    print("child", queue.get(timeout=60))
    process.join(timeout=30)
print("parent", client.predict(np.zeros((1, 48, 48, 1), np.uint8)).shape)
"""


def test_client_used_before_fork_works_in_forked_children(batching_server):
    """Celery's prefork pool: children forked after the parent talked to the server must still predict."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    result = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, batching_server],
        cwd=REPO_ROOT,
        env={**env, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[:3] == ["child (2, 7)", "child (2, 7)", "parent (1, 7)"]


# --- raw requests as TF Serving's example clients send them ---------------------------------------


def test_example_client_request(batching_server, in_process, faces, shipped_version):
    import tensorflow as tf

    prediction, _, channel = _stubs(batching_server)
    with channel:
        response = prediction.Predict(_request(faces), timeout=10)
    assert response.model_spec.name == "emotion"
    assert response.model_spec.version.value == shipped_version
    assert response.model_spec.signature_name == "serving_default"
    assert list(response.outputs) == ["probabilities"]
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs["probabilities"]), in_process(faces), rtol=1e-5
    )


def test_default_signature_and_value_list_encoding(batching_server, in_process, faces):
    """No signature_name means serving_default; int_val lists decode like tensor_content."""
    import tensorflow as tf

    request = _request(faces[:2], signature=None)
    proto = request.inputs["faces"]
    values = np.frombuffer(proto.tensor_content, np.uint8)
    proto.ClearField("tensor_content")
    proto.int_val.extend(values.tolist())
    prediction, _, channel = _stubs(batching_server)
    with channel:
        response = prediction.Predict(request, timeout=10)
    assert response.model_spec.signature_name == "serving_default"
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs["probabilities"]), in_process(faces[:2]), rtol=1e-5
    )


def test_output_filter(batching_server, faces):
    prediction, _, channel = _stubs(batching_server)
    with channel:
        request = _request(faces[:1])
        request.output_filter.append("probabilities")
        assert list(prediction.Predict(request, timeout=10).outputs) == ["probabilities"]
        request.output_filter[:] = ["logits"]
        with pytest.raises(grpc.RpcError) as info:
            prediction.Predict(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found" in info.value.details()


def test_pinned_versions_and_labels(config_server, faces):
    prediction, _, channel = _stubs(config_server["address"])
    with channel:
        for version in (1, 2):
            reply = prediction.Predict(_request(faces[:1], model="pinned", version=version), timeout=10)
            assert reply.model_spec.version.value == version
        assert (
            prediction.Predict(_request(faces[:1], model="pinned"), timeout=10).model_spec.version.value == 2
        )
        for label, version in (("stable", 1), ("canary", 2)):
            reply = prediction.Predict(_request(faces[:1], model="pinned", label=label), timeout=10)
            assert reply.model_spec.version.value == version


BAD_REQUESTS = {
    "wrong input name": (
        lambda f: _request(f, key="images"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "alias not found",
    ),
    "wrong dtype": (
        lambda f: _request(f.astype(np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "to be uint8",
    ),
    "wrong rank": (lambda f: _request(f[..., 0]), grpc.StatusCode.INVALID_ARGUMENT, "shape"),
    "wrong size": (
        lambda f: _request(np.zeros((1, 64, 64, 1), np.uint8)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "shape",
    ),
    "over max_batch_size": (
        lambda f: _request(np.zeros((MAX_BATCH + 1, 48, 48, 1), np.uint8)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "larger than maximum input batch size",
    ),
    "no model name": (lambda f: _request(f, model=""), grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
    "unknown model": (lambda f: _request(f, model="nope"), grpc.StatusCode.NOT_FOUND, "Servable not found"),
    "unknown version": (lambda f: _request(f, version=999), grpc.StatusCode.NOT_FOUND, "Servable not found"),
    "unknown signature": (
        lambda f: _request(f, signature="nope"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "not found",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_error_codes_as_tf_serving(batching_server, faces, case):
    build, code, message = BAD_REQUESTS[case]
    prediction, _, channel = _stubs(batching_server)
    with channel, pytest.raises(grpc.RpcError) as info:
        prediction.Predict(build(faces[:1]), timeout=10)
    assert info.value.code() == code
    assert message in info.value.details()


def test_unsupported_rpcs_are_unimplemented(batching_server):
    prediction, model, channel = _stubs(batching_server)
    with channel:
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = "emotion"
        with pytest.raises(grpc.RpcError) as info:
            prediction.Classify(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as info:
            model.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --- metadata, status, health --------------------------------------------------------------------


def test_get_model_metadata(batching_server, shipped_version):
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    prediction, _, channel = _stubs(batching_server)
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "emotion"
    request.metadata_field.append("signature_def")
    with channel:
        response = prediction.GetModelMetadata(request, timeout=10)
    assert response.model_spec.name == "emotion" and response.model_spec.version.value == shipped_version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    serving = signature_map.signature_def["serving_default"]
    assert serving.inputs["faces"].dtype == types_pb2.DT_UINT8
    assert [d.size for d in serving.inputs["faces"].tensor_shape.dim] == [-1, 48, 48, 1]
    assert serving.outputs["probabilities"].dtype == types_pb2.DT_FLOAT
    assert [d.size for d in serving.outputs["probabilities"].tensor_shape.dim] == [-1, NUM_CLASSES]
    # Exactly what the SavedModel stores, as TF Serving returns it.
    saved = saved_model_pb2.SavedModel.FromString(
        (SHIPPED / str(shipped_version) / "saved_model.pb").read_bytes()
    )
    assert (
        signature_map.signature_def["serving_default"]
        == saved.meta_graphs[0].signature_def["serving_default"]
    )


def test_get_model_metadata_needs_signature_def_field(batching_server):
    prediction, _, channel = _stubs(batching_server)
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "emotion"
    with channel, pytest.raises(grpc.RpcError) as info:
        prediction.GetModelMetadata(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_get_model_status(batching_server, shipped_version):
    _, model, channel = _stubs(batching_server)
    with channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "emotion"
        reply = model.GetModelStatus(request, timeout=10)
        (status,) = reply.model_version_status
        assert (status.version, status.state, status.status.error_code) == (shipped_version, AVAILABLE, 0)
        request.model_spec.version.value = 999
        with pytest.raises(grpc.RpcError) as info:
            model.GetModelStatus(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "nope"
        with pytest.raises(grpc.RpcError) as info:
            model.GetModelStatus(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_health(batching_server):
    with grpc.insecure_channel(batching_server) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tensorflow.serving.PredictionService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_rest_status_and_predict(config_server, in_process, faces):
    import httpx

    status = httpx.get(f"{config_server['rest']}/v1/models/pinned", timeout=10).json()
    assert [(s["version"], s["state"]) for s in status["model_version_status"]] == [
        ("1", "AVAILABLE"),
        ("2", "AVAILABLE"),
    ]
    reply = httpx.post(
        f"{config_server['rest']}/v1/models/pinned/versions/1:predict",
        json={"instances": faces[:2].tolist()},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    np.testing.assert_allclose(reply.json()["predictions"], in_process(faces[:2]), rtol=1e-5, atol=1e-6)
    missing = httpx.get(f"{config_server['rest']}/v1/models/nope", timeout=10)
    assert missing.status_code == 404
    metrics = httpx.get(f"{config_server['rest']}/monitoring/prometheus/metrics", timeout=10)
    assert metrics.status_code == 200 and 'model_server_available_versions{model="pinned"} 2' in metrics.text


# --- dynamic batching ----------------------------------------------------------------------------


def test_concurrent_requests_are_batched_and_split_back(batching_server, in_process):
    """Eight requests sent together run as merged batches; each gets exactly its own rows back."""
    import tensorflow as tf

    rng = np.random.default_rng(3)
    inputs = [rng.integers(0, 256, (size, 48, 48, 1), dtype=np.uint8) for size in (1, 2, 3, 4, 5, 6, 7, 8)]
    results: dict[int, tuple[np.ndarray, dict]] = {}
    barrier = threading.Barrier(len(inputs))
    prediction, _, channel = _stubs(batching_server)

    def send(index: int) -> None:
        barrier.wait()
        response, call = prediction.Predict.with_call(_request(inputs[index]), timeout=30)
        results[index] = (tf.make_ndarray(response.outputs["probabilities"]), dict(call.trailing_metadata()))

    with channel:
        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(inputs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(results) == len(inputs)
    for index, (probabilities, _) in results.items():
        np.testing.assert_allclose(probabilities, in_process(inputs[index]), rtol=1e-5, atol=1e-6)
    merged = [int(meta["x-batch-tasks"]) for _, meta in results.values()]
    # All eight arrive well within the 200 ms batch timeout: at least some of them must share a model run.
    assert max(merged) >= 2, f"no request was batched with another: {merged}"
    for _, meta in results.values():
        assert int(meta["x-batch-rows"]) <= MAX_BATCH


# --- version hot-swap ----------------------------------------------------------------------------


def test_new_version_is_served_without_dropping_requests(config_server, faces, in_process):
    """Load keeps running while version 2 appears; afterwards version 2 answers and says so."""
    address, base = config_server["address"], config_server["emotion_base"]
    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        client = EmotionClient(address, timeout_s=30)
        while not stop.is_set():
            try:
                probabilities = client.predict(faces[:3])
                np.testing.assert_allclose(probabilities, in_process(faces[:3]), rtol=1e-5, atol=1e-6)
                seen.append(client.model_version)
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        assert seen and set(seen) == {1}
        # Staged beside the model and renamed, so the poller never sees a half-copied version.
        shutil.copytree(base / "1", base / ".2.staging")
        (base / ".2.staging").rename(base / "2")
        deadline = time.monotonic() + 120
        while (not seen or seen[-1] != 2) and time.monotonic() < deadline and not errors:
            time.sleep(0.2)
        switched_at = len(seen)
        time.sleep(2.0)  # old version drains and unloads while the load goes on
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, f"requests failed during the switch: {errors[:3]}"
    assert 2 in seen, "version 2 was never served"
    assert set(seen[switched_at + 8 :]) <= {2}, "version 1 answered after the switch settled"
    _, model, channel = _stubs(address)
    with channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "emotion"
        deadline = time.monotonic() + 30
        while True:
            states = {
                s.version: s.state for s in model.GetModelStatus(request, timeout=10).model_version_status
            }
            if states == {1: END, 2: AVAILABLE} or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert states == {1: END, 2: AVAILABLE}


# --- the version manager alone: UNAVAILABLE while loading ------------------------------------------


def test_unavailable_while_loading_then_served(tmp_path):
    """A stand-in loader holds the load open, so the in-between state can be observed for certain."""
    from model_server.config import single_model_config
    from model_server.errors import ServingError
    from model_server.manager import ModelManager, State

    (tmp_path / "emotion" / "1").mkdir(parents=True)
    (tmp_path / "emotion" / "1" / "saved_model.pb").write_bytes(b"")
    release = threading.Event()

    class Loaded:
        version = 1

        def acquire(self):
            pass

        def release(self):
            pass

        def unload(self):
            pass

    def loader(name, version, path):
        release.wait(30)
        return Loaded()

    manager = ModelManager(
        single_model_config("emotion", str(tmp_path / "emotion")), poll_wait_s=0.1, loader=loader
    )

    def state():
        try:
            return manager.version_statuses("emotion")[1].state
        except ServingError:  # NOT_FOUND until the poller has seen the version
            return None

    manager.start()
    try:
        deadline = time.monotonic() + 10
        while state() != State.LOADING:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(ServingError) as info:
            manager.acquire("emotion")
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert not manager.ready()
        release.set()
        deadline = time.monotonic() + 10
        while not manager.ready():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert manager.acquire("emotion").version == 1
        with pytest.raises(ServingError) as info:
            manager.acquire("emotion", version=7)
        assert info.value.code == grpc.StatusCode.NOT_FOUND
    finally:
        release.set()
        manager.stop()


def test_shipped_flags_and_batching_config_under_concurrent_load(tmp_path, shipped_version, in_process):
    """The agreed command line and model_server/batching.config: mixed sizes, some split, in parallel."""
    flags = [
        "--rest_api_port",
        "0",
        "--model_name",
        "emotion",
        "--model_base_path",
        str(SHIPPED),
        "--enable_batching",
        "--batching_parameters_file",
        str(REPO_ROOT / "model_server" / "batching.config"),
    ]
    server, port = _start_server("model_server_shipped_flags", flags, tmp_path)
    rng = np.random.default_rng(11)
    inputs = [
        rng.integers(0, 256, (size, 48, 48, 1), dtype=np.uint8) for size in (1, 3, 64, 65, 150, 1, 7, 2)
    ]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    try:
        client = EmotionClient(f"127.0.0.1:{port}", timeout_s=60)
        assert client.wait_until_available(timeout_s=30) == shipped_version

        def send(index: int) -> None:
            try:
                results[index] = client.predict(inputs[index])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(inputs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        server.stop()
    assert not errors, errors
    for index, batch in enumerate(inputs):
        np.testing.assert_allclose(results[index], in_process(batch), rtol=1e-5, atol=1e-6)


# --- the batcher alone, with a stand-in model ------------------------------------------------------


def _batcher(**options):
    from model_server.batching import Batcher
    from model_server.config import BatchingOptions

    calls: list[int] = []

    def run(inputs):
        calls.append(len(inputs["x"]))
        return {"y": inputs["x"].astype(np.int64) * 10}

    return Batcher(run, BatchingOptions(**options), "test"), calls


def test_batcher_splits_large_requests_and_keeps_row_order():
    batcher, calls = _batcher(
        max_batch_size=100, max_execution_batch_size=8, enable_large_batch_splitting=True, num_batch_threads=2
    )
    try:
        x = np.arange(20).reshape(20, 1)
        result = batcher.run({"x": x}, 20)
        np.testing.assert_array_equal(result.outputs["y"], x * 10)
        assert max(calls) <= 8 and sum(calls) == 20
    finally:
        batcher.stop()


def test_batcher_merges_concurrent_requests_and_returns_each_its_rows():
    batcher, calls = _batcher(
        max_batch_size=64, batch_timeout_micros=100_000, num_batch_threads=1, max_enqueued_batches=10
    )
    sizes = [1, 2, 3, 4, 5, 6]
    inputs = [np.full((size, 1), index) for index, size in enumerate(sizes)]
    results = {}
    barrier = threading.Barrier(len(sizes))

    def send(index):
        barrier.wait()
        results[index] = batcher.run({"x": inputs[index]}, sizes[index])

    try:
        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(sizes))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        batcher.stop()
    for index, result in results.items():
        np.testing.assert_array_equal(result.outputs["y"], inputs[index] * 10)
    assert len(calls) < len(sizes), f"nothing merged: {calls}"
    assert sum(calls) == sum(sizes)


def test_batcher_refuses_oversized_requests_and_reports_model_errors():
    from model_server.batching import Batcher
    from model_server.config import BatchingOptions
    from model_server.errors import ServingError

    batcher, _ = _batcher(max_batch_size=4)
    try:
        with pytest.raises(ServingError) as info:
            batcher.run({"x": np.zeros((5, 1))}, 5)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        batcher.stop()

    def broken(inputs):
        raise ServingError(grpc.StatusCode.INTERNAL, "model exploded")

    batcher = Batcher(broken, BatchingOptions(max_batch_size=4), "broken")
    try:
        with pytest.raises(ServingError, match="model exploded"):
            batcher.run({"x": np.zeros((2, 1))}, 2)
    finally:
        batcher.stop()
