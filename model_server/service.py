"""The gRPC services: PredictionService (Predict, GetModelMetadata), ModelService (GetModelStatus), Health.

The generated base classes answer UNIMPLEMENTED for every RPC not overridden here (Classify, Regress,
MultiInference, HandleReloadConfigRequest), which is what a client sees from TF Serving for an unsupported
call on a SavedModel without those signatures.
"""

from __future__ import annotations

import logging
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from model_server import tensors
from model_server.errors import ServingError, invalid_argument
from model_server.manager import ModelManager, check_serving_error

log = logging.getLogger(__name__)

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
# Trailing metadata telling how a request was batched; clients that do not know them ignore them.
BATCH_TASKS_KEY = "x-batch-tasks"
BATCH_ROWS_KEY = "x-batch-rows"


def _abort(context: grpc.ServicerContext, exc: Exception):
    error = check_serving_error(exc)
    if error.code == grpc.StatusCode.INTERNAL:
        log.exception("internal error", exc_info=exc)
    context.abort(error.code, error.message)


def _spec_version(model_spec) -> int | None:
    return model_spec.version.value if model_spec.HasField("version") else None


def _checked_model_name(model_spec) -> str:
    if not model_spec.name:
        raise invalid_argument("Missing ModelSpec")
    return model_spec.name


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata over the servables of a ModelManager."""

    def __init__(self, manager: ModelManager):
        self._manager = manager

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext):
        try:
            response, batch = self._predict(request)
        except Exception as exc:
            _abort(context, exc)
        context.set_trailing_metadata(((BATCH_TASKS_KEY, str(batch[0])), (BATCH_ROWS_KEY, str(batch[1]))))
        return response

    def _predict(self, request: predict_pb2.PredictRequest):
        name = _checked_model_name(request.model_spec)
        servable = self._manager.acquire(
            name, _spec_version(request.model_spec), request.model_spec.version_label
        )
        try:
            signature = servable.signature(request.model_spec.signature_name)
            inputs = {key: tensors.to_numpy(proto) for key, proto in request.inputs.items()}
            size = signature.check_inputs(inputs, {key: proto.dtype for key, proto in request.inputs.items()})
            wanted = list(request.output_filter) or signature.output_keys
            unknown = [key for key in wanted if key not in signature.output_keys]
            if unknown:
                raise invalid_argument(
                    f"output tensor alias not found in signature: {', '.join(unknown)} "
                    f"Outputs expected to be in the set {{{','.join(signature.output_keys)}}}."
                )
            result = signature.predict(inputs, size)
        finally:
            servable.release()
        response = predict_pb2.PredictResponse()
        response.model_spec.name = name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature.name
        for key in wanted:
            response.outputs[key].CopyFrom(tensors.to_proto(result.outputs[key]))
        return response, (result.batch_tasks, result.batch_rows)

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context):
        try:
            return self._metadata(request)
        except Exception as exc:
            _abort(context, exc)

    def _metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest):
        name = _checked_model_name(request.model_spec)
        if not request.metadata_field:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise invalid_argument(f"Metadata field {field} is not supported")
        servable = self._manager.acquire(
            name, _spec_version(request.model_spec), request.model_spec.version_label
        )
        try:
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, signature_def in servable.signature_defs.items():
                signature_map.signature_def[key].CopyFrom(signature_def)
        finally:
            servable.release()
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(signature_map)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus: every version's state (START, LOADING, AVAILABLE, UNLOADING, END) and error."""

    def __init__(self, manager: ModelManager):
        self._manager = manager

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):
        try:
            name = _checked_model_name(request.model_spec)
            statuses = self._manager.version_statuses(name, _spec_version(request.model_spec))
        except Exception as exc:
            _abort(context, exc)
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, status in sorted(statuses.items()):
            entry = response.model_version_status.add(version=version, state=status.state)
            entry.status.error_code = status.error_code.value[0]
            entry.status.error_message = status.error_message
        return response


def build_server(
    manager: ModelManager, port: int, max_message_bytes: int, max_threads: int, channel_args: list[tuple]
) -> tuple[grpc.Server, health.HealthServicer, int]:
    """A grpcio server with the three services on 0.0.0.0:port; returns it, its health servicer, the port."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        *channel_args,
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grpc"), options=options
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(manager), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(manager), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"0.0.0.0:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on port {port}")

    def update_health() -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if manager.ready()
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", PREDICTION_SERVICE, MODEL_SERVICE):
            health_servicer.set(service, status)

    manager.on_change = update_health
    update_health()
    return server, health_servicer, bound


__all__ = ["build_server", "ServingError", "BATCH_TASKS_KEY", "BATCH_ROWS_KEY"]
