"""Browser sessions: none handed out where keys are required, a sign-in that turns a key into one, new
anonymous owners limited per address, sessions and owner records that expire, a secret never read empty."""

from __future__ import annotations

import multiprocessing
import threading
import time

import httpx
import pytest

from gateway.auth import load_session_secret
from gateway.settings import GatewaySettings
from tests.conftest import start_gateway
from tests.keys_helpers import bearer, create_key, keys_cli, upload

HOW_TO = "python -m gateway keys create"


@pytest.fixture(scope="module")
def carol(redis_url) -> dict:
    return create_key(redis_url, "carol")


@pytest.fixture(scope="module")
def keys_required(stack_env, service_logs):
    service, url = start_gateway({**stack_env, "EMOJI_REQUIRE_API_KEY": "true"}, service_logs, "gateway-keys")
    yield url
    service.stop()


# --- keys required: no anonymous owner, a sign-in instead ------------------------------------------------


@pytest.mark.e2e
def test_where_keys_are_required_pages_hand_out_no_session_that_could_upload(keys_required, astronaut_video):
    page = httpx.get(f"{keys_required}/", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/sign-in?next=%2F"
    assert "set-cookie" not in page.headers
    refused = upload(keys_required, astronaut_video, cookies=dict(page.cookies))
    assert refused.status_code == 401 and HOW_TO in refused.json()["error"]["message"]
    for path in ("/live", "/jobs/" + "0" * 32):
        assert httpx.get(f"{keys_required}{path}").status_code == 303
    sign_in = httpx.get(f"{keys_required}/sign-in")
    assert sign_in.status_code == 200 and 'id="key-input"' in sign_in.text


@pytest.mark.e2e
def test_an_anonymous_session_from_a_gateway_without_keys_does_not_pass_one_with_keys(
    gateway, keys_required, astronaut_video
):
    # Both gateways sign with the same secret (the one file), as two deployments of one service would.
    cookies = dict(httpx.get(f"{gateway}/").cookies)
    assert httpx.get(f"{gateway}/api/v1/me", cookies=cookies).json()["kind"] == "anon"
    assert httpx.get(f"{keys_required}/api/v1/me", cookies=cookies).status_code == 401
    assert upload(keys_required, astronaut_video, cookies=cookies).status_code == 401


@pytest.mark.e2e
def test_signing_in_with_a_key_gives_its_session_until_it_is_revoked(keys_required, carol, redis_url):
    wrong = httpx.post(f"{keys_required}/api/v1/session", json={"key": "ek_" + "x" * 43})
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    made = httpx.post(f"{keys_required}/api/v1/session", json={"key": carol["key"]})
    assert made.status_code == 200 and made.json()["owner"] == f"key:{carol['id']}"
    cookie = made.cookies["emoji_session"]
    assert carol["key"] not in cookie  # the cookie names the key's id, never the key
    me = httpx.get(f"{keys_required}/api/v1/me", cookies={"emoji_session": cookie}).json()
    assert me["kind"] == "key" and me["owner"] == f"key:{carol['id']}"
    with_key = httpx.get(f"{keys_required}/api/v1/jobs", headers=bearer(carol["key"])).json()
    with_cookie = httpx.get(f"{keys_required}/api/v1/jobs", cookies={"emoji_session": cookie}).json()
    assert with_cookie == with_key
    keys_cli(redis_url, "revoke", carol["id"])
    gone = httpx.get(f"{keys_required}/api/v1/me", cookies={"emoji_session": cookie})
    assert gone.status_code == 401 and "revoked" in gone.json()["error"]["message"]
    assert httpx.get(f"{keys_required}/", cookies={"emoji_session": cookie}).status_code == 303


# --- anonymous owners allowed: limited, and they expire -------------------------------------------------


@pytest.mark.e2e
def test_new_anonymous_sessions_are_limited_per_address(stack_env, service_logs):
    env = {**stack_env, "EMOJI_ANON_SESSIONS_PER_ADDRESS": "3", "EMOJI_ANON_SESSION_WINDOW_S": "600"}
    service, url = start_gateway(env, service_logs, "gateway-anon-limit")
    try:
        kept = [httpx.get(f"{url}/") for _ in range(3)]
        assert all(r.status_code == 200 and "emoji_session" in r.cookies for r in kept)
        fourth = httpx.get(f"{url}/")
        assert fourth.status_code == 429 and "set-cookie" not in fourth.headers
        assert fourth.json()["error"]["code"] == "too_many_sessions"
        assert 0 < int(fourth.headers["retry-after"]) <= 600
        # A browser that keeps its cookie is not a new owner: it goes on as before.
        again = httpx.get(f"{url}/live", cookies={"emoji_session": kept[0].cookies["emoji_session"]})
        assert again.status_code == 200
    finally:
        service.stop()


@pytest.mark.e2e
def test_a_session_is_worth_nothing_after_its_max_age_whatever_the_browser_keeps(stack_env, service_logs):
    service, url = start_gateway({**stack_env, "EMOJI_SESSION_MAX_AGE_S": "2"}, service_logs, "gateway-short")
    try:
        cookie = {"emoji_session": httpx.get(f"{url}/").cookies["emoji_session"]}
        assert httpx.get(f"{url}/api/v1/me", cookies=cookie).json()["kind"] == "anon"
        time.sleep(3.5)
        assert httpx.get(f"{url}/api/v1/me", cookies=cookie).json()["kind"] == "local"
    finally:
        service.stop()


def test_owner_records_expire(redis_url):
    from common.jobs import OWNER_INDEX_PREFIX, JobStore
    from gateway.auth import anon_owner
    from gateway.quotas import Quotas, _key

    store = JobStore.from_url(redis_url, ttl_s=3600)
    settings = GatewaySettings(redis_url=redis_url)
    owner = anon_owner("x" * 24, settings)
    quotas = Quotas(store.redis, redis_url, 60, 60.0)
    quotas.reserve_active(owner, "a" * 32)
    quotas.add_stored(owner, "a" * 32, 1000)
    store.create_for(owner.id, "b" * 32, "clip.mp4", {"frames": 1})
    for key in (_key("active", owner), _key("stored", owner), OWNER_INDEX_PREFIX + owner.id):
        assert store.redis.ttl(key) > 0, key


@pytest.mark.e2e
def test_an_anonymous_owners_webhook_secret_expires_a_keys_does_not(gateway, redis_url):
    from common.jobs import JobStore
    from common.webhooks import OWNER_PREFIX

    client = JobStore.from_url(redis_url).redis
    anon = httpx.get(f"{gateway}/api/v1/me", cookies=dict(httpx.get(f"{gateway}/").cookies)).json()
    keyed = httpx.get(f"{gateway}/api/v1/me", headers=bearer(create_key(redis_url, "erin")["key"])).json()
    assert anon["kind"] == "anon" and anon["webhook_secret"].startswith("whsec_")
    assert client.ttl(OWNER_PREFIX + anon["owner"]) > 0
    assert client.ttl(OWNER_PREFIX + keyed["owner"]) == -1


# --- the signing secret ----------------------------------------------------------------------------------


def test_a_secret_file_caught_half_made_is_waited_for_never_used_empty(tmp_path):
    path = tmp_path / "session_secret"
    path.touch(mode=0o600)  # what another gateway's first step leaves until it writes
    threading.Timer(0.5, lambda: path.write_text("the-secret\n")).start()
    settings = GatewaySettings(session_secret_file=path)
    assert load_session_secret(settings) == b"the-secret"


def _load(path: str, out) -> None:
    out.put(load_session_secret(GatewaySettings(session_secret_file=path)))


def test_gateways_starting_together_all_get_the_one_secret(tmp_path):
    path = str(tmp_path / "session_secret")
    out = multiprocessing.get_context("fork").Queue()
    starts = [multiprocessing.get_context("fork").Process(target=_load, args=(path, out)) for _ in range(8)]
    for process in starts:
        process.start()
    secrets = {out.get(timeout=30) for _ in starts}
    for process in starts:
        process.join(10)
    assert len(secrets) == 1 and len(secrets.pop()) > 40
    assert [p.name for p in tmp_path.iterdir()] == ["session_secret"]  # no file left aside
