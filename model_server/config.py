"""TF Serving's configuration files, parsed exactly as the real server parses them (protobuf text format).

`models.config` is `tensorflow.serving.ModelServerConfig`, shipped in `tensorflow-serving-api`. The batching
and monitoring files use protos that the pip package does not ship (`BatchingParameters` from
session_bundle_config.proto, `MonitoringConfig` from monitoring_config.proto), so their descriptors are
rebuilt here with TF Serving's field names and numbers; text format is checked against them field by field.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2

log = logging.getLogger(__name__)

_PACKAGE = "tensorflow.serving"


def _build_pool() -> descriptor_pool.DescriptorPool:
    """A private pool so that these hand-made descriptors can never clash with the real generated ones."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="model_server/tf_serving_extra_configs.proto",
        package=_PACKAGE,
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )

    def add_message(name: str, fields: list[tuple[str, int, int, int, str]]) -> None:
        message = file.message_type.add(name=name)
        for field_name, number, field_type, label, type_name in fields:
            field = message.field.add(name=field_name, number=number, type=field_type, label=label)
            if type_name:
                field.type_name = type_name

    optional, repeated = f.LABEL_OPTIONAL, f.LABEL_REPEATED
    int64_value, string_value = ".google.protobuf.Int64Value", ".google.protobuf.StringValue"
    add_message(
        "BatchingParameters",
        [
            ("max_batch_size", 1, f.TYPE_MESSAGE, optional, int64_value),
            ("batch_timeout_micros", 2, f.TYPE_MESSAGE, optional, int64_value),
            ("max_enqueued_batches", 3, f.TYPE_MESSAGE, optional, int64_value),
            ("num_batch_threads", 4, f.TYPE_MESSAGE, optional, int64_value),
            ("thread_pool_name", 5, f.TYPE_MESSAGE, optional, string_value),
            ("allowed_batch_sizes", 6, f.TYPE_INT64, repeated, ""),
            ("pad_variable_length_inputs", 7, f.TYPE_BOOL, optional, ""),
            # Newer fields: names and wrapper types as in TF Serving's own tests; text format needs no more.
            ("enable_large_batch_splitting", 8, f.TYPE_MESSAGE, optional, ".google.protobuf.BoolValue"),
            ("max_execution_batch_size", 9, f.TYPE_MESSAGE, optional, int64_value),
        ],
    )
    add_message(
        "PrometheusConfig",
        [("enable", 1, f.TYPE_BOOL, optional, ""), ("path", 2, f.TYPE_STRING, optional, "")],
    )
    add_message(
        "MonitoringConfig",
        [("prometheus_config", 1, f.TYPE_MESSAGE, optional, f".{_PACKAGE}.PrometheusConfig")],
    )
    pool.AddSerializedFile(file.SerializeToString())
    return pool


_POOL = _build_pool()
BatchingParameters = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName(f"{_PACKAGE}.BatchingParameters")
)
MonitoringConfig = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName(f"{_PACKAGE}.MonitoringConfig")
)

# TF Serving's defaults when --enable_batching is given without a file (BasicBatchScheduler::Options),
# except num_batch_threads, which TF Serving sets to the number of cores.
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_MAX_ENQUEUED_BATCHES = 10


class ConfigError(ValueError):
    """A configuration file or flag combination the real TF Serving would refuse too."""


def parse_text(text: str, message, source: str = "<string>"):
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ConfigError(f"{source}: not a valid {message.DESCRIPTOR.name} text proto: {exc}") from exc


def _parse_text(path: Path, message):
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    return parse_text(text, message, str(path))


def load_model_server_config(path: Path) -> model_server_config_pb2.ModelServerConfig:
    """Parse a models.config (`model_config_list { config { name: ... base_path: ... } }`)."""
    config = _parse_text(path, model_server_config_pb2.ModelServerConfig())
    if not config.HasField("model_config_list"):
        raise ConfigError(f"{path}: only model_config_list is supported (as in TF Serving's docs)")
    names = [model.name for model in config.model_config_list.config]
    if len(names) != len(set(names)) or not all(names):
        raise ConfigError(f"{path}: every model needs a unique, non-empty name, got {names}")
    for model in config.model_config_list.config:
        if not model.base_path:
            raise ConfigError(f"{path}: model {model.name!r} has no base_path")
        if model.model_platform not in ("", "tensorflow"):
            raise ConfigError(f"{path}: model {model.name!r}: only model_platform 'tensorflow' is served")
    return config


def single_model_config(name: str, base_path: str) -> model_server_config_pb2.ModelServerConfig:
    """The config TF Serving builds from --model_name and --model_base_path."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    return config


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """The batching scheduler's settings, resolved from BatchingParameters with TF Serving's defaults."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES
    num_batch_threads: int = 1
    enable_large_batch_splitting: bool = False
    # The largest batch run at once when splitting; without splitting it is max_batch_size.
    max_execution_batch_size: int | None = None

    @property
    def execution_batch_size(self) -> int:
        if self.enable_large_batch_splitting and self.max_execution_batch_size:
            return min(self.max_execution_batch_size, self.max_batch_size)
        return self.max_batch_size

    def __post_init__(self) -> None:
        minimums = {
            "max_batch_size": 1,
            "batch_timeout_micros": 0,
            "max_enqueued_batches": 1,
            "num_batch_threads": 1,
        }
        if self.max_execution_batch_size is not None:
            minimums["max_execution_batch_size"] = 1
        for name, minimum in minimums.items():
            if getattr(self, name) < minimum:
                raise ConfigError(f"batching: {name} must be >= {minimum}, got {getattr(self, name)}")


def load_batching_parameters(path: Path | None):
    """Parse a batching_parameters_file into the proto; None gives an empty one (all defaults)."""
    return _parse_text(path, BatchingParameters()) if path else BatchingParameters()


def batching_options(params, default_threads: int) -> BatchingOptions:
    """Resolve a BatchingParameters proto: a field left out takes TF Serving's default."""

    def value(name: str, default: int) -> int:
        return getattr(params, name).value if params.HasField(name) else default

    if params.allowed_batch_sizes or params.pad_variable_length_inputs:
        log.warning("batching: allowed_batch_sizes and padding are accepted but not used by this server")
    return BatchingOptions(
        max_batch_size=value("max_batch_size", DEFAULT_MAX_BATCH_SIZE),
        batch_timeout_micros=value("batch_timeout_micros", 0),
        max_enqueued_batches=value("max_enqueued_batches", DEFAULT_MAX_ENQUEUED_BATCHES),
        num_batch_threads=value("num_batch_threads", default_threads),
        enable_large_batch_splitting=params.enable_large_batch_splitting.value,
        max_execution_batch_size=value("max_execution_batch_size", 0) or None,
    )


def load_monitoring_config(path: Path):
    """Parse a monitoring_config_file (`prometheus_config { enable: true path: "..." }`)."""
    return _parse_text(path, MonitoringConfig())
