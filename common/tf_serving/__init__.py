"""TF Serving's gRPC API (Predict, GetModelStatus) with protobuf and grpcio alone: no TensorFlow.

The stubs of `tensorflow-serving-api` import all of TensorFlow (3-15 s and 600 MB in every worker process)
only to build a few messages. Here the same messages come from api.binpb: the .proto definitions of the
installed `tensorflow-serving-api`, taken from it by `make protos` (extract.py) and checked against it by
tests/test_tf_serving_api.py. They live in a private descriptor pool, so a process that also imports
TensorFlow's own stubs (the model server, the tests) sees no clash. Same messages, same bytes on the wire.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

API_FILE = Path(__file__).resolve().parent / "api.binpb"

# The services and RPCs as TF Serving names them (prediction_service.proto, model_service.proto).
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
PREDICT_METHOD = f"/{PREDICTION_SERVICE}/Predict"
GET_MODEL_STATUS_METHOD = f"/{MODEL_SERVICE}/GetModelStatus"


def _pool() -> descriptor_pool.DescriptorPool:
    files = descriptor_pb2.FileDescriptorSet.FromString(API_FILE.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file_proto in files.file:  # in import order
        pool.Add(file_proto)
    return pool


_POOL = _pool()


def _message(full_name: str):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(full_name))


TensorProto = _message("tensorflow.TensorProto")
TensorShapeProto = _message("tensorflow.TensorShapeProto")
PredictRequest = _message("tensorflow.serving.PredictRequest")
PredictResponse = _message("tensorflow.serving.PredictResponse")
GetModelStatusRequest = _message("tensorflow.serving.GetModelStatusRequest")
GetModelStatusResponse = _message("tensorflow.serving.GetModelStatusResponse")
ModelVersionStatus = _message("tensorflow.serving.ModelVersionStatus")

_DATA_TYPE = _POOL.FindEnumTypeByName("tensorflow.DataType")
DT_FLOAT = _DATA_TYPE.values_by_name["DT_FLOAT"].number
DT_UINT8 = _DATA_TYPE.values_by_name["DT_UINT8"].number
AVAILABLE = ModelVersionStatus.DESCRIPTOR.enum_values_by_name["AVAILABLE"].number


def data_type_name(number: int) -> str:
    """DT_FLOAT for 1, and so on; the number itself for one this API does not know."""
    value = _DATA_TYPE.values_by_number.get(number)
    return value.name if value else str(number)


def _unary(channel: grpc.Channel, method: str, request, response):
    return channel.unary_unary(
        method, request_serializer=request.SerializeToString, response_deserializer=response.FromString
    )


class PredictionServiceStub:
    """The Predict call of tensorflow.serving.PredictionService, as its generated stub makes it."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.Predict = _unary(channel, PREDICT_METHOD, PredictRequest, PredictResponse)


class ModelServiceStub:
    """The GetModelStatus call of tensorflow.serving.ModelService."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.GetModelStatus = _unary(
            channel, GET_MODEL_STATUS_METHOD, GetModelStatusRequest, GetModelStatusResponse
        )
