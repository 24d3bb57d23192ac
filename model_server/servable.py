"""One loaded model version: the SavedModel's signatures as plain numpy-in, numpy-out functions."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from model_server.batching import Batcher, BatchResult, BatchStats
from model_server.config import BatchingOptions
from model_server.errors import ServingError, failed_precondition, invalid_argument
from model_server.tensors import dtype_name

log = logging.getLogger(__name__)

SERVE_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"

# TF's error classes mapped to the gRPC code TF Serving returns for them (same numeric codes in TF).
_TF_ERROR_CODES = {
    tf.errors.InvalidArgumentError: "INVALID_ARGUMENT",
    tf.errors.ResourceExhaustedError: "RESOURCE_EXHAUSTED",
    tf.errors.FailedPreconditionError: "FAILED_PRECONDITION",
    tf.errors.UnimplementedError: "UNIMPLEMENTED",
}


def _shape_str(shape) -> str:
    return "[" + ",".join("-1" if d is None else str(d) for d in shape) + "]"


def read_signature_defs(path: Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs of the 'serve' MetaGraph, exactly as stored (what TF Serving's metadata returns)."""
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError(f"{path}: no MetaGraph tagged {SERVE_TAG!r}")


class Signature:
    """A signature's concrete function, called directly (traced once at export, never retraced here)."""

    def __init__(self, name: str, function, signature_def: meta_graph_pb2.SignatureDef):
        self.name = name
        self._function = function
        self.input_specs: dict[str, tf.TensorSpec] = dict(function.structured_input_signature[1])
        self.output_keys = sorted(function.structured_outputs)
        self.input_dtypes = {key: signature_def.inputs[key].dtype for key in self.input_specs}
        self.batcher: Batcher | None = None

    def check_inputs(self, inputs: dict[str, np.ndarray], dtypes: dict[str, int]) -> int:
        """Validate names, dtypes and shapes like TF Serving; returns the batch size (first dimension)."""
        expected = set(self.input_specs)
        if set(inputs) != expected:
            unknown = sorted(set(inputs) - expected)
            if unknown:
                raise invalid_argument(
                    f"input tensor alias not found in signature: {', '.join(unknown)}. "
                    f"Inputs expected to be in the set {{{','.join(sorted(expected))}}}."
                )
            missing = sorted(expected - set(inputs))
            raise invalid_argument(
                f"input size does not match signature: {len(inputs)}!={len(expected)} "
                f"len({{{','.join(sorted(inputs))}}}) != len({{{','.join(sorted(expected))}}}). "
                f"Sent extra: {{}}. Missing but required: {{{','.join(missing)}}}."
            )
        batch_sizes = set()
        for index, (key, array) in enumerate(sorted(inputs.items())):
            spec = self.input_specs[key]
            if dtypes[key] != self.input_dtypes[key]:
                raise invalid_argument(
                    f"Expects arg[{index}] to be {dtype_name(self.input_dtypes[key])} but "
                    f"{dtype_name(dtypes[key])} is provided (input '{key}')"
                )
            if not spec.shape.is_compatible_with(array.shape):
                raise invalid_argument(
                    f"input tensor '{key}' has shape {_shape_str(array.shape)} but signature "
                    f"'{self.name}' expects {_shape_str(spec.shape.as_list())}"
                )
            batch_sizes.add(array.shape[0] if array.ndim else 1)
        if len(batch_sizes) > 1:
            raise invalid_argument(
                f"inputs of signature '{self.name}' disagree on the batch size: {batch_sizes}"
            )
        return batch_sizes.pop() if batch_sizes else 1

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call the concrete function once; TF errors become TF Serving's status codes."""
        try:
            outputs = self._function(**{key: tf.constant(value) for key, value in inputs.items()})
        except tf.errors.OpError as exc:
            import grpc

            code = next((c for cls, c in _TF_ERROR_CODES.items() if isinstance(exc, cls)), "INTERNAL")
            raise ServingError(getattr(grpc.StatusCode, code), exc.message) from exc
        return {key: value.numpy() for key, value in outputs.items()}

    def predict(self, inputs: dict[str, np.ndarray], size: int) -> BatchResult:
        """Run through the batcher when batching is on, else directly on the calling thread."""
        if self.batcher is not None:
            return self.batcher.run(inputs, size)
        return BatchResult(self.run(inputs), 1, size)


class LoadedVersion:
    """A servable (model name + version) with a count of requests in flight, for a drop-free unload."""

    def __init__(
        self, model_name: str, version: int, path: Path, batching: BatchingOptions | None, stats: BatchStats
    ):
        self.model_name = model_name
        self.version = version
        self.path = path
        self.signature_defs = read_signature_defs(path)
        self._saved_model = tf.saved_model.load(str(path), tags=[SERVE_TAG])
        self.signatures = {
            name: Signature(name, function, self.signature_defs[name])
            for name, function in self._saved_model.signatures.items()
        }
        self._warm_up()
        if batching is not None:
            for signature in self.signatures.values():
                signature.batcher = Batcher(signature.run, batching, f"{model_name}:{version}", stats)
        self._in_flight = 0
        self._idle = threading.Condition()

    def _warm_up(self) -> None:
        """One call per signature with a single zero row, so the first real request is not the slow one."""
        for signature in self.signatures.values():
            specs = signature.input_specs.values()
            if all(spec.shape.rank and spec.shape[1:].is_fully_defined() for spec in specs):
                zeros = {
                    key: np.zeros([1, *spec.shape[1:].as_list()], spec.dtype.as_numpy_dtype)
                    for key, spec in signature.input_specs.items()
                }
                try:
                    signature.run(zeros)
                except ServingError as exc:
                    log.warning(
                        "warm-up of %s:%d/%s failed: %s", self.model_name, self.version, signature.name, exc
                    )

    def signature(self, name: str) -> Signature:
        """The named signature, or FAILED_PRECONDITION as TF Serving answers for an unknown key."""
        try:
            return self.signatures[name or DEFAULT_SIGNATURE]
        except KeyError:
            raise failed_precondition(f'Serving signature key "{name}" not found.') from None

    def acquire(self) -> None:
        with self._idle:
            self._in_flight += 1

    def release(self) -> None:
        with self._idle:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.notify_all()

    def unload(self) -> None:
        """Wait for requests in flight, then stop the batch threads and drop the graph."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0)
        for signature in self.signatures.values():
            if signature.batcher is not None:
                signature.batcher.stop()
        self.signatures = {}
        self._saved_model = None
