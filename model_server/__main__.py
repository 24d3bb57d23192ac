"""`python -m model_server`: TF Serving's gRPC (and minimal REST) API with tensorflow_model_server's flags."""

from __future__ import annotations

import os

# TensorFlow reads these at import: keep its C++ INFO chatter out of the service log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

log = logging.getLogger("model_server")

# TF Serving's gRPC server accepts messages up to INT32_MAX; clients keep their own, smaller limit.
DEFAULT_MAX_MESSAGE_BYTES = 2**31 - 1


def _bool(value: str) -> bool:
    """TF Serving's flag syntax: `--flag`, `--flag=true`, `--flag=false`."""
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _channel_arguments(value: str) -> list[tuple[str, object]]:
    """TF Serving's --grpc_channel_arguments: comma-separated key=value, integers where they parse."""
    pairs = []
    for item in filter(None, value.split(",")):
        key, _, raw = item.partition("=")
        pairs.append((key.strip(), int(raw) if raw.strip().lstrip("-").isdigit() else raw.strip()))
    return pairs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The subset of tensorflow_model_server's flags this server honours (see docs/model_server.md)."""
    p = argparse.ArgumentParser(prog="python -m model_server", description=__doc__)
    p.add_argument("--port", type=int, default=8500, help="gRPC port (0 picks a free one, logged)")
    p.add_argument("--rest_api_port", type=int, default=0, help="REST port; 0 turns REST off")
    p.add_argument("--model_name", default="default", help="model name when no --model_config_file")
    p.add_argument("--model_base_path", default="", help="folder of numeric version subfolders")
    p.add_argument("--model_config_file", default="", help="ModelServerConfig text proto (models.config)")
    p.add_argument(
        "--model_config_file_poll_wait_seconds", type=int, default=0, help="accepted; not reloaded"
    )
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0, help="version polling period")
    p.add_argument("--enable_batching", type=_bool, nargs="?", const=True, default=False)
    p.add_argument("--batching_parameters_file", default="", help="BatchingParameters text proto")
    p.add_argument("--monitoring_config_file", default="", help="MonitoringConfig text proto (Prometheus)")
    p.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0, help="0: TensorFlow decides")
    p.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0, help="0: TensorFlow decides")
    p.add_argument("--grpc_max_threads", type=int, default=64, help="gRPC handler threads")
    p.add_argument("--grpc_max_message_bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    p.add_argument("--grpc_channel_arguments", type=_channel_arguments, default=[], help="k=v,k=v")
    p.add_argument("--max_num_load_retries", type=int, default=5)
    p.add_argument("--enable_model_warmup", type=_bool, nargs="?", const=True, default=True, help="accepted")
    p.add_argument("--log_level", default=os.environ.get("MODEL_SERVER_LOG_LEVEL", "INFO"))
    args = p.parse_args(argv)
    if bool(args.model_config_file) == bool(args.model_base_path):
        p.error("give exactly one of --model_config_file or --model_base_path (with --model_name)")
    if args.batching_parameters_file and not args.enable_batching:
        p.error("--batching_parameters_file needs --enable_batching")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    import tensorflow as tf

    # Must happen before TensorFlow runs its first op; 0 leaves TensorFlow's own choice (one per core).
    if args.tensorflow_intra_op_parallelism:
        tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
    if args.tensorflow_inter_op_parallelism:
        tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)

    from model_server import config as cfg
    from model_server.manager import ModelManager
    from model_server.service import build_server

    try:
        if args.model_config_file:
            server_config = cfg.load_model_server_config(Path(args.model_config_file))
        else:
            server_config = cfg.single_model_config(
                args.model_name, str(Path(args.model_base_path).resolve())
            )
        batching = None
        if args.enable_batching:
            params = cfg.load_batching_parameters(
                Path(args.batching_parameters_file) if args.batching_parameters_file else None
            )
            batching = cfg.batching_options(params, default_threads=os.cpu_count() or 1)
        metrics_path = None
        if args.monitoring_config_file:
            monitoring = cfg.load_monitoring_config(Path(args.monitoring_config_file))
            if monitoring.prometheus_config.enable:
                metrics_path = monitoring.prometheus_config.path or "/monitoring/prometheus/metrics"
    except cfg.ConfigError as exc:
        log.error("%s", exc)
        return 2
    if args.model_config_file_poll_wait_seconds > 0:
        log.warning("--model_config_file_poll_wait_seconds: config reloading is not supported; read once")

    manager = ModelManager(
        server_config,
        batching,
        args.file_system_poll_wait_seconds,
        max_load_retries=args.max_num_load_retries,
    )
    # Listen before loading, so clients get UNAVAILABLE (and health NOT_SERVING) while models load.
    server, _, port = build_server(
        manager, args.port, args.grpc_max_message_bytes, args.grpc_max_threads, args.grpc_channel_arguments
    )
    server.start()
    log.info("Running gRPC ModelServer at 0.0.0.0:%d ... (batching: %s)", port, batching or "off")
    rest = None
    if args.rest_api_port:
        from model_server.rest import start_rest_server

        rest = start_rest_server(manager, args.rest_api_port, metrics_path)
    manager.start()

    stopping = threading.Event()

    def request_stop(signum, _frame):
        log.info("signal %d: shutting down", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    stopping.wait()
    server.stop(grace=5).wait()
    if rest is not None:
        rest.shutdown()
    manager.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
