"""Owners on the real stack: API keys (made with the CLI), browser sessions and the shared local owner.

Every way of reaching a job (list, status, events, results, delete) answers another owner exactly as it
answers a job that does not exist; bad keys get 401; cross-site requests get 403; every answer carries the
security headers.
"""

from __future__ import annotations

import asyncio
import hmac

import httpx
import pytest

from common.jobs import JobStore
from gateway.keys import KeyRefused, KeyStore
from tests.conftest import start_gateway
from tests.keys_helpers import bearer, create_key, keys_cli, upload, wait_done

pytestmark = pytest.mark.e2e

RESULT_PATHS = ("", "/video", "/video?download=true", "/timeline", "/timeline.csv", "/events")
HOW_TO = "python -m gateway keys create"


@pytest.fixture(scope="module")
def alice(redis_url) -> dict:
    return create_key(redis_url, "alice")


@pytest.fixture(scope="module")
def bob(redis_url) -> dict:
    return create_key(redis_url, "bob")


@pytest.fixture(scope="module")
def alices_job(gateway, alice, astronaut_video) -> dict:
    reply = upload(gateway, astronaut_video, headers=bearer(alice["key"]))
    assert reply.status_code == 202, reply.text
    job = wait_done(gateway, reply.json()["id"], bearer(alice["key"]))
    assert job["status"] == "succeeded", job
    return job


def _session(gateway: str) -> dict[str, str]:
    """A browser's session, as the pages hand it out."""
    reply = httpx.get(gateway)
    return {"emoji_session": reply.cookies["emoji_session"]}


def _same_as_missing(reply: httpx.Response, job_id: str, missing: httpx.Response, missing_id: str) -> bool:
    return (
        reply.status_code == missing.status_code == 404
        and reply.json()["error"]["code"] == missing.json()["error"]["code"]
        and reply.json()["error"]["message"].replace(job_id, "ID")
        == missing.json()["error"]["message"].replace(missing_id, "ID")
    )


def test_the_cli_makes_lists_and_revokes_keys(redis_url):
    made = create_key(redis_url, "cli-check", "--max-active-jobs", "3")
    assert made["key"].startswith("ek_") and len(made["key"]) == 46
    assert made["webhook secret"].startswith("whsec_")
    listing = keys_cli(redis_url, "list").stdout
    line = next(row for row in listing.splitlines() if row.startswith(made["id"]))
    assert "cli-check" in line and "max_active_jobs=3" in line
    # Only the hash is stored: the key itself appears nowhere in Redis.
    client = JobStore.from_url(redis_url).redis
    stored = [(client.dump(k) or b"").decode("latin-1") for k in client.keys("emoji:apikey*")]
    assert stored and not any(made["key"] in text for text in stored)
    assert keys_cli(redis_url, "revoke", made["id"]).stdout.startswith(f"revoked {made['id']}")
    assert keys_cli(redis_url, "revoke", made["id"], check=False).returncode == 1  # already revoked


def test_another_owner_cannot_list_read_stream_download_or_delete(gateway, alices_job, alice, bob):
    job_id = alices_job["id"]
    missing_id = "0" * 32
    others = {
        "bob": bearer(bob["key"]),
        "local owner": {},
        "a browser": {"Cookie": "emoji_session=" + _session(gateway)["emoji_session"]},
    }
    for who, headers in others.items():
        listed = httpx.get(f"{gateway}/api/v1/jobs", headers=headers).json()["jobs"]
        assert job_id not in [j["id"] for j in listed], f"{who} lists alice's job"
        for path in RESULT_PATHS:
            for method in ("GET", "HEAD") if path in ("/video", "/timeline") else ("GET",):
                reply = httpx.request(method, f"{gateway}/api/v1/jobs/{job_id}{path}", headers=headers)
                missing = httpx.request(method, f"{gateway}/api/v1/jobs/{missing_id}{path}", headers=headers)
                if method == "HEAD":
                    assert reply.status_code == missing.status_code == 404, (who, path)
                else:
                    same = _same_as_missing(reply, job_id, missing, missing_id)
                    assert same, (who, method, path, reply.text)
        deleted = httpx.delete(f"{gateway}/api/v1/jobs/{job_id}", headers=headers)
        assert deleted.status_code == 404, (who, deleted.text)
    # Alice still has all of it.
    mine = bearer(alice["key"])
    assert job_id in [j["id"] for j in httpx.get(f"{gateway}/api/v1/jobs", headers=mine).json()["jobs"]]
    for path in RESULT_PATHS:
        assert httpx.get(f"{gateway}/api/v1/jobs/{job_id}{path}", headers=mine).status_code == 200, path


def test_job_page_answers_only_the_browser_that_made_the_job(gateway, redis_url, astronaut_video):
    mine = _session(gateway)
    reply = upload(gateway, astronaut_video, cookies=mine)
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["id"]
    try:
        page = httpx.get(f"{gateway}/jobs/{job_id}", cookies=mine)
        assert page.status_code == 200 and "<title>Emoji video · job</title>" in page.text
        assert httpx.get(f"{gateway}/jobs/{job_id}", cookies=_session(gateway)).status_code == 404
        assert httpx.get(f"{gateway}/jobs/{job_id}").status_code == 404  # a new browser
        assert httpx.get(f"{gateway}/api/v1/jobs/{job_id}", cookies=mine).status_code == 200
        # A session cookie with a forged signature is no session: the request is the local owner's.
        forged = {"emoji_session": mine["emoji_session"].split(".")[0] + ".AAAA"}
        assert httpx.get(f"{gateway}/api/v1/jobs/{job_id}", cookies=forged).status_code == 404
    finally:
        assert httpx.delete(f"{gateway}/api/v1/jobs/{job_id}", cookies=mine).status_code == 204


def test_the_session_cookie_is_signed_httponly_and_lax(gateway):
    reply = httpx.get(gateway)
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith("emoji_session=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Path=/" in cookie
    # A browser that has one keeps it.
    again = httpx.get(gateway, cookies={"emoji_session": reply.cookies["emoji_session"]})
    assert "set-cookie" not in again.headers


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer ek_" + "A" * 43,  # well-formed, unknown
        "Bearer not-a-key",  # wrong format
        "Bearer " + "x" * 5000,  # far too long
        "Basic dXNlcjpwYXNz",  # another scheme
        "Bearer",
    ],
)
def test_unknown_and_malformed_keys_are_401_with_how_to_get_one(gateway, authorization):
    reply = httpx.get(f"{gateway}/api/v1/jobs", headers={"Authorization": authorization})
    assert reply.status_code == 401, reply.text
    assert reply.json()["error"]["code"] == "unauthorized"
    assert HOW_TO in reply.json()["error"]["message"]
    assert reply.headers["www-authenticate"].startswith("Bearer")


def test_a_revoked_key_is_401(gateway, redis_url, astronaut_video):
    made = create_key(redis_url, "soon-revoked")
    assert httpx.get(f"{gateway}/api/v1/jobs", headers=bearer(made["key"])).status_code == 200
    keys_cli(redis_url, "revoke", "soon-revoked")
    reply = httpx.get(f"{gateway}/api/v1/jobs", headers=bearer(made["key"]))
    assert reply.status_code == 401 and "revoked" in reply.json()["error"]["message"]
    assert upload(gateway, astronaut_video, headers=bearer(made["key"])).status_code == 401


def test_every_key_check_costs_the_same_redis_lookup_and_a_constant_time_compare(redis_url, monkeypatch):
    """A malformed, an unknown and a revoked key take the same path (one hash, one HGETALL, one
    compare_digest), so the answer's timing says nothing about which it was."""
    client = JobStore.from_url(redis_url).redis
    keys = KeyStore(client)
    revoked, record = keys.create("timing-revoked")
    keys.revoke(record.id)
    calls: list[str] = []
    real_hgetall, real_compare = client.hgetall, hmac.compare_digest
    monkeypatch.setattr(client, "hgetall", lambda name: calls.append("hgetall") or real_hgetall(name))
    monkeypatch.setattr(
        "gateway.keys.hmac.compare_digest", lambda a, b: calls.append("compare") or real_compare(a, b)
    )
    paths = {}
    for label, token in {"malformed": "nope", "unknown": "ek_" + "B" * 43, "revoked": revoked}.items():
        calls.clear()
        with pytest.raises(KeyRefused):
            keys.authenticate(token)
        paths[label] = list(calls)
    assert paths["malformed"] == paths["unknown"] == paths["revoked"] == ["hgetall", "compare"]


def test_require_api_key_refuses_keyless_calls_but_not_signed_in_browsers(stack_env, service_logs, alice):
    env = {**stack_env, "EMOJI_REQUIRE_API_KEY": "true"}
    service, url = start_gateway(env, service_logs, "gateway-require-key")
    try:
        for method, path in (("GET", "/api/v1/jobs"), ("POST", "/api/v1/jobs"), ("GET", "/api/v1/me")):
            reply = httpx.request(method, f"{url}{path}")
            assert reply.status_code == 401, (path, reply.text)
            assert HOW_TO in reply.json()["error"]["message"]
        assert httpx.get(f"{url}/api/v1/jobs", headers=bearer(alice["key"])).status_code == 200
        assert "emoji_session" not in httpx.get(url).cookies  # no anonymous session where keys are required
        signed_in = httpx.post(f"{url}/api/v1/session", json={"key": alice["key"]}).cookies
        me = httpx.get(f"{url}/api/v1/me", cookies=dict(signed_in)).json()
        assert me["kind"] == "key" and me["owner"] == f"key:{alice['id']}"
        # The live socket checks the same way.
        import websockets

        async def live(headers):
            ws_url = url.replace("http", "ws") + "/api/v1/live"
            async with websockets.connect(ws_url, additional_headers=headers) as ws:
                first = await asyncio.wait_for(ws.recv(), 10)
                try:
                    await asyncio.wait_for(ws.recv(), 3)
                except websockets.ConnectionClosed as closed:
                    return first, closed.rcvd.code if closed.rcvd else None
                except TimeoutError:
                    pass  # still open, waiting for frames
                return first, None

        first, code = asyncio.run(live({}))
        assert '"unauthorized"' in first and code == 1008
        first, _ = asyncio.run(live(bearer(alice["key"])))
        assert '"hello"' in first
    finally:
        service.stop()


def test_cross_site_requests_are_refused(gateway, alices_job, alice, astronaut_video, storage_dir):
    before = {p.name for p in storage_dir.iterdir()}
    evil = {"Origin": "https://evil.example"}
    reply = upload(gateway, astronaut_video, headers={**evil, **bearer(alice["key"])})
    assert reply.status_code == 403 and reply.json()["error"]["code"] == "cross_site_request"
    assert {p.name for p in storage_dir.iterdir()} == before
    job_url = f"{gateway}/api/v1/jobs/{alices_job['id']}"
    assert httpx.delete(job_url, headers={**evil, **bearer(alice["key"])}).status_code == 403
    assert httpx.get(job_url, headers=bearer(alice["key"])).status_code == 200
    # The browser's own origin passes (the request then fails on its own merits: no form).
    same = httpx.post(f"{gateway}/api/v1/jobs", headers={"Origin": gateway, **bearer(alice["key"])})
    assert same.status_code == 422
    import websockets

    async def cross_site_socket():
        ws_url = gateway.replace("http", "ws") + "/api/v1/live"
        async with websockets.connect(ws_url, origin="https://evil.example"):
            pass

    with pytest.raises(websockets.InvalidStatus) as refused:
        asyncio.run(cross_site_socket())
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("path", ["/", "/live", "/docs", "/api/v1/jobs", "/static/upload.js", "/nowhere"])
def test_every_answer_has_the_security_headers(gateway, path):
    reply = httpx.get(f"{gateway}{path}")
    csp = reply.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["x-frame-options"] == "DENY"
    assert reply.headers["referrer-policy"] == "same-origin"


def test_openapi_shows_the_security_schemes(gateway):
    schema = httpx.get(f"{gateway}/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["apiKey"]["type"] == "http" and schemes["apiKey"]["scheme"] == "bearer"
    assert schemes["browserSession"] | {"description": ""} == {
        "type": "apiKey", "in": "cookie", "name": "emoji_session", "description": ""
    }
    guarded = (("/api/v1/jobs", "post"), ("/api/v1/jobs/{job_id}", "delete"), ("/api/v1/me", "get"))
    for path, method in guarded:
        names = {name for option in schema["paths"][path][method]["security"] for name in option}
        assert names == {"apiKey", "browserSession"}, path
    upload_form = schema["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert "callback_url" in upload_form["schema"]["properties"]
    params = {p["name"] for p in schema["paths"]["/api/v1/jobs"]["post"]["parameters"]}
    assert "idempotency-key" in params
