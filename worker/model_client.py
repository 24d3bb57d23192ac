"""The emotion model over TF Serving's gRPC API: real TF Serving or `python -m model_server`, alike.

Speaks only the public `tensorflow-serving-api` protocol (inputs by name, signature_name, a deadline on
every call), with that package's own message definitions loaded without TensorFlow (common/tf_serving).
gRPC failures become the service's own errors: UNAVAILABLE and DEADLINE_EXCEEDED are worth a
retry (`ModelServerUnavailable`), anything else is not (`ModelServerError`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

# Celery forks its pool after importing this module: without gRPC's fork support, a channel used in the
# parent (e.g. a readiness check) leaves every child's gRPC broken ("Wrong file descriptor generation").
# Read by grpc at import, so it must be set before the first `import grpc` in the process.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "1")

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from common import tf_serving
from common.classes import NUM_CLASSES
from common.errors import ModelServerError, ModelServerUnavailable
from common.settings import CommonSettings
from worker import metrics

log = logging.getLogger(__name__)

FACE_SHAPE = (48, 48, 1)
# Room left in every request for the model spec, keys and tensor header around the raw face bytes.
_REQUEST_OVERHEAD_BYTES = 16 * 1024
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_AVAILABLE = tf_serving.AVAILABLE
# gRPC itself retries a call the server answered UNAVAILABLE (a restart, a full queue, a dropped connection),
# within the call's deadline, with backoff: a blip costs one call again, not the whole batch's task.
RETRY_ATTEMPTS = 4
SERVICE_CONFIG = json.dumps({
    "methodConfig": [{
        "name": [{"service": tf_serving.PREDICTION_SERVICE}, {"service": tf_serving.MODEL_SERVICE}],
        "retryPolicy": {
            "maxAttempts": RETRY_ATTEMPTS,
            "initialBackoff": "0.2s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }]
})


def _faces_tensor(faces: np.ndarray) -> tf_serving.TensorProto:
    """uint8 faces as raw tensor_content (what tf.make_tensor_proto does, without its per-call cost)."""
    return tf_serving.TensorProto(
        dtype=tf_serving.DT_UINT8,
        tensor_shape=tf_serving.TensorShapeProto(
            dim=[tf_serving.TensorShapeProto.Dim(size=size) for size in faces.shape]
        ),
        tensor_content=np.ascontiguousarray(faces).tobytes(),
    )


def _probabilities(proto: tf_serving.TensorProto, rows: int) -> np.ndarray:
    """Decode the float32 [rows, 7] output, from tensor_content or (other servers) float_val."""
    if proto.dtype != tf_serving.DT_FLOAT:
        raise ModelServerError(
            f"model output has dtype {tf_serving.data_type_name(proto.dtype)}, expected DT_FLOAT"
        )
    shape = tuple(dim.size for dim in proto.tensor_shape.dim)
    if shape != (rows, NUM_CLASSES):
        raise ModelServerError(f"model output has shape {list(shape)}, expected [{rows}, {NUM_CLASSES}]")
    if proto.tensor_content:
        values = np.frombuffer(proto.tensor_content, dtype="<f4")
    else:
        values = np.asarray(proto.float_val, dtype=np.float32)
    if values.size != rows * NUM_CLASSES:
        raise ModelServerError(f"model output holds {values.size} values, expected {rows * NUM_CLASSES}")
    return values.reshape(shape).astype(np.float32, copy=False)


class EmotionClient:
    """Classifies face crops (uint8 [N, 48, 48, 1]) into emotion probabilities (float32 [N, 7])."""

    def __init__(
        self,
        address: str,
        model_name: str = "emotion",
        signature: str = "serving_default",
        input_key: str = "faces",
        output_key: str = "probabilities",
        timeout_s: float = 10.0,
        max_message_bytes: int = 4 * 1024 * 1024,
        max_faces_per_call: int | None = None,
        *,
        channel: grpc.Channel | None = None,
        prediction_stub=None,
        model_stub=None,
    ):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        face_bytes = int(np.prod(FACE_SHAPE))
        fitting = (max_message_bytes - _REQUEST_OVERHEAD_BYTES) // face_bytes
        if fitting < 1:
            raise ValueError(
                f"max_message_bytes={max_message_bytes} cannot hold even one face "
                f"({face_bytes} bytes + {_REQUEST_OVERHEAD_BYTES} overhead)"
            )
        if max_faces_per_call is not None and max_faces_per_call < 1:
            raise ValueError(f"max_faces_per_call must be >= 1, got {max_faces_per_call}")
        self.address = address
        self.model_name = model_name
        self.signature = signature
        self.input_key = input_key
        self.output_key = output_key
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes
        self.faces_per_call = min(fitting, max_faces_per_call or fitting)
        self._channel = channel
        self._prediction_stub = prediction_stub
        self._model_stub = model_stub
        self._owns_channel = channel is None and prediction_stub is None
        self._pid = os.getpid() if not self._owns_channel else None
        self._lock = threading.Lock()
        self._model_version: int | None = None

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> EmotionClient:
        """Built from the EMOJI_* settings (a worker's settings may cap faces per call: predict_batch)."""
        return cls(
            address=settings.model_server_address,
            model_name=settings.model_name,
            signature=settings.model_signature,
            input_key=settings.model_input_key,
            output_key=settings.model_output_key,
            timeout_s=settings.model_timeout_s,
            max_message_bytes=settings.grpc_max_message_bytes,
            max_faces_per_call=getattr(settings, "predict_batch", None),
        )

    def _stubs(self):
        """Stubs on a channel opened on first use, and reopened in a forked child (Celery's prefork pool)."""
        if not self._owns_channel:
            if self._prediction_stub is None:
                self._prediction_stub = tf_serving.PredictionServiceStub(self._channel)
            if self._model_stub is None and self._channel is not None:
                self._model_stub = tf_serving.ModelServiceStub(self._channel)
            return self._prediction_stub, self._model_stub
        with self._lock:
            if self._channel is None or self._pid != os.getpid():
                # A channel inherited across fork() is unusable; never close it from the child either.
                self._channel = grpc.insecure_channel(
                    self.address,
                    options=[
                        ("grpc.max_send_message_length", self.max_message_bytes),
                        ("grpc.max_receive_message_length", self.max_message_bytes),
                        ("grpc.enable_retries", 1),
                        ("grpc.service_config", SERVICE_CONFIG),
                        # A call is retried only while its request is still buffered (256 KiB by default):
                        # room for the largest request the client sends.
                        ("grpc.per_rpc_retry_buffer_size", self.max_message_bytes),
                        ("grpc.retry_buffer_size", 4 * self.max_message_bytes),
                    ],
                )
                self._pid = os.getpid()
                self._prediction_stub = tf_serving.PredictionServiceStub(self._channel)
                self._model_stub = tf_serving.ModelServiceStub(self._channel)
                log.info("model server channel opened to %s", self.address)
            return self._prediction_stub, self._model_stub

    def _call(self, what: str, method, request):
        started = time.perf_counter()
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            metrics.GRPC_ERRORS.labels(what, code.name if code else "UNKNOWN").inc()
            details = exc.details() if hasattr(exc, "details") else str(exc)
            message = (
                f"model server {self.address}: {what} failed: {code.name if code else 'error'}: {details}"
            )
            error = ModelServerUnavailable(message) if code in _RETRYABLE else ModelServerError(message)
            error.grpc_code = code  # the original status, for callers that need the finer distinction
            raise error from exc
        finally:
            metrics.GRPC_SECONDS.labels(what).observe(time.perf_counter() - started)

    def predict(self, faces: np.ndarray) -> np.ndarray:
        """Probabilities per face, in EMOTIONS order; as few Predict calls as the message limit allows."""
        if not isinstance(faces, np.ndarray) or faces.dtype != np.uint8:
            raise ValueError(f"faces must be a uint8 numpy array, got {getattr(faces, 'dtype', type(faces))}")
        if faces.ndim != 4 or faces.shape[1:] != FACE_SHAPE:
            raise ValueError(f"faces must have shape [N, 48, 48, 1], got {list(faces.shape)}")
        if len(faces) == 0:
            return np.zeros((0, NUM_CLASSES), np.float32)
        prediction_stub, _ = self._stubs()
        parts = []
        for start in range(0, len(faces), self.faces_per_call):
            chunk = faces[start : start + self.faces_per_call]
            request = tf_serving.PredictRequest()
            request.model_spec.name = self.model_name
            request.model_spec.signature_name = self.signature
            request.inputs[self.input_key].CopyFrom(_faces_tensor(chunk))
            request.output_filter.append(self.output_key)
            response = self._call("Predict", prediction_stub.Predict, request)
            if self.output_key not in response.outputs:
                raise ModelServerError(f"model server response lacks output {self.output_key!r}")
            if response.model_spec.HasField("version"):
                self._model_version = response.model_spec.version.value
            parts.append(_probabilities(response.outputs[self.output_key], len(chunk)))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def model_status(self) -> dict[int, int]:
        """{version: ModelVersionStatus.State} for every version the server reports for this model."""
        _, model_stub = self._stubs()
        request = tf_serving.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        response = self._call("GetModelStatus", model_stub.GetModelStatus, request)
        return {status.version: status.state for status in response.model_version_status}

    @property
    def model_version(self) -> int:
        """The version that answered the last Predict, else the newest AVAILABLE one (asks the server)."""
        if self._model_version is None:
            available = [v for v, state in self.model_status().items() if state == _AVAILABLE]
            if not available:
                raise ModelServerUnavailable(f"model {self.model_name!r} has no AVAILABLE version yet")
            self._model_version = max(available)
        return self._model_version

    def wait_until_available(self, timeout_s: float = 60.0, poll_s: float = 0.5) -> int:
        """Poll GetModelStatus until a version is AVAILABLE; returns it, or raises ModelServerUnavailable."""
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while True:
            try:
                available = [v for v, state in self.model_status().items() if state == _AVAILABLE]
                if available:
                    self._model_version = max(available)
                    return self._model_version
                last_error = None
            except ModelServerUnavailable as exc:
                last_error = exc
            except ModelServerError as exc:
                # NOT_FOUND while the server has not yet seen any version: keep waiting, like for a load.
                if getattr(exc, "grpc_code", None) != grpc.StatusCode.NOT_FOUND:
                    raise
                last_error = exc
            if time.monotonic() >= deadline:
                raise ModelServerUnavailable(
                    f"model {self.model_name!r} at {self.address} not AVAILABLE after {timeout_s:.0f} s"
                    + (f" (last error: {last_error})" if last_error else "")
                )
            time.sleep(poll_s)

    def close(self) -> None:
        """Close the channel this client opened (a no-op for an injected one)."""
        with self._lock:
            if self._owns_channel and self._channel is not None and self._pid == os.getpid():
                self._channel.close()
            if self._owns_channel:
                self._channel = None
