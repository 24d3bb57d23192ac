"""The gateway's Prometheus metrics, served at /metrics: requests, latency, upload bytes, live sessions.

One process, so the library's default registry; the objects are module-level because a metric name can
be registered once per process (tests build several apps in one).
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter(
    "emoji_gateway_requests_total", "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "emoji_gateway_request_seconds", "Time from request to the end of the response, by route template.",
    ["method", "route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
UPLOAD_BYTES = Counter("emoji_gateway_upload_bytes_total", "Bytes of uploaded videos received.")
UPLOADS = Counter(
    "emoji_gateway_uploads_total", "Video uploads, by outcome: accepted or refused.", ["outcome"]
)
LIVE_SESSIONS = Gauge("emoji_gateway_live_sessions", "Webcam viewers connected now.")
LIVE_FRAMES = Counter("emoji_gateway_live_frames_total", "Webcam frames received.")

router = APIRouter(tags=["system"])


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (/api/v1/jobs/{job_id}, not the id).

    Plain ASGI rather than BaseHTTPMiddleware, which would buffer streamed responses (videos, events).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or _mount_of(scope["path"])
            method = scope["method"]
            REQUESTS.labels(method, template, str(status)).inc()
            LATENCY.labels(method, template).observe(time.perf_counter() - started)


def _mount_of(path: str) -> str:
    """Static files and unknown paths: one label per mount, never the raw path (unbounded label values)."""
    for mount in ("/static", "/emojis"):
        if path.startswith(mount + "/"):
            return mount
    return "unmatched"
