"""Quotas and Idempotency-Key on two gateway processes sharing one real Redis (no worker: jobs stay queued,
which is what the running-or-queued limit counts).

Every limit: the request over it gets 429 with Retry-After and a message naming the limit, and the request
after the window (or after a job is gone) succeeds; concurrent requests spread over both gateways never
get more than the limit between them.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from common.jobs import JobStore
from gateway.keys import KeyStore
from tests.conftest import start_gateway, start_redis
from tests.keys_helpers import bearer, upload

pytestmark = pytest.mark.e2e

WINDOW_S = 3


@pytest.fixture(scope="module")
def quota_redis(service_logs) -> str:
    redis, url = start_redis(service_logs, "redis-quotas")
    yield url
    redis.stop()


@pytest.fixture(scope="module")
def quota_storage(tmp_path_factory):
    return tmp_path_factory.mktemp("quota-storage")


@pytest.fixture(scope="module")
def gateways(quota_redis, quota_storage, service_logs) -> list[str]:
    """Two gateway processes on the same Redis and storage."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "EMOJI_REDIS_URL": quota_redis,
        "EMOJI_STORAGE_DIR": str(quota_storage),
        "EMOJI_UPLOAD_RATE_WINDOW_S": str(WINDOW_S),
        "EMOJI_ANON_MAX_ACTIVE_JOBS": "1",
    }
    services = [start_gateway(env, service_logs, f"gateway-quota-{i}") for i in range(2)]
    yield [url for _, url in services]
    for service, _ in services:
        service.stop()


def new_key(redis_url: str, name: str, **limits: int) -> dict:
    token, _ = KeyStore(JobStore.from_url(redis_url).redis).create(name, limits)
    return bearer(token)


def _refused(reply: httpx.Response, code: str) -> int:
    assert reply.status_code == 429, reply.text
    assert reply.json()["error"]["code"] == code
    retry_after = int(reply.headers["retry-after"])
    assert retry_after >= 1
    return retry_after


def _parallel(calls) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def test_uploads_per_minute_across_two_gateways(gateways, quota_redis, astronaut_video):
    key = new_key(quota_redis, "uploads", uploads_per_minute=3)
    # Spread over both processes: they count together.
    for i in range(3):
        assert upload(gateways[i % 2], astronaut_video, headers=key).status_code == 202
    reply = upload(gateways[1], astronaut_video, headers=key)
    retry_after = _refused(reply, "too_many_uploads")
    assert "3 uploads" in reply.json()["error"]["message"]
    assert retry_after <= WINDOW_S
    time.sleep(retry_after + 0.2)
    assert upload(gateways[0], astronaut_video, headers=key).status_code == 202
    # After a whole window, 8 at once over both gateways: exactly 3 get through.
    time.sleep(WINDOW_S + 0.2)
    replies = _parallel([lambda i=i: upload(gateways[i % 2], astronaut_video, headers=key) for i in range(8)])
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [202] * 3 + [429] * 5, statuses


def test_jobs_queued_or_running_at_once(gateways, quota_redis, quota_storage, astronaut_video):
    key = new_key(quota_redis, "active", max_active_jobs=2)
    first = upload(gateways[0], astronaut_video, headers=key).json()["id"]
    second = upload(gateways[1], astronaut_video, headers=key).json()["id"]
    folders = {p.name for p in quota_storage.iterdir()}
    reply = upload(gateways[0], astronaut_video, headers=key)
    _refused(reply, "too_many_active_jobs")
    assert "limit is 2" in reply.json()["error"]["message"]
    assert {p.name for p in quota_storage.iterdir()} == folders, "the refused upload left files"
    # A job that ends frees its slot (here: it failed), and so does a deleted one.
    JobStore.from_url(quota_redis).mark_failed(first, "test", "ended")
    third = upload(gateways[1], astronaut_video, headers=key)
    assert third.status_code == 202, third.text
    _refused(upload(gateways[0], astronaut_video, headers=key), "too_many_active_jobs")
    assert httpx.delete(f"{gateways[0]}/api/v1/jobs/{second}", headers=key).status_code == 204
    assert upload(gateways[0], astronaut_video, headers=key).status_code == 202


def test_active_jobs_limit_holds_under_concurrency(gateways, quota_redis, astronaut_video):
    key = new_key(quota_redis, "active-race", max_active_jobs=2)
    replies = _parallel([lambda i=i: upload(gateways[i % 2], astronaut_video, headers=key) for i in range(6)])
    assert sorted(r.status_code for r in replies) == [202, 202, 429, 429, 429, 429]
    me = httpx.get(f"{gateways[0]}/api/v1/me", headers=key).json()
    assert me["usage"]["active_jobs"] == 2 and me["limits"]["max_active_jobs"] == 2


def test_bytes_stored(gateways, quota_redis, quota_storage, astronaut_video):
    size = astronaut_video.stat().st_size
    key = new_key(quota_redis, "stored", max_stored_bytes=int(size * 1.5))
    first = upload(gateways[0], astronaut_video, headers=key)
    assert first.status_code == 202
    folders = {p.name for p in quota_storage.iterdir()}
    reply = upload(gateways[1], astronaut_video, headers=key)
    _refused(reply, "storage_quota_exceeded")
    assert "delete finished jobs" in reply.json()["error"]["message"]
    assert {p.name for p in quota_storage.iterdir()} == folders
    # Without Content-Length (chunked) the upload is stopped while streaming, at what is left.
    boundary = "quota-boundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n'
            "Content-Type: video/mp4\r\n\r\n").encode()
    body = head + astronaut_video.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    chunked = httpx.post(
        f"{gateways[1]}/api/v1/jobs", content=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
        headers={**key, "Content-Type": f"multipart/form-data; boundary={boundary}"}, timeout=60,
    )
    _refused(chunked, "storage_quota_exceeded")
    assert {p.name for p in quota_storage.iterdir()} == folders
    me = httpx.get(f"{gateways[1]}/api/v1/me", headers=key).json()
    assert me["usage"]["stored_bytes"] == size
    assert httpx.delete(f"{gateways[1]}/api/v1/jobs/{first.json()['id']}", headers=key).status_code == 204
    assert upload(gateways[1], astronaut_video, headers=key).status_code == 202


def test_bytes_stored_hold_under_concurrency(gateways, quota_redis, astronaut_video):
    size = astronaut_video.stat().st_size
    key = new_key(quota_redis, "stored-race", max_stored_bytes=int(size * 2.5))
    replies = _parallel([lambda i=i: upload(gateways[i % 2], astronaut_video, headers=key) for i in range(5)])
    assert sorted(r.status_code for r in replies) == [202, 202, 429, 429, 429]


def test_live_viewers(gateways, quota_redis):
    import websockets

    key = new_key(quota_redis, "live", max_live_viewers=1)
    urls = [g.replace("http", "ws") + "/api/v1/live" for g in gateways]

    async def scenario():
        first = await websockets.connect(urls[0], additional_headers=key)
        assert "hello" in json.loads(await first.recv())
        async with websockets.connect(urls[1], additional_headers=key) as second:
            answer = json.loads(await second.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(second.recv(), 5)
        assert answer["error"]["code"] == "too_many_live_viewers" and answer["retry_after_s"] >= 1
        assert closed.value.rcvd.code == 1013
        await first.close()
        await asyncio.sleep(0.3)
        async with websockets.connect(urls[1], additional_headers=key) as third:
            assert "hello" in json.loads(await third.recv())

    asyncio.run(scenario())


def test_anonymous_browsers_get_the_anon_defaults(gateways, astronaut_video):
    session = httpx.get(gateways[0]).cookies["emoji_session"]
    cookies = {"emoji_session": session}
    me = httpx.get(f"{gateways[1]}/api/v1/me", cookies=cookies).json()
    assert me["kind"] == "anon" and me["limits"]["max_active_jobs"] == 1
    assert upload(gateways[0], astronaut_video, cookies=cookies).status_code == 202
    _refused(upload(gateways[1], astronaut_video, cookies=cookies), "too_many_active_jobs")
    # Another browser has its own count.
    other = {"emoji_session": httpx.get(gateways[1]).cookies["emoji_session"]}
    assert upload(gateways[1], astronaut_video, cookies=other).status_code == 202


# --- Idempotency-Key ---------------------------------------------------------------------------------


def _jobs(gateway: str, key: dict) -> list[str]:
    return [j["id"] for j in httpx.get(f"{gateway}/api/v1/jobs", headers=key).json()["jobs"]]


def test_the_same_idempotency_key_twice_makes_one_job(gateways, quota_redis, quota_storage, astronaut_video):
    key = new_key(quota_redis, "idem")
    headers = {**key, "Idempotency-Key": "order-17"}
    first = upload(gateways[0], astronaut_video, headers=headers)
    folders = {p.name for p in quota_storage.iterdir()}
    again = upload(gateways[1], astronaut_video, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert _jobs(gateways[0], key) == [first.json()["id"]]
    assert {p.name for p in quota_storage.iterdir()} == folders, "the repeat's upload was kept"
    # Another owner's same key is another request altogether.
    other_owner = {**new_key(quota_redis, "idem-2"), "Idempotency-Key": "order-17"}
    other = upload(gateways[0], astronaut_video, headers=other_owner)
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


def test_the_same_idempotency_key_with_another_file_is_422(gateways, quota_redis, astronaut_video, tmp_path):
    key = new_key(quota_redis, "idem-other-file")
    headers = {**key, "Idempotency-Key": "upload-a"}
    assert upload(gateways[0], astronaut_video, headers=headers).status_code == 202
    changed = tmp_path / "changed.mp4"
    changed.write_bytes(astronaut_video.read_bytes() + b"\0")
    reply = upload(gateways[1], changed, headers=headers)
    assert reply.status_code == 422 and reply.json()["error"]["code"] == "idempotency_key_reused"
    assert len(_jobs(gateways[0], key)) == 1


def test_concurrent_requests_with_one_idempotency_key_make_one_job(gateways, quota_redis, astronaut_video):
    key = new_key(quota_redis, "idem-race")
    headers = {**key, "Idempotency-Key": "7c1d3b0e-race"}
    calls = [lambda i=i: upload(gateways[i % 2], astronaut_video, headers=headers) for i in range(6)]
    replies = _parallel(calls)
    assert [r.status_code for r in replies] == [202] * 6, [r.text for r in replies]
    assert len({r.json()["id"] for r in replies}) == 1
    assert _jobs(gateways[0], key) == [replies[0].json()["id"]]


def test_a_refused_first_request_frees_its_idempotency_key(gateways, quota_redis, astronaut_video, tmp_path):
    key = new_key(quota_redis, "idem-refused")
    headers = {**key, "Idempotency-Key": "retry-me"}
    junk = tmp_path / "notes.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    assert upload(gateways[0], junk, headers=headers).status_code == 415
    assert upload(gateways[1], astronaut_video, headers=headers).status_code == 202
    bad = upload(gateways[0], astronaut_video, headers={**key, "Idempotency-Key": "has space"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_idempotency_key"
