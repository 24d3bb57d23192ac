"""The command-line client and `Client` against the real stack, as a user runs them.

A gateway of its own (on the session's Redis, worker and model server) counts uploads per 4-second window,
so a key with a quota of one upload gets a 429 whose Retry-After is short enough to wait out here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from emoji_video_client import ApiError, Client
from emoji_video_client.cli import main
from tests.conftest import REPO_ROOT, make_astronaut_video, start_gateway
from tests.keys_helpers import create_key
from tests.test_e2e import ffprobe, video_stream

pytestmark = pytest.mark.e2e

RATE_WINDOW_S = 4


@pytest.fixture(scope="module")
def client_gateway(stack_env, service_logs, worker):
    env = {**stack_env, "EMOJI_UPLOAD_RATE_WINDOW_S": str(RATE_WINDOW_S)}
    service, url = start_gateway(env, service_logs, name="gateway-client")
    yield url
    service.stop()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("clips")
    first = make_astronaut_video(folder / "first.mp4", seconds=1.2)
    second = make_astronaut_video(folder / "second.mov", seconds=1, audio=False)
    return [first, second]


def cli(base_url: str, *args: str, key: str | None = None, timeout: float = 600):
    """`python -m emoji_video_client ...` as a user would run `emoji-video ...`."""
    env = {**os.environ, "EMOJI_API_URL": base_url}
    env.pop("EMOJI_API_KEY", None)
    if key:
        env["EMOJI_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "emoji_video_client", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_process_two_clips_leaves_videos_and_timelines(client_gateway, clips, tmp_path):
    out = tmp_path / "results"
    run = cli(client_gateway, "process", *map(str, clips), "--out", str(out), "--style", "cover", "--labels")
    assert run.returncode == 0, run.stderr
    for clip in clips:
        video = out / f"{clip.stem}-emoji.mp4"
        frames = int(video_stream(ffprobe(video))["nb_read_frames"])
        assert frames == int(video_stream(ffprobe(clip))["nb_read_frames"])
        timeline = json.loads((out / f"{clip.stem}-timeline.json").read_text())
        assert len(timeline["frames"]) == frames
        assert timeline["options"] == {"style": "cover", "labels": True}
        assert (out / f"{clip.stem}-timeline.csv").read_text().startswith("frame,t_ms,person_id")
        assert str(video) in run.stdout, "the client does not say where the video went"
    assert not list(out.glob("*.part"))


def test_json_output_and_the_job_commands(client_gateway, clips, tmp_path):
    run = cli(client_gateway, "--json", "submit", str(clips[1]))
    assert run.returncode == 0, run.stderr
    [submitted] = json.loads(run.stdout)
    job_id = submitted["job_id"]
    assert submitted["status"] == "queued" and submitted["error"] is None
    with Client(client_gateway) as client:
        assert client.wait(job_id)["status"] == "succeeded"
    status = json.loads(cli(client_gateway, "--json", "status", job_id).stdout)
    assert status[0]["id"] == job_id and status[0]["status"] == "succeeded"
    listed = json.loads(cli(client_gateway, "--json", "list", "--limit", "50").stdout)
    assert job_id in [job["id"] for job in listed]
    download = cli(client_gateway, "download", job_id, "--out", str(tmp_path))
    assert download.returncode == 0 and (tmp_path / "second-emoji.mp4").stat().st_size > 1000
    assert cli(client_gateway, "delete", job_id).returncode == 0
    gone = cli(client_gateway, "status", job_id)
    assert gone.returncode == 1 and f"no job with id {job_id}" in gone.stderr


def test_a_429_is_waited_out(client_gateway, redis_url, clips):
    key = create_key(redis_url, f"tiny-{time.monotonic_ns()}", "--uploads-per-minute", "1")["key"]
    started = time.monotonic()
    run = cli(client_gateway, "-v", "--json", "submit", str(clips[0]), str(clips[1]), key=key)
    assert run.returncode == 0, run.stderr
    assert "try again in" in run.stderr, "no 429 was met: the quota did not bite"
    assert time.monotonic() - started >= 1.0
    outcomes = json.loads(run.stdout)
    assert all(o["job_id"] for o in outcomes) and len({o["job_id"] for o in outcomes}) == 2


def test_a_bad_file_gives_the_apis_message_and_a_failing_exit(client_gateway, clips, tmp_path):
    bad = tmp_path / "holiday.mp4"
    bad.write_text("just some text, not a video\n")
    run = cli(client_gateway, "process", str(bad), str(clips[1]), "--out", str(tmp_path / "out"))
    assert run.returncode == 1
    assert "holiday.mp4: failed: the file is not a video we can read" in run.stderr
    assert "Traceback" not in run.stderr
    assert (tmp_path / "out" / "second-emoji.mp4").exists(), "the good file beside it still went through"


class DropsOnce(httpx.BaseTransport):
    """The real transport, except that some requests die as a dropped connection would: `when(request,
    count)` says which (count: how many matching requests came before)."""

    def __init__(self, when) -> None:
        self.real, self.when, self.seen, self.dropped = httpx.HTTPTransport(), when, 0, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        drop = self.when(request, self.seen)
        self.seen += 1
        if drop == "before":
            self.dropped += 1
            raise httpx.ConnectError("connection refused (the gateway is restarting)", request=request)
        response = self.real.handle_request(request)
        if drop == "after":  # the request arrived, the answer is lost
            response.close()
            self.dropped += 1
            raise httpx.ReadError("connection reset by peer", request=request)
        return response


def test_an_interrupted_wait_resumes(client_gateway, clips, tmp_path, capsys):
    polls = []

    def gateway_gone(request, count):
        """The first four polls of the job fail: the gateway is gone for a few seconds."""
        if request.method == "GET" and request.url.path.count("/") == 4:
            polls.append(request.url.path)
            return "before" if len(polls) <= 4 else None
        return None

    transport = DropsOnce(gateway_gone)
    args = ["--url", client_gateway, "process", str(clips[1]), "--out", str(tmp_path)]
    code = main(args, transport=transport)
    assert code == 0, capsys.readouterr().err
    assert transport.dropped == 4 and len(polls) > 4
    assert (tmp_path / "second-emoji.mp4").stat().st_size > 1000


def test_a_retried_upload_never_makes_two_jobs(client_gateway, redis_url, clips):
    key = create_key(redis_url, f"retry-{time.monotonic_ns()}")["key"]
    transport = DropsOnce(lambda request, count: "after" if request.method == "POST" and count == 0 else None)
    with Client(client_gateway, key, transport=transport, sleep=lambda s: None) as client:
        created = client.submit(clips[1])
        assert transport.dropped == 1, "the upload was not interrupted"
        jobs = client.jobs()
    assert [job["id"] for job in jobs] == [created["id"]], "the retry made a second job"


def test_api_errors_carry_the_apis_message(client_gateway):
    with Client(client_gateway) as client, pytest.raises(ApiError) as refused:
        client.submit_url("http://127.0.0.1:9/video.mp4")
    assert refused.value.status == 422 and refused.value.code == "url_scheme_refused"
    assert "https://" in str(refused.value)


def test_a_refused_url_gives_the_apis_reason_and_a_failing_exit(client_gateway, tmp_path):
    run = cli(client_gateway, "process", "--from-url", "http://127.0.0.1:9/video.mp4", "--out", str(tmp_path))
    assert run.returncode == 1
    assert "url must be an https:// URL with a host name (422 url_scheme_refused)" in run.stderr
    assert "Traceback" not in run.stderr
