"""TensorProto <-> numpy without TensorFlow's slow generic paths on the hot path (raw tensor_content)."""

from __future__ import annotations

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from model_server.errors import invalid_argument

# Types whose tensor_content is the plain little-endian array, so frombuffer/tobytes are exact.
_NUMPY_BY_DTYPE: dict[int, np.dtype] = {
    types_pb2.DT_FLOAT: np.dtype("<f4"),
    types_pb2.DT_DOUBLE: np.dtype("<f8"),
    types_pb2.DT_HALF: np.dtype("<f2"),
    types_pb2.DT_INT8: np.dtype("i1"),
    types_pb2.DT_UINT8: np.dtype("u1"),
    types_pb2.DT_INT16: np.dtype("<i2"),
    types_pb2.DT_UINT16: np.dtype("<u2"),
    types_pb2.DT_INT32: np.dtype("<i4"),
    types_pb2.DT_UINT32: np.dtype("<u4"),
    types_pb2.DT_INT64: np.dtype("<i8"),
    types_pb2.DT_UINT64: np.dtype("<u8"),
    types_pb2.DT_BOOL: np.dtype("?"),
}
_DTYPE_BY_NUMPY = {dtype: enum for enum, dtype in _NUMPY_BY_DTYPE.items()}


def dtype_name(dtype_enum: int) -> str:
    """TF's spelling of a DataType ("uint8", "float"), as TF Serving's messages use it."""
    name = (
        types_pb2.DataType.Name(dtype_enum) if dtype_enum in types_pb2.DataType.values() else str(dtype_enum)
    )
    return name.removeprefix("DT_").lower()


def to_numpy(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Decode a request tensor; tensor_content is a zero-copy view, typed value lists go through TF."""
    shape = [dim.size for dim in proto.tensor_shape.dim]
    dtype = _NUMPY_BY_DTYPE.get(proto.dtype)
    if proto.tensor_content and dtype is not None:
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if len(proto.tensor_content) != expected:
            raise invalid_argument(
                f"tensor_content holds {len(proto.tensor_content)} bytes, but shape {shape} of "
                f"{dtype_name(proto.dtype)} needs {expected}"
            )
        return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
    import tensorflow as tf  # the rare path (float_val/int_val lists, strings): TF knows every encoding

    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as exc:
        raise invalid_argument(f"cannot decode tensor: {exc}") from exc


def to_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """Encode a response tensor as raw bytes (TF Serving's own encoding for numeric tensors)."""
    dtype_enum = _DTYPE_BY_NUMPY.get(array.dtype)
    if dtype_enum is None:
        import tensorflow as tf

        return tf.make_tensor_proto(array)
    return tensor_pb2.TensorProto(
        dtype=dtype_enum,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape]
        ),
        tensor_content=np.ascontiguousarray(array).tobytes(),
    )
