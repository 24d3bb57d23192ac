"""The worker speaks TF Serving's API without TensorFlow: the same messages as the installed
`tensorflow-serving-api` (so the same bytes on the wire), and gRPC's own retry for UNAVAILABLE.

These tests may import TensorFlow themselves (they compare against the customer's package); the worker's
messages live in a private descriptor pool, so both kinds sit in one process without a clash.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent import futures

import grpc
import numpy as np
import pytest

from common import tf_serving
from common.tf_serving.extract import OUT, installed_api
from tests.conftest import REPO_ROOT, free_port
from worker.model_client import EmotionClient


def test_importing_the_worker_leaves_tensorflow_out():
    code = "import sys, worker.tasks, worker.app\nprint(sorted(m for m in sys.modules if 'tensorflow' in m))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_committed_api_is_the_installed_tensorflow_serving_api():
    """api.binpb is what `make protos` takes from the installed package; a new package version shows here."""
    assert OUT.read_bytes() == installed_api().SerializeToString(deterministic=True), (
        "common/tf_serving/api.binpb differs from the installed tensorflow-serving-api: run `make protos`"
    )


def test_the_method_paths_are_tf_servings():
    from tensorflow_serving.apis import model_service_pb2, prediction_service_pb2

    services = {
        **prediction_service_pb2.DESCRIPTOR.services_by_name, **model_service_pb2.DESCRIPTOR.services_by_name
    }
    predict = services["PredictionService"].methods_by_name["Predict"]
    status = services["ModelService"].methods_by_name["GetModelStatus"]
    assert tf_serving.PREDICT_METHOD == f"/{predict.containing_service.full_name}/{predict.name}"
    assert tf_serving.GET_MODEL_STATUS_METHOD == f"/{status.containing_service.full_name}/{status.name}"


class FakeModelServer:
    """A real gRPC server answering Predict with TF Serving's own messages; keeps every raw request, and
    answers the first `failures` calls UNAVAILABLE."""

    def __init__(self, failures: int = 0) -> None:
        from tensorflow_serving.apis import predict_pb2

        self.predict_pb2 = predict_pb2
        self.failures = failures
        self.requests: list[bytes] = []
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=[
            ("grpc.max_receive_message_length", 8 * 1024 * 1024)])
        handler = grpc.method_handlers_generic_handler(tf_serving.PREDICTION_SERVICE, {
            "Predict": grpc.unary_unary_rpc_method_handler(self.predict),  # raw bytes in and out
        })
        self.server.add_generic_rpc_handlers((handler,))
        self.address = f"127.0.0.1:{free_port()}"
        self.server.add_insecure_port(self.address)

    def predict(self, raw: bytes, context) -> bytes:
        with self.lock:
            self.requests.append(raw)
            fail = len(self.requests) <= self.failures
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        request = self.predict_pb2.PredictRequest.FromString(raw)
        rows = request.inputs["faces"].tensor_shape.dim[0].size
        response = self.predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = 3
        out = response.outputs["probabilities"]
        out.dtype = 1  # DT_FLOAT
        out.tensor_shape.dim.add(size=rows)
        out.tensor_shape.dim.add(size=7)
        out.tensor_content = np.full((rows, 7), 1 / 7, "<f4").tobytes()
        return response.SerializeToString()

    def __enter__(self) -> FakeModelServer:
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop(0)


def test_predict_requests_are_tf_servings_byte_for_byte():
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    faces = np.random.default_rng(0).integers(0, 256, (3, 48, 48, 1), dtype=np.uint8)
    with FakeModelServer() as server:
        client = EmotionClient(server.address, model_name="emotion", signature="serving_default")
        probabilities = client.predict(faces)
        client.close()
    assert probabilities.shape == (3, 7) and client.model_version == 3
    (raw,) = server.requests
    parsed = predict_pb2.PredictRequest.FromString(raw)
    assert parsed.model_spec.name == "emotion" and parsed.model_spec.signature_name == "serving_default"
    assert list(parsed.output_filter) == ["probabilities"]
    tensor = parsed.inputs["faces"]
    assert tensor.dtype == types_pb2.DT_UINT8 and [d.size for d in tensor.tensor_shape.dim] == [3, 48, 48, 1]
    assert tensor.tensor_content == faces.tobytes()
    # Built with TensorFlow's own classes, the same request is the same bytes.
    expected = predict_pb2.PredictRequest()
    expected.model_spec.name, expected.model_spec.signature_name = "emotion", "serving_default"
    expected.inputs["faces"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_UINT8, tensor_content=faces.tobytes(),
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in faces.shape]),
    ))
    expected.output_filter.append("probabilities")
    assert raw == expected.SerializeToString()


@pytest.mark.parametrize("faces_count", [2, 400])  # 400 faces: a 900 kB request, over gRPC's retry buffer
def test_one_unavailable_is_retried_by_grpc_not_by_the_task(faces_count):
    faces = np.zeros((faces_count, 48, 48, 1), np.uint8)
    with FakeModelServer(failures=1) as server:
        client = EmotionClient(server.address, timeout_s=10)
        probabilities = client.predict(faces)
        client.close()
    assert probabilities.shape == (faces_count, 7)
    assert len(server.requests) == 2 and server.requests[0] == server.requests[1]


def test_a_server_that_stays_unavailable_still_fails_within_the_deadline():
    from common.errors import ModelServerUnavailable

    with FakeModelServer(failures=100) as server:
        client = EmotionClient(server.address, timeout_s=5)
        with pytest.raises(ModelServerUnavailable, match="UNAVAILABLE"):
            client.predict(np.zeros((1, 48, 48, 1), np.uint8))
        client.close()
    assert len(server.requests) == 4  # RETRY_ATTEMPTS, then the error reaches the task
