"""Webhooks on the real stack: a receiver started here on 127.0.0.1 (allowed only through the test stack's
EMOJI_WEBHOOK_ALLOWED_NETWORKS), the real worker delivering, signatures checked with the owner's secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.conftest import make_astronaut_video
from tests.keys_helpers import bearer, create_key, upload, wait_done

# --- unit: no services -----------------------------------------------------------------------------


def test_the_delivery_task_module_stays_light():
    code = "import sys, worker.webhooks; print([m for m in ('tensorflow', 'cv2') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_retry_delays_double_and_stay_under_the_visibility_timeout():
    from common.settings import CommonSettings
    from worker.webhooks import retry_delay_s

    s = CommonSettings(webhook_retry_base_s=30, webhook_retry_max_delay_s=3600, visibility_timeout_s=600)
    assert [retry_delay_s(n, s) for n in range(1, 7)] == [30, 60, 120, 240, 480, 480]


def test_signatures_verify_only_with_the_secret_the_body_and_a_fresh_timestamp():
    from common.webhooks import sign, verify

    body = b'{"type":"job.succeeded"}'
    header = sign("whsec_a", body)
    assert verify("whsec_a", body, header)
    assert not verify("whsec_b", body, header)
    assert not verify("whsec_a", body + b" ", header)
    assert not verify("whsec_a", body, sign("whsec_a", body, timestamp=int(time.time()) - 3600))


@pytest.mark.parametrize(
    ("url", "allowed", "ok"),
    [
        ("http://127.0.0.1:9/x", "", False),
        ("http://127.0.0.1:9/x", "127.0.0.1/32", True),
        ("http://[::ffff:10.0.0.1]/x", "", False),  # IPv4-mapped private address
        ("http://100.64.0.1/x", "", False),  # carrier-grade NAT, not public
        ("https://93.184.215.14/x", "", True),  # a public address
        ("file:///etc/passwd", "", False),
        ("http:///nohost", "", False),
    ],
)
def test_callback_addresses(url, allowed, ok):
    from common.webhooks import CallbackRefused, check_callback_url

    if ok:
        assert check_callback_url(url, allowed)
    else:
        with pytest.raises(CallbackRefused):
            check_callback_url(url, allowed)


@pytest.mark.parametrize(
    ("url", "address", "expected"),
    [
        ("https://hooks.example.com/a?b=1", "93.184.215.14",
         ("https://93.184.215.14/a?b=1", {"Host": "hooks.example.com"},
          {"sni_hostname": "hooks.example.com"})),
        ("http://hooks.example.com:8080/a", "2606:2800:21f:cb07::1",
         ("http://[2606:2800:21f:cb07::1]:8080/a", {"Host": "hooks.example.com:8080"}, {})),
    ],
)
def test_deliveries_go_to_the_checked_address(url, address, expected):
    """The POST connects to the address the check approved (no second DNS answer), names the host in Host,
    and checks an HTTPS certificate against the host name (SNI)."""
    from common.url_guard import pinned_request

    assert pinned_request(url, address) == expected


# --- the real stack ---------------------------------------------------------------------------------


class Receiver:
    """An HTTP server that records every POST and answers from a script per path."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.script: dict[str, list[int]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.calls.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                       "at": time.monotonic()})
                answers = receiver.script.get(self.path, [])
                status = answers.pop(0) if answers else 200
                self.send_response(status)
                if status in (301, 302, 307, 308):
                    self.send_header("Location", receiver.url("/redirect-target"))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def to(self, path: str) -> list[dict]:
        return [c for c in self.calls if c["path"] == path]

    def wait_for(self, path: str, count: int, timeout_s: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(self.to(path)) < count:
            time.sleep(0.1)
        return self.to(path)


@pytest.fixture(scope="module")
def receiver():
    server = Receiver()
    yield server
    server.server.shutdown()


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory):
    return make_astronaut_video(tmp_path_factory.mktemp("hooks") / "short.mp4", seconds=1.0)


@pytest.fixture(scope="module")
def owner(redis_url) -> dict:
    return create_key(redis_url, "webhook-owner")


def _check_signature(call: dict, secret: str) -> None:
    """What a receiver must do: recompute HMAC-SHA256 over "<t>." + body and compare."""
    fields = dict(part.split("=", 1) for part in call["headers"]["Emoji-Signature"].split(","))
    signed = fields["t"].encode() + b"." + call["body"]
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected), "bad signature"
    assert abs(time.time() - int(fields["t"])) < 300
    assert fields["v1"] != hmac.new(b"another secret", signed, hashlib.sha256).hexdigest()


@pytest.mark.e2e
def test_one_signed_delivery_per_finished_job(gateway, receiver, short_clip, owner):
    key = bearer(owner["key"])
    reply = upload(gateway, short_clip, headers=key, data={"callback_url": receiver.url("/ok")})
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["id"]
    job = wait_done(gateway, job_id, key)
    assert job["status"] == "succeeded"
    calls = receiver.wait_for("/ok", 1)
    time.sleep(3)  # a second call would come within the retry base (0.5 s) and the finishing steps
    calls = receiver.to("/ok")
    assert len(calls) == 1, f"{len(calls)} deliveries"
    call = calls[0]
    # The secret: the one the CLI printed, the same as /api/v1/me shows the owner.
    assert httpx.get(f"{gateway}/api/v1/me", headers=key).json()["webhook_secret"] == owner["webhook secret"]
    _check_signature(call, owner["webhook secret"])
    body = json.loads(call["body"])
    assert body["type"] == "job.succeeded" and call["headers"]["Emoji-Event"] == "job.succeeded"
    assert body["job"]["id"] == job_id and body["job"]["status"] == "succeeded"
    assert body["job"]["frames_total"] == job["frames_total"]
    shown = httpx.get(f"{gateway}/api/v1/jobs/{job_id}", headers=key).json()["webhook"]
    assert shown["url"] == receiver.url("/ok") and shown["status"] == "delivered"
    assert [a["status_code"] for a in shown["attempts"]] == [200]


@pytest.mark.e2e
def test_a_failing_receiver_gets_the_third_try_and_redirects_are_not_followed(
    gateway, receiver, short_clip, owner
):
    receiver.script["/flaky"] = [500, 302]
    key = bearer(owner["key"])
    reply = upload(gateway, short_clip, headers=key, data={"callback_url": receiver.url("/flaky")})
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["id"]
    wait_done(gateway, job_id, key)
    calls = receiver.wait_for("/flaky", 3)
    assert len(calls) == 3
    time.sleep(2)
    assert len(receiver.to("/flaky")) == 3 and receiver.to("/redirect-target") == []
    assert [c["headers"]["Emoji-Attempt"] for c in calls] == ["1", "2", "3"]
    for call in calls:
        _check_signature(call, owner["webhook secret"])
    # Exponential backoff: the second wait is about twice the first (0.5 s, then 1 s in the test stack).
    first_wait, second_wait = calls[1]["at"] - calls[0]["at"], calls[2]["at"] - calls[1]["at"]
    assert first_wait >= 0.5 and second_wait >= 1.0
    shown = httpx.get(f"{gateway}/api/v1/jobs/{job_id}", headers=key).json()["webhook"]
    assert shown["status"] == "delivered"
    assert [a["status_code"] for a in shown["attempts"]] == [500, 302, 200]
    assert "redirects are not followed" in shown["attempts"][1]["error"]


@pytest.mark.e2e
@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/hook",  # private
        "http://192.168.0.10:8080/hook",
        "http://169.254.169.254/latest/meta-data/",  # link-local (cloud metadata)
        "http://[::1]/hook",  # loopback, IPv6 (only 127.0.0.1 is allowed in the test stack)
        "http://0.0.0.0/hook",
        "ftp://example.com/hook",
        "http://user:pass@example.com/hook",
    ],
)
def test_a_private_or_odd_callback_is_refused_at_submit(gateway, short_clip, owner, storage_dir, url):
    before = {p.name for p in storage_dir.iterdir()}
    reply = upload(gateway, short_clip, headers=bearer(owner["key"]), data={"callback_url": url})
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["code"] == "callback_url_refused"
    assert {p.name for p in storage_dir.iterdir()} == before


@pytest.mark.e2e
def test_a_failed_job_is_delivered_as_job_failed(redis_url, stack_env, worker, receiver, owner):
    """The worker's delivery task on a job that failed (recorded here as the worker's fail() leaves it)."""
    from common.jobs import JobStore
    from common.queue import TASK_DELIVER_WEBHOOK, WEBHOOK_QUEUE, make_celery
    from common.settings import CommonSettings

    store = JobStore.from_url(redis_url)
    job_id = "e" * 32
    store.create_for("key:" + owner["id"], job_id, "broken.mp4", {"frames": 10},
                     callback_url=receiver.url("/failed"))
    store.mark_failed(job_id, "invalid_video", "the video stops after 2 frames; upload it again")
    celery = make_celery(CommonSettings(redis_url=redis_url))
    celery.send_task(TASK_DELIVER_WEBHOOK, args=[job_id, time.time()], queue=WEBHOOK_QUEUE)
    calls = receiver.wait_for("/failed", 1)
    assert len(calls) == 1
    _check_signature(calls[0], owner["webhook secret"])
    body = json.loads(calls[0]["body"])
    assert body["type"] == "job.failed" and body["job"]["status"] == "failed"
    assert body["job"]["error"] == {"code": "invalid_video",
                                    "message": "the video stops after 2 frames; upload it again"}
    store.delete(job_id)


@pytest.mark.e2e
def test_a_webhook_a_dead_worker_never_queued_is_sent_by_the_next_task(redis_url, worker, receiver, owner):
    """A worker that died between marking the job succeeded and queueing its webhook: its finishing task
    comes back (acks_late), finds the job finished, and queues the webhook then; once only."""
    from common.jobs import JobStore
    from common.queue import make_celery
    from common.settings import CommonSettings

    store = JobStore.from_url(redis_url)
    job_id = "d" * 32
    store.create_for("key:" + owner["id"], job_id, "done.mp4", {"frames": 10},
                     callback_url=receiver.url("/recovered"))
    store.mark_succeeded(job_id)
    celery = make_celery(CommonSettings(redis_url=redis_url))
    for _ in range(2):  # the task coming back, twice
        celery.send_task("worker.finish_job", args=[job_id], queue="video")
    calls = receiver.wait_for("/recovered", 1)
    time.sleep(3)
    assert len(receiver.to("/recovered")) == 1
    assert json.loads(calls[0]["body"])["type"] == "job.succeeded"
    store.delete(job_id)


@pytest.mark.e2e
def test_a_job_the_reconciler_fails_gets_its_webhook(redis_url, worker, receiver, owner):
    """A job whose tasks were lost is failed by the gateway's reconciler, not by a worker step: the
    reconciler queues its webhook, and the real worker delivers it."""
    from common.jobs import JobStore
    from common.queue import make_celery
    from common.settings import CommonSettings
    from gateway.reconciler import reconcile

    store = JobStore.from_url(redis_url)
    job_id = "c" * 32
    store.create_for("key:" + owner["id"], job_id, "lost.mp4", {"frames": 10},
                     callback_url=receiver.url("/reconciled"))
    try:
        # Silent for two hours; the round looks only at jobs silent for over an hour, i.e. only this one.
        store.redis.hset(store.key(job_id), "heartbeat_at", time.time() - 7200)
        celery = make_celery(CommonSettings(redis_url=redis_url))
        found = reconcile(store, celery, grace_s=3600, max_requeues=0)
        assert job_id in found["failed"]
        calls = receiver.wait_for("/reconciled", 1)
        assert len(calls) == 1
        body = json.loads(calls[0]["body"])
        assert body["type"] == "job.failed" and body["job"]["error"]["code"] == "tasks_lost"
    finally:
        store.delete(job_id)
