"""A minimal TF Serving REST API: model status, metadata, `:predict`, and Prometheus metrics.

Enough for health checks and curl; the workers use gRPC. JSON shapes follow TF Serving's REST API.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from model_server.errors import invalid_argument
from model_server.manager import ModelManager, State, check_serving_error

log = logging.getLogger(__name__)

_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<suffix>/metadata|:predict)?$"
)
# gRPC codes to HTTP statuses, as TF Serving's HTTP handler maps them.
_HTTP_BY_GRPC = {
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    grpc.StatusCode.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
}


def _status_json(manager: ModelManager, name: str, version: int | None) -> dict:
    statuses = manager.version_statuses(name, version)
    return {
        "model_version_status": [
            {
                "version": str(v),
                "state": State.Name(s.state),
                "status": {"error_code": s.error_code.name, "error_message": s.error_message},
            }
            for v, s in sorted(statuses.items())
        ]
    }


def _predict_json(manager: ModelManager, name: str, version: int | None, label: str, body: dict) -> dict:
    servable = manager.acquire(name, version, label or "")
    try:
        signature = servable.signature(body.get("signature_name", ""))
        keys = list(signature.input_specs)
        if "instances" in body:
            rows = body["instances"]
            if len(keys) == 1 and not (rows and isinstance(rows[0], dict)):
                columns = {keys[0]: rows}
            else:
                columns = {key: [row[key] for row in rows] for key in keys}
        elif "inputs" in body:
            columns = body["inputs"] if isinstance(body["inputs"], dict) else {keys[0]: body["inputs"]}
        else:
            raise invalid_argument("Missing 'inputs' or 'instances' key")
        inputs, dtypes = {}, {}
        for key, value in columns.items():
            spec = signature.input_specs.get(key)
            dtype = spec.dtype.as_numpy_dtype if spec is not None else np.float32
            inputs[key] = np.asarray(value, dtype=dtype)
            dtypes[key] = signature.input_dtypes.get(key, -1)
        size = signature.check_inputs(inputs, dtypes)
        outputs = signature.predict(inputs, size).outputs
    finally:
        servable.release()
    if "instances" in body:
        if len(outputs) == 1:
            return {"predictions": next(iter(outputs.values())).tolist()}
        return {"predictions": [{k: v[i].tolist() for k, v in outputs.items()} for i in range(size)]}
    if len(outputs) == 1:
        return {"outputs": next(iter(outputs.values())).tolist()}
    return {"outputs": {k: v.tolist() for k, v in outputs.items()}}


def _metadata_json(manager: ModelManager, name: str, version: int | None, label: str) -> dict:
    servable = manager.acquire(name, version, label or "")
    try:
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in servable.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature_def)
    finally:
        servable.release()
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
        "metadata": {
            "signature_def": json_format.MessageToDict(signature_map, preserving_proto_field_name=True)
        },
    }


def _metrics_text(manager: ModelManager) -> str:
    stats = manager.batch_stats
    with stats.lock:
        lines = [
            "# TYPE model_server_batches_total counter",
            f"model_server_batches_total {stats.batches}",
            "# TYPE model_server_batched_requests_total counter",
            f"model_server_batched_requests_total {stats.tasks}",
            "# TYPE model_server_batched_rows_total counter",
            f"model_server_batched_rows_total {stats.rows}",
        ]
    for name, model in manager.models.items():
        lines.append(f'model_server_available_versions{{model="{name}"}} {len(model.served)}')
    return "\n".join(lines) + "\n"


def start_rest_server(manager: ModelManager, port: int, metrics_path: str | None) -> ThreadingHTTPServer:
    """Serve the REST API on 0.0.0.0:port in a background thread."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # route http.server's stderr chatter through logging
            log.debug("rest: " + fmt, *args)

        def _send(self, status: int, payload, content_type: str = "application/json") -> None:
            body = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _handle(self, method: str) -> None:
            if method == "GET" and metrics_path and self.path == metrics_path:
                self._send(200, _metrics_text(manager), "text/plain; version=0.0.4")
                return
            match = _PATH.match(self.path)
            if not match:
                self._send(404, {"error": f"Malformed request: {method} {self.path}"})
                return
            name, suffix, label = match["name"], match["suffix"], match["label"]
            version = int(match["version"]) if match["version"] else None
            try:
                if method == "GET" and suffix is None:
                    self._send(200, _status_json(manager, name, version))
                elif method == "GET" and suffix == "/metadata":
                    self._send(200, _metadata_json(manager, name, version, label))
                elif method == "POST" and suffix == ":predict":
                    length = int(self.headers.get("Content-Length", 0))
                    try:
                        body = json.loads(self.rfile.read(length) or b"{}")
                    except json.JSONDecodeError as exc:
                        raise invalid_argument(f"JSON Parse error: {exc}") from exc
                    self._send(200, _predict_json(manager, name, version, label, body))
                else:
                    self._send(404, {"error": f"Malformed request: {method} {self.path}"})
            except Exception as exc:
                error = check_serving_error(exc)
                if error.code == grpc.StatusCode.INTERNAL:
                    log.exception("REST %s %s failed", method, self.path)
                self._send(
                    _HTTP_BY_GRPC.get(error.code, HTTPStatus.INTERNAL_SERVER_ERROR), {"error": error.message}
                )

        def do_GET(self):  # noqa: N802 (http.server's naming)
            self._handle("GET")

        def do_POST(self):  # noqa: N802
            self._handle("POST")

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="rest", daemon=True).start()
    log.info("Exporting HTTP/REST API at:0.0.0.0:%d ...", server.server_address[1])
    return server
