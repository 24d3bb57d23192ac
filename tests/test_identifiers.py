"""Ids, keys and Idempotency-Keys are checked whole: Python's `$` also matches before a trailing newline,
so `^...$` let "id\\n" through as if it were "id"."""

from __future__ import annotations

import pytest

from common.errors import JobNotFound, VideoError
from gateway.deps import checked_job_id
from gateway.errors import BadRequestField
from gateway.idempotency import checked_key

JOB_ID = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\t"])
def test_a_job_id_with_anything_after_it_is_no_job_id(suffix):
    assert checked_job_id(JOB_ID) == JOB_ID
    with pytest.raises(JobNotFound):
        checked_job_id(JOB_ID + suffix)


def test_an_idempotency_key_with_a_trailing_newline_is_refused():
    assert checked_key("order-42") == "order-42"
    with pytest.raises(BadRequestField):
        checked_key("order-42\n")


def test_an_api_key_with_a_trailing_newline_does_not_pass(redis_url):
    from common.jobs import JobStore
    from gateway.keys import KEY_PREFIX, KeyRefused, KeyStore, hash_key

    keys = KeyStore(JobStore.from_url(redis_url).redis)
    token, record = keys.create("newline-check")
    assert keys.authenticate(token).id == record.id
    # A record stored under the hash of the token with its newline: only the format check stands between.
    keys.redis.hset(KEY_PREFIX + hash_key(token + "\n"), mapping={
        "hash": hash_key(token + "\n"), "id": record.id, "name": "newline-check",
        "created_at": record.created_at, "limits": "{}",
    })
    with pytest.raises(KeyRefused):
        keys.authenticate(token + "\n")


def test_a_live_client_id_with_a_trailing_newline_is_refused():
    from worker.live import process_frame

    with pytest.raises(VideoError, match="client_id"):
        process_frame("viewer-1\n", "", client=None, detector=None, classifier=None, settings=None)
