"""The gateway's API: unit checks in-process, then the real stack (Redis, worker, model server, gateway).

The stack tests upload one real clip once (module fixture) and check every way of reading it back, then
the refusals: bad input, unknown ids, results asked for too early, and the live WebSocket.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from common.classes import EMOTIONS
from common.errors import JobNotFound, ModelServerUnavailable, UploadTooLarge, VideoError
from common.jobs import JobStore
from gateway.errors import BadUpload, JobNotReady, status_for
from gateway.uploads import clean_filename, human_bytes
from tests.conftest import start_gateway, wait_for_job

REPO_ROOT = Path(__file__).resolve().parent.parent
JOB_TIMEOUT_S = 420


# --- unit: no services ---------------------------------------------------------------------------------


def test_gateway_imports_neither_tensorflow_nor_opencv_nor_the_worker():
    code = (
        "import sys, gateway.app\n"
        "heavy = ('tensorflow', 'cv2', 'worker', 'common.face_crop')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"gateway.app pulled in {out.stdout.strip()}"


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UploadTooLarge("x"), 413),
        (BadUpload("x"), 422),
        (VideoError("x"), 415),
        (JobNotFound("x"), 404),
        (JobNotReady("x"), 409),
        (ModelServerUnavailable("x"), 503),
    ],
)
def test_errors_map_to_status_codes(error, status):
    assert status_for(error) == status


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"clip.mp4", "clip.mp4"),
        (b"../../etc/passwd", "passwd"),
        (b"C:\\Users\\me\\holiday.mov", "holiday.mov"),
        (b"", "upload"),
        (None, "upload"),
        ("caf\u00e9.mp4".encode(), "caf\u00e9.mp4"),
    ],
)
def test_clean_filename_keeps_only_the_base_name(raw, expected):
    assert clean_filename(raw) == expected


@pytest.mark.parametrize(
    ("size", "text"), [(0, "0 bytes"), (1536, "1.5 KiB"), (10 * 1024**2, "10 MiB"), (2 * 1024**3, "2 GiB")]
)
def test_human_bytes(size, text):
    assert human_bytes(size) == text


@pytest.fixture
def tiny_app(tmp_path):
    """The app in-process with a 10 kB upload limit and its own storage folder (Redis is never reached)."""
    from gateway.app import create_app
    from gateway.settings import GatewaySettings

    settings = GatewaySettings(
        max_upload_bytes=10_000, storage_dir=tmp_path / "storage", redis_url="redis://127.0.0.1:1/0"
    )
    return create_app(settings), settings.storage_dir


def _multipart(boundary: str, payload: bytes) -> bytes:
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    return head + payload + f"\r\n--{boundary}--\r\n".encode()


def call(app, method: str, url: str, **kwargs) -> httpx.Response:
    """One request to the app in-process, through httpx's ASGI transport."""

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(go())


def _leftovers(storage: Path) -> list[Path]:
    return [p for p in storage.rglob("*") if p.is_file()] if storage.exists() else []


def test_over_the_limit_is_refused_early_by_content_length(tiny_app):
    app, storage = tiny_app
    reply = call(app, "POST", "/api/v1/jobs", files={"file": ("big.mp4", b"\0" * 200_000, "video/mp4")})
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == "upload_too_large"
    assert "limit" in reply.json()["error"]["message"]
    assert _leftovers(storage) == []


def test_over_the_limit_is_refused_while_streaming_and_nothing_stays(tiny_app):
    app, storage = tiny_app
    body = _multipart("XyZ", b"\1" * 50_000)
    written = []

    async def chunks():
        # No Content-Length: only counting while streaming can catch it.
        for start in range(0, len(body), 4096):
            written.append(start)
            yield body[start : start + 4096]

    reply = call(
        app,
        "POST",
        "/api/v1/jobs",
        content=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
    )
    assert reply.status_code == 413, reply.text
    assert "9.77 KiB upload limit" in reply.json()["error"]["message"]
    assert len(written) < len(body) // 4096, "the whole body was read before refusing it"
    assert _leftovers(storage) == []


@pytest.mark.parametrize(
    "path, title, current",
    # The job page asks Redis whose job it is: tests/test_auth.py checks its layout on the real stack.
    [("/", "upload", "/"), ("/live", "live", "/live")],
)
def test_pages_share_one_layout_and_revalidate_by_etag(tiny_app, path, title, current):
    import re

    app, _ = tiny_app
    reply = call(app, "GET", path)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
    html = reply.text
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert f"<title>Emoji video · {title}</title>" in html
    nav = html.split("<nav>")[1].split("</nav>")[0]
    assert re.findall(r'<a href="([^"]+)"', nav) == ["/", "/live", "/docs", "/sign-in"]
    assert re.findall(r'<a href="([^"]+)" aria-current="page">', html) == ([current] if current else [])
    assert html.count("<main>") == 1 and "$content" not in html and "$nav" not in html
    assert reply.headers["cache-control"] == "no-cache"
    again = call(app, "GET", path, headers={"If-None-Match": reply.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_limits_tell_the_page_the_upload_limit(tiny_app):
    app, _ = tiny_app
    reply = call(app, "GET", "/api/v1/limits")
    assert reply.status_code == 200
    assert reply.json()["max_upload_bytes"] == 10_000


def test_unknown_route_and_bad_job_id_answer_the_error_body(tiny_app):
    app, _ = tiny_app
    missing = call(app, "GET", "/api/v1/nothing-here")
    bad_id = call(app, "GET", "/api/v1/jobs/NOT-A-JOB")
    traversal = call(app, "GET", "/api/v1/jobs/..%2F..%2Fetc%2Fpasswd/video")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert bad_id.status_code == 404 and bad_id.json()["error"]["code"] == "job_not_found"
    assert traversal.status_code == 404 and "error" in traversal.json()


def test_redis_down_is_a_503_with_a_message(tiny_app):
    app, _ = tiny_app
    health = call(app, "GET", "/healthz")
    jobs = call(app, "GET", "/api/v1/jobs")
    assert health.status_code == 503 and health.json()["redis"] is False
    assert jobs.status_code == 503
    assert "Redis" in jobs.json()["error"]["message"]


@pytest.fixture
def one_viewer_gateway(tmp_path):
    """The app served by uvicorn in a thread, with a single live slot (live refusals need no Redis)."""
    import uvicorn

    from gateway.app import create_app
    from gateway.settings import GatewaySettings
    from tests.conftest import free_port

    settings = GatewaySettings(live_max_clients=1, storage_dir=tmp_path, redis_url="redis://127.0.0.1:1/0")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_gateway_sweeps_the_files_of_expired_jobs(redis_url, tmp_path):
    """A running gateway removes a folder whose job Redis no longer knows, and keeps a known job's."""
    import uvicorn

    from common.storage import LocalStorage
    from gateway.app import create_app
    from gateway.settings import GatewaySettings
    from tests.conftest import free_port
    from tests.test_jobs import make_job_folder

    db_url = redis_url.rsplit("/", 1)[0] + "/6"
    store = JobStore.from_url(db_url, ttl_s=60)
    store.redis.flushdb()
    storage = LocalStorage(tmp_path)
    store.create("known", "a.mp4", {"frames": 1})
    make_job_folder(storage, "known", age_s=600)
    make_job_folder(storage, "forgotten", age_s=600)
    settings = GatewaySettings(
        storage_dir=tmp_path, redis_url=db_url, storage_sweep_interval_s=0.2, orphan_grace_s=60
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while (tmp_path / "forgotten").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert storage.job_ids() == ["known"]
    finally:
        server.should_exit = True
        thread.join(10)
        store.redis.flushdb()


def test_a_frame_that_fails_unexpectedly_is_answered_with_an_error_and_keeps_the_session():
    """A surprise in one frame must not close the socket: that would free the viewer's place in its
    owner's live count while the page reconnects (and let a second page in)."""
    from gateway.api.live import _answer
    from gateway.settings import GatewaySettings

    class BrokenHub:
        async def classify(self, pubsub, client_id, frame):
            raise KeyError("status")

    settings = GatewaySettings()
    answer = json.loads(asyncio.run(_answer(_face_jpeg((64, 48)), 7, BrokenHub(), settings, None, "viewer")))
    assert answer["seq"] == 7 and answer["error"]["code"] == "live_frame_failed"
    assert "next one" in answer["error"]["message"]


def test_live_says_so_when_the_queue_is_down_and_keeps_the_socket(one_viewer_gateway):
    from websockets.sync.client import connect

    with connect(one_viewer_gateway.replace("http://", "ws://") + "/api/v1/live", open_timeout=10) as ws:
        ws.recv(timeout=10)
        for seq in (1, 2):
            ws.send(_face_jpeg((160, 120)))
            answer = json.loads(ws.recv(timeout=60))
            assert answer["error"]["code"] == "queue_unavailable" and answer["seq"] == seq


def test_live_refuses_viewers_beyond_the_limit_with_a_reason(one_viewer_gateway):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    url = one_viewer_gateway.replace("http://", "ws://") + "/api/v1/live"
    with connect(url, open_timeout=10) as first:
        assert "client_id" in json.loads(first.recv(timeout=10))["hello"]
        with connect(url, open_timeout=10) as second:
            assert json.loads(second.recv(timeout=10))["error"]["code"] == "too_many_viewers"
            with pytest.raises(ConnectionClosed) as closed:
                second.recv(timeout=10)
            assert closed.value.rcvd.code == 1013
    # The slot is free again once the server has seen the first viewer leave.
    for _ in range(100):
        with connect(url, open_timeout=10) as third:
            if "hello" in json.loads(third.recv(timeout=10)):
                break
        time.sleep(0.05)
    else:
        raise AssertionError("the first viewer's slot was never given back")


# --- the real stack ------------------------------------------------------------------------------------



@pytest.fixture(scope="module")
def finished_job(gateway, astronaut_video) -> dict:
    """The astronaut clip uploaded once and processed to the end: (accepted reply, final job)."""
    with astronaut_video.open("rb") as handle:
        reply = httpx.post(
            f"{gateway}/api/v1/jobs", files={"file": ("astronaut.mp4", handle, "video/mp4")}, timeout=120
        )
    assert reply.status_code == 202, reply.text
    job = wait_for_job(gateway, reply.json()["id"])
    assert job["status"] == "succeeded", job
    return {"reply": reply, "job": job}


@pytest.mark.e2e
def test_upload_is_accepted_with_links_and_location(finished_job, gateway):
    reply = finished_job["reply"]
    body = reply.json()
    job_id = body["id"]
    assert body["status"] == "queued"
    assert reply.headers["location"] == f"/api/v1/jobs/{job_id}"
    assert body["links"] == {
        "self": f"/api/v1/jobs/{job_id}",
        "video": f"/api/v1/jobs/{job_id}/video",
        "timeline": f"/api/v1/jobs/{job_id}/timeline",
        "timeline_csv": f"/api/v1/jobs/{job_id}/timeline.csv",
        "events": f"/api/v1/jobs/{job_id}/events",
        "page": f"/jobs/{job_id}",
        "image": None,  # a photo job's result (docs/api.md#photos)
    }


@pytest.mark.e2e
def test_finished_job_reports_full_progress(finished_job, astronaut_video):
    job = finished_job["job"]
    assert job["progress"] == 1.0
    assert job["frames_total"] == 75 and job["frames_done"] == 75
    assert job["error"] is None
    assert job["filename"] == "astronaut.mp4"
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]


@pytest.mark.e2e
def test_video_supports_range_requests(finished_job, gateway, storage_dir):
    job_id = finished_job["job"]["id"]
    url = f"{gateway}/api/v1/jobs/{job_id}/video"
    whole = httpx.get(url, timeout=60)
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "video/mp4"
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.content == (storage_dir / job_id / "result.mp4").read_bytes()
    assert whole.content[4:8] == b"ftyp"

    part = httpx.get(url, headers={"Range": "bytes=100-1123"}, timeout=60)
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-1123/{len(whole.content)}"
    assert part.content == whole.content[100:1124]

    tail = httpx.get(url, headers={"Range": "bytes=-64"}, timeout=60)
    assert tail.status_code == 206 and tail.content == whole.content[-64:]

    outside = httpx.get(url, headers={"Range": f"bytes={len(whole.content) + 10}-"}, timeout=60)
    assert outside.status_code == 416


@pytest.mark.e2e
def test_video_download_asks_the_browser_to_save(finished_job, gateway):
    job_id = finished_job["job"]["id"]
    reply = httpx.head(f"{gateway}/api/v1/jobs/{job_id}/video?download=true", timeout=30)
    assert reply.status_code == 200
    assert reply.headers["content-disposition"].startswith("attachment")
    assert "astronaut-emoji.mp4" in reply.headers["content-disposition"]


@pytest.mark.e2e
def test_timeline_json_and_csv(finished_job, gateway):
    job_id = finished_job["job"]["id"]
    timeline = httpx.get(f"{gateway}/api/v1/jobs/{job_id}/timeline", timeout=30)
    assert timeline.status_code == 200
    assert timeline.headers["content-type"] == "application/json"
    data = timeline.json()
    assert data["schema_version"] == 2
    assert data["job_id"] == job_id
    assert data["emotions"] == list(EMOTIONS)
    assert abs(len(data["frames"]) - 75) <= 1
    assert sum(len(f["faces"]) for f in data["frames"]) > 0, "the astronaut's face was never found"

    csv = httpx.get(f"{gateway}/api/v1/jobs/{job_id}/timeline.csv", timeout=30)
    assert csv.status_code == 200
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.headers["content-disposition"].startswith("attachment")
    header, *rows = csv.text.strip().splitlines()
    assert header.startswith("frame,t_ms,person_id,x1,y1,x2,y2,score,emotion,shown_emotion")
    assert len(rows) == sum(len(f["faces"]) for f in data["frames"])


@pytest.mark.e2e
def test_events_stream_ends_with_the_finished_job(finished_job, gateway):
    job_id = finished_job["job"]["id"]
    with httpx.stream("GET", f"{gateway}/api/v1/jobs/{job_id}/events", timeout=30) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        text = "".join(reply.iter_text())
    event, data = text.strip().split("\n", 1)
    assert event == "event: job"
    assert json.loads(data.removeprefix("data: "))["status"] == "succeeded"


@pytest.mark.e2e
def test_events_arrive_when_the_job_changes_not_on_the_next_timer(gateway, redis_url):
    """The stream wakes on the store's change notices: with the timer at its default (5 s), a change and the
    end each arrive well inside it, and a deletion ends the stream with `gone`."""
    from gateway.settings import GatewaySettings

    interval = GatewaySettings().events_interval_s
    store = JobStore.from_url(redis_url)
    # Records only, no task: the stream is what is under test, and it reads just the record.
    # Fresh ids: the session's Redis is shared, and other tests make records of their own fixed ids.
    running, deleted = uuid.uuid4().hex, uuid.uuid4().hex
    for job_id in (running, deleted):
        store.create(job_id, "notices.mp4", {"frames": 10})
        store.mark_running(job_id)

    def changes(job_id, steps):
        time.sleep(1.0)  # the stream has sent the job as it is, and waits
        for step in steps:
            step()
            times.append(time.monotonic())
            time.sleep(1.0)

    def read(job_id):
        received = []
        with httpx.stream("GET", f"{gateway}/api/v1/jobs/{job_id}/events", timeout=30) as reply:
            for line in reply.iter_lines():
                if line.startswith("event: "):
                    received.append((line.removeprefix("event: "), time.monotonic()))
        return received

    times: list[float] = []
    writer = threading.Thread(
        target=changes,
        args=(running, [lambda: store.mark_batch_done(running, 0, 5), lambda: store.mark_succeeded(running)]),
    )
    writer.start()
    received = read(running)
    writer.join()
    assert [event for event, _ in received] == ["job", "job", "job"]  # as it was, a batch done, the end
    delays = [at - changed for (_, at), changed in zip(received[1:], times, strict=True)]
    assert max(delays) < interval / 2, delays

    times = []
    writer = threading.Thread(target=changes, args=(deleted, [lambda: store.delete(deleted)]))
    writer.start()
    received = read(deleted)
    writer.join()
    store.delete(running)
    assert [event for event, _ in received] == ["job", "gone"]
    assert received[1][1] - times[0] < interval / 2


@pytest.mark.e2e
def test_recent_jobs_lists_the_job(finished_job, gateway):
    jobs = httpx.get(f"{gateway}/api/v1/jobs", timeout=30).json()["jobs"]
    assert finished_job["job"]["id"] in [j["id"] for j in jobs]


@pytest.mark.e2e
def test_healthz(gateway):
    reply = httpx.get(f"{gateway}/healthz", timeout=10)
    assert reply.status_code == 200 and reply.json() == {"status": "ok", "redis": True}


@pytest.mark.e2e
def test_results_of_an_unfinished_or_failed_job_are_409(gateway, redis_url, storage_dir):
    store = JobStore.from_url(redis_url)
    # Records only, no task: the gateway is what is under test, and it reads just the record.
    waiting, failed = "a" * 32, "b" * 32
    store.create(waiting, "waiting.mp4", {"frames": 10})
    store.create(failed, "failed.mp4", {"frames": 10})
    store.mark_failed(failed, "model_server_unavailable", "the model server did not answer")
    try:
        for path in ("video", "timeline", "timeline.csv"):
            early = httpx.get(f"{gateway}/api/v1/jobs/{waiting}/{path}", timeout=10)
            assert early.status_code == 409
            assert "still queued" in early.json()["error"]["message"]
        gone_wrong = httpx.get(f"{gateway}/api/v1/jobs/{failed}/video", timeout=10)
        assert gone_wrong.status_code == 409
        assert "the model server did not answer" in gone_wrong.json()["error"]["message"]
        shown = httpx.get(f"{gateway}/api/v1/jobs/{failed}", timeout=10).json()
        assert shown["status"] == "failed"
        assert shown["error"] == {
            "code": "model_server_unavailable",
            "message": "the model server did not answer",
        }
    finally:
        store.delete(waiting)
        store.delete(failed)


@pytest.mark.e2e
def test_delete_removes_the_job_and_its_files(gateway, astronaut_video, storage_dir):
    with astronaut_video.open("rb") as handle:
        reply = httpx.post(
            f"{gateway}/api/v1/jobs", files={"file": ("doomed.mp4", handle, "video/mp4")}, timeout=120
        )
    job_id = reply.json()["id"]
    assert (storage_dir / job_id / "input").exists()
    wait_for_job(gateway, job_id)
    assert (storage_dir / job_id / "result.mp4").exists()

    assert httpx.delete(f"{gateway}/api/v1/jobs/{job_id}", timeout=30).status_code == 204
    assert not (storage_dir / job_id).exists()
    gone = httpx.get(f"{gateway}/api/v1/jobs/{job_id}", timeout=10)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "job_not_found"
    assert httpx.get(f"{gateway}/api/v1/jobs/{job_id}/video", timeout=10).status_code == 404
    again = httpx.delete(f"{gateway}/api/v1/jobs/{job_id}", timeout=10)
    assert again.status_code == 404
    assert job_id not in [j["id"] for j in httpx.get(f"{gateway}/api/v1/jobs", timeout=10).json()["jobs"]]


@pytest.mark.e2e
def test_unknown_job_is_404(gateway):
    for method in ("GET", "DELETE"):
        reply = httpx.request(method, f"{gateway}/api/v1/jobs/{'0' * 32}", timeout=10)
        assert reply.status_code == 404
        assert "no job with id" in reply.json()["error"]["message"]


def _job_dirs(storage_dir: Path) -> set[str]:
    return {p.name for p in storage_dir.iterdir()} if storage_dir.exists() else set()


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("name", "content", "status", "code", "says"),
    [
        ("notes.txt", b"this is not a video\n" * 50, 415, "invalid_video", "not a video we can read"),
        ("empty.mp4", b"", 422, "bad_upload", "empty"),
        (
            "list.m3u8",
            b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n",
            415,
            "invalid_video",
            "not a video",
        ),
    ],
)
def test_bad_uploads_are_refused_with_a_message_and_leave_nothing(
    gateway, storage_dir, name, content, status, code, says
):
    before = _job_dirs(storage_dir)
    reply = httpx.post(
        f"{gateway}/api/v1/jobs", files={"file": (name, content, "application/octet-stream")}, timeout=60
    )
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == code
    assert says in error["message"]
    assert str(storage_dir) not in error["message"], "the message leaks the server's storage path"
    assert _job_dirs(storage_dir) == before


@pytest.mark.e2e
def test_a_request_without_the_file_field_says_how_to_send_it(gateway, storage_dir):
    before = _job_dirs(storage_dir)
    no_field = httpx.post(
        f"{gateway}/api/v1/jobs", files={"video": ("a.mp4", b"123", "video/mp4")}, timeout=30
    )
    not_form = httpx.post(
        f"{gateway}/api/v1/jobs", content=b"123", headers={"Content-Type": "video/mp4"}, timeout=30
    )
    for reply in (no_field, not_form):
        assert reply.status_code == 422
        assert "field named 'file'" in reply.json()["error"]["message"]
    assert _job_dirs(storage_dir) == before


# --- live ----------------------------------------------------------------------------------------------


def _face_jpeg(size: tuple[int, int] = (640, 480)) -> bytes:
    from PIL import Image
    from skimage import data

    image = Image.fromarray(data.astronaut()).crop((64, 0, 448, 288)).resize(size)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def _ws_url(gateway: str) -> str:
    return gateway.replace("http://", "ws://") + "/api/v1/live"


@pytest.fixture(scope="module")
def live_gateway(stack_env, service_logs, worker):
    """A gateway that waits long for live answers: a loaded test machine must not turn into a failed test."""
    service, url = start_gateway({**stack_env, "EMOJI_LIVE_TIMEOUT_S": "120"}, service_logs, "gateway-live")
    yield url
    service.stop()


@pytest.mark.e2e
def test_live_frame_comes_back_with_a_face(live_gateway):
    from websockets.sync.client import connect

    jpeg = _face_jpeg()
    with connect(_ws_url(live_gateway), open_timeout=10) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert "client_id" in hello["hello"]
        answers = []
        for _ in range(3):
            ws.send(jpeg)
            answers.append(json.loads(ws.recv(timeout=30)))
    for answer in answers:
        assert "error" not in answer, answer
        assert (answer["width"], answer["height"]) == (640, 480)
        assert set(answer["timings_ms"]) >= {"decode", "detect", "classify", "total"}
        assert answer["server_ms"] > 0
    assert [a["seq"] for a in answers] == [1, 2, 3]
    face = answers[-1]["faces"][0]
    x1, y1, x2, y2 = face["box_xyxy"]
    # The astronaut's face sits in the upper middle of this crop.
    assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480
    assert 160 < (x1 + x2) / 2 < 480 and (y1 + y2) / 2 < 300
    assert face["shown_emotion"] in EMOTIONS and face["emotion"] in EMOTIONS
    assert abs(sum(face["probabilities"].values()) - 1.0) < 1e-3


@pytest.mark.e2e
def test_live_refuses_what_is_not_a_jpeg_and_keeps_the_socket(live_gateway):
    from websockets.sync.client import connect

    with connect(_ws_url(live_gateway), open_timeout=10) as ws:
        ws.recv(timeout=10)
        ws.send("hello")
        assert json.loads(ws.recv(timeout=10))["error"]["code"] == "not_a_frame"
        ws.send(b"GIF89a....")
        assert json.loads(ws.recv(timeout=10))["error"]["code"] == "not_a_jpeg"
        ws.send(_face_jpeg((320, 240)))
        answer = json.loads(ws.recv(timeout=30))
        assert "error" not in answer and answer["width"] == 320


@pytest.mark.e2e
def test_several_live_viewers_at_once(live_gateway):
    from websockets.sync.client import connect

    jpeg = _face_jpeg()
    results: dict[int, list] = {}

    def viewer(index: int) -> None:
        with connect(_ws_url(live_gateway), open_timeout=10) as ws:
            ws.recv(timeout=10)
            got = []
            for _ in range(4):
                ws.send(jpeg)
                got.append(json.loads(ws.recv(timeout=60)))
            results[index] = got

    threads = [threading.Thread(target=viewer, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(results) == [0, 1, 2]
    for got in results.values():
        assert all("error" not in a and a["faces"] for a in got), got


def _group_rss_bytes(pid: int) -> int:
    """Resident memory of every process in the process group led by `pid` (a worker and its pool)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pid:
                continue
            status = (entry / "status").read_text()
        except (OSError, ProcessLookupError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


@pytest.fixture(scope="module")
def jpeg_bomb() -> bytes:
    """A 16000x16000 grey JPEG of about 1 MB (progressive: long runs of empty blocks cost almost nothing)."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (16000, 16000), 128).save(out, format="JPEG", quality=50, progressive=True)
    assert len(out.getvalue()) < 2 * 1024 * 1024
    return out.getvalue()


@pytest.mark.e2e
def test_a_huge_frame_is_refused_by_its_header_and_never_decoded(live_gateway, worker, jpeg_bomb):
    from websockets.sync.client import connect

    with connect(_ws_url(live_gateway), open_timeout=10, max_size=None) as ws:
        ws.recv(timeout=10)
        ws.send(_face_jpeg((320, 240)))  # the pool is warm (model loaded) before measuring
        assert "error" not in json.loads(ws.recv(timeout=60))
        before = _group_rss_bytes(worker.proc.pid)
        for _ in range(3):
            ws.send(jpeg_bomb)
            error = json.loads(ws.recv(timeout=60))["error"]
            assert error["code"] == "frame_too_large", error
            assert "16000x16000" in error["message"]
        grown = _group_rss_bytes(worker.proc.pid) - before
        ws.send(_face_jpeg((320, 240)))
        answer = json.loads(ws.recv(timeout=60))
    assert "error" not in answer and answer["width"] == 320
    # One decoded 16000x16000 BGR frame is 768 MB; the worker's memory stays where it was.
    assert grown < 64 * 1024 * 1024, f"the live worker grew by {grown / 2**20:.0f} MB"
