"""`python -m common.tf_serving.extract`: write api.binpb, TF Serving's Predict and GetModelStatus messages
as the installed `tensorflow-serving-api` (and the TensorFlow it depends on) define them.

Run where that package is installed (`make protos`; the dev install has it, for the model server and
training). The worker reads the file with protobuf alone (common/tf_serving/__init__.py): the customer's
package stays the source of the API, byte for byte, and the worker never imports TensorFlow.
"""

from __future__ import annotations

import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

OUT = Path(__file__).resolve().parent / "api.binpb"


def installed_api() -> descriptor_pb2.FileDescriptorSet:
    """The .proto files of Predict and GetModelStatus with all they import, each after its imports."""
    from tensorflow_serving.apis import get_model_status_pb2, predict_pb2  # imports TensorFlow

    ordered: list = []

    def add(file_descriptor) -> None:
        if file_descriptor in ordered:
            return
        for dependency in file_descriptor.dependencies:
            add(dependency)
        ordered.append(file_descriptor)

    add(predict_pb2.DESCRIPTOR)
    add(get_model_status_pb2.DESCRIPTOR)
    files = descriptor_pb2.FileDescriptorSet()
    for file_descriptor in ordered:
        file_descriptor.CopyToProto(files.file.add())
    return files


def main() -> int:
    data = installed_api().SerializeToString(deterministic=True)
    OUT.write_bytes(data)
    print(f"wrote {OUT} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
