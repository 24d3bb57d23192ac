"""Videos by URL through the real stack, against an HTTP server this test starts on loopback addresses.

The server listens on 127.0.0.2 (the address a test gateway is allowed to reach) and on 127.0.0.1 (the
one it is not), so a refusal is the guard's doing, not a failed connection. No test sends traffic anywhere
but loopback; the private and link-local ranges are checked with a stubbed resolver (test_url_guard.py).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, start_gateway, wait_for_job
from tests.test_e2e import assert_same_shape_of_video

pytestmark = pytest.mark.e2e

ALLOWED_HOST = "127.0.0.2"
FETCH_TIMEOUT_S = 4
MAX_UPLOAD_BYTES = 4 * 1024 * 1024


class VideoServer:
    """Routes: /astronaut.mp4 (the clip), /redirect-to-loopback (302 to 127.0.0.1), /big.mp4 (6 MiB,
    chunked: no Content-Length to refuse early), /drip.mp4 (a byte every half second)."""

    def __init__(self, video: Path) -> None:
        self.video = video.read_bytes()
        self.port = free_port()
        self.requests: list[str] = []
        self.servers = [
            ThreadingHTTPServer((host, self.port), self.handler()) for host in (ALLOWED_HOST, "127.0.0.1")
        ]
        for server in self.servers:
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def url(self, path: str, host: str = ALLOWED_HOST) -> str:
        return f"http://{host}:{self.port}{path}"

    def handler(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
                outer.requests.append(f"{self.headers.get('Host')}{self.path}")
                if self.path == "/astronaut.mp4":
                    self.send_response(200)
                    self.send_header("Content-Type", "video/mp4")
                    self.send_header("Content-Length", str(len(outer.video)))
                    self.end_headers()
                    self.wfile.write(outer.video)
                elif self.path == "/redirect-to-loopback":
                    self.send_response(302)
                    self.send_header("Location", outer.url("/astronaut.mp4", "127.0.0.1"))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/big.mp4":
                    self.chunked(outer.video[:4096] + b"\0" * (6 * 1024 * 1024), 0.0)
                elif self.path == "/drip.mp4":
                    self.chunked(outer.video[:40], 0.5, size=1)
                else:
                    self.send_error(404)

            def chunked(self, body: bytes, pause_s: float, size: int = 65536) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for i in range(0, len(body), size):
                        part = body[i : i + size]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                        self.wfile.flush()
                        time.sleep(pause_s)
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the gateway hung up, as it should

        return Handler

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="module")
def video_server(astronaut_video):
    server = VideoServer(astronaut_video)
    yield server
    server.close()


@pytest.fixture(scope="module")
def url_gateway(stack_env, service_logs, worker):
    """A gateway that may fetch http:// from 127.0.0.2 (and nothing else that is not public)."""
    env = {
        **stack_env,
        "EMOJI_URL_FETCH_ALLOW_HTTP": "true",
        "EMOJI_URL_FETCH_ALLOWED_NETWORKS": f"{ALLOWED_HOST}/32",
        "EMOJI_URL_FETCH_TIMEOUT_S": str(FETCH_TIMEOUT_S),
        "EMOJI_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
    }
    service, url = start_gateway(env, service_logs, name="gateway-url")
    yield url
    service.stop()


def submit_url(base_url: str, url: str, headers: dict | None = None, **fields) -> httpx.Response:
    return httpx.post(f"{base_url}/api/v1/jobs", json={"url": url, **fields}, headers=headers, timeout=60)


def refused(base_url: str, url: str, storage_dir: Path) -> dict:
    """The error of a refused URL job, having checked that it left nothing in storage."""
    before = set(storage_dir.iterdir())
    reply = submit_url(base_url, url)
    assert reply.status_code == 422, reply.text
    assert set(storage_dir.iterdir()) == before, "a refused URL left files behind"
    return reply.json()["error"]


def test_a_video_by_url_is_processed_like_an_upload(url_gateway, video_server, astronaut_video, tmp_path):
    key = {"Idempotency-Key": f"url-job-{time.monotonic_ns()}"}
    reply = submit_url(url_gateway, video_server.url("/astronaut.mp4"), key, style="cover", labels=True)
    assert reply.status_code == 202, reply.text
    # The same request again with the same key: the same job, and the video is not fetched twice.
    again = submit_url(url_gateway, video_server.url("/astronaut.mp4"), key, style="cover", labels=True)
    assert again.status_code == 202 and again.json()["id"] == reply.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert sum(r.endswith("/astronaut.mp4") for r in video_server.requests) == 1
    other = submit_url(url_gateway, video_server.url("/astronaut.mp4"), key, style="badge")
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    job = wait_for_job(url_gateway, reply.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["filename"] == "astronaut.mp4" and job["frames_total"] == 75
    assert job["options"] == {"style": "cover", "labels": True}
    result = tmp_path / "result.mp4"
    result.write_bytes(httpx.get(f"{url_gateway}/api/v1/jobs/{job['id']}/video", timeout=60).content)
    assert_same_shape_of_video(astronaut_video, result)
    # Fetched at the checked address, naming the host.
    assert f"{ALLOWED_HOST}:{video_server.port}/astronaut.mp4" in video_server.requests


def test_with_the_default_settings_the_same_server_is_refused(gateway, video_server, storage_dir):
    error = refused(gateway, video_server.url("/astronaut.mp4").replace("http://", "https://"), storage_dir)
    assert error["code"] == "url_address_refused"
    assert "private, loopback or link-local" in error["message"]


def test_http_is_refused_unless_allowed(gateway, video_server, storage_dir):
    error = refused(gateway, video_server.url("/astronaut.mp4"), storage_dir)
    assert error["code"] == "url_scheme_refused" and "https://" in error["message"]


def test_a_redirect_to_a_loopback_address_is_refused(url_gateway, video_server, storage_dir):
    error = refused(url_gateway, video_server.url("/redirect-to-loopback"), storage_dir)
    assert error["code"] == "url_redirect_refused"
    assert "127.0.0.1" in error["message"]
    assert not any(r.startswith("127.0.0.1") for r in video_server.requests), "the redirect was followed"


def test_a_body_over_the_upload_limit_is_refused_while_streaming(url_gateway, video_server, storage_dir):
    error = refused(url_gateway, video_server.url("/big.mp4"), storage_dir)
    assert error["code"] == "url_too_large" and "4 MiB" in error["message"]


def test_a_slow_drip_is_cut_off_at_the_time_limit(url_gateway, video_server, storage_dir):
    started = time.monotonic()
    error = refused(url_gateway, video_server.url("/drip.mp4"), storage_dir)
    assert error["code"] == "url_timed_out" and f"{FETCH_TIMEOUT_S} s" in error["message"]
    assert time.monotonic() - started < FETCH_TIMEOUT_S + 5
