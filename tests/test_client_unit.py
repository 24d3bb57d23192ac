"""The client's retry rules with a scripted transport (the client is the unit under test; the stack tests
in test_client.py run it against the real service)."""

from __future__ import annotations

import httpx
import pytest

from emoji_video_client import ApiError, Client, ClientError
from emoji_video_client.cli import main, unique_stems

JOB = {"id": "a" * 32, "status": "queued", "links": {}}


def scripted(*answers):
    """A transport answering each request with the next of `answers` (a Response, or an exception to
    raise); the requests it saw are in `.seen`."""
    queue = list(answers)
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    transport = httpx.MockTransport(handle)
    transport.seen = seen
    return transport


def error(status: int, code: str, message: str, **headers) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}}, headers=headers)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_waited_out(tmp_path, status):
    video = tmp_path / "a.mp4"
    video.write_bytes(b"\0" * 1000)
    transport = scripted(
        error(status, "too_many_uploads", "wait", **{"Retry-After": "7"}), httpx.Response(202, json=JOB)
    )
    slept = []
    with Client("http://service", transport=transport, sleep=slept.append) as client:
        assert client.submit(video)["id"] == JOB["id"]
    assert slept == [7.0]
    first, second = transport.seen
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert b"\0" * 1000 in second.content, "the retried upload did not send the file again from its start"


def test_a_dropped_upload_is_sent_again_under_the_same_key(tmp_path):
    video = tmp_path / "a.mp4"
    video.write_bytes(b"video")
    transport = scripted(httpx.ReadError("reset"), httpx.ReadError("reset"), httpx.Response(202, json=JOB))
    slept = []
    with Client("http://service", transport=transport, sleep=slept.append) as client:
        client.submit(video)
    assert slept == [1.0, 2.0]
    assert len({r.headers["Idempotency-Key"] for r in transport.seen}) == 1


def test_an_unreachable_service_is_a_clear_error_after_the_retries():
    transport = scripted(*[httpx.ConnectError("refused")] * 3)
    with Client("http://service", transport=transport, retries=2, sleep=lambda s: None) as client:
        with pytest.raises(ClientError, match="is the service running"):
            client.job(JOB["id"])


def test_api_errors_keep_the_apis_message_and_code():
    transport = scripted(error(404, "job_not_found", "no job with id x; upload the video again"))
    with Client("http://service", transport=transport) as client, pytest.raises(ApiError) as refused:
        client.job("x")
    assert (refused.value.status, refused.value.code) == (404, "job_not_found")
    assert str(refused.value) == "no job with id x; upload the video again (404 job_not_found)"


def test_the_key_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("EMOJI_API_KEY", "ek_secret")
    monkeypatch.setenv("EMOJI_API_URL", "http://elsewhere:9000")
    transport = scripted(httpx.Response(200, json={"jobs": []}))
    with Client(transport=transport) as client:
        assert client.jobs() == []
    [request] = transport.seen
    assert request.headers["Authorization"] == "Bearer ek_secret"
    assert str(request.url).startswith("http://elsewhere:9000/api/v1/jobs")


def test_same_named_files_get_results_of_their_own(tmp_path):
    files = [tmp_path / "a.mp4", tmp_path / "a.mov", tmp_path / "b.mp4"]
    assert unique_stems(files) == ["a-mp4", "a-mov", "b"]


def test_a_missing_file_is_a_usage_error_before_anything_is_sent(tmp_path, capsys):
    transport = scripted()
    assert main(["--url", "http://service", "process", str(tmp_path / "nope.mp4")], transport=transport) == 2
    assert "no such file" in capsys.readouterr().err and transport.seen == []


def test_a_photo_jobs_result_is_saved_as_the_photo(tmp_path):
    """Where the service takes photos, a photo job links its result as "image" (its video link answers
    409): the client saves the photo with the extension of its type."""
    links = {"video": "/v", "image": "/i", "timeline": "/t", "timeline_csv": "/c"}
    job = {"id": "p" * 32, "status": "succeeded", "filename": "team.jpg", "links": links}
    transport = scripted(
        httpx.Response(200, json=job),
        httpx.Response(200, headers={"content-type": "image/jpeg"}),
        httpx.Response(200, content=b"jpeg bytes", headers={"content-type": "image/jpeg"}),
        httpx.Response(200, content=b"{}"),
        httpx.Response(200, content=b"frame"),
    )
    with Client("http://service", transport=transport) as client:
        saved = client.download(job["id"], tmp_path)
    assert saved["image"] == tmp_path / "team-emoji.jpg" and saved["image"].read_bytes() == b"jpeg bytes"
    assert [r.url.path for r in transport.seen] == [f"/api/v1/jobs/{job['id']}", "/i", "/i", "/t", "/c"]
