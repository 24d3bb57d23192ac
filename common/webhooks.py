"""Webhooks, the parts the gateway (at submit) and the worker (at delivery) share: which callback URLs are
allowed, the owner's signing secret, the signature, and the delivery record shown on the job.

A callback may not point at loopback, link-local, private or otherwise non-public addresses (server-side
request forgery: the service would otherwise probe its own network for whoever submits a job), unless its
network is listed in `webhook_allowed_networks` (the guard is common/url_guard.py, shared with videos by
URL). The check runs at submit and again before every attempt, as DNS may answer differently later.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable

import redis

from common.url_guard import UrlRefused, check_public_url

OWNER_PREFIX = "emoji:owner:"
# Per job: the delivery attempts (a list of JSON objects) and the delivery's state.
ATTEMPTS_SUFFIX = "webhook-attempts"
STATE_FIELD = "webhook_status"
SIGNATURE_HEADER = "Emoji-Signature"


# The webhooks' name for the shared guard's refusal (common/url_guard.py).
CallbackRefused = UrlRefused


def check_callback_url(url: str, allowed_networks: str = "") -> list[str]:
    """The addresses `url` resolves to, or CallbackRefused: http(s) only, public addresses only (or in the
    allowed networks), no credentials in the URL (sign-in is the signature)."""
    return check_public_url(url, "callback_url", allowed_networks)


def owner_secret(client: redis.Redis, owner: str, ttl_s: int | None = None) -> str:
    """The owner's webhook signing secret, made on first use and kept with the owner (the same secret for
    every job of that owner, as Stripe and GitHub do per endpoint); `ttl_s`: the record goes when unused
    that long (an anonymous browser's)."""
    key = OWNER_PREFIX + owner
    pipe = client.pipeline()
    pipe.hsetnx(key, "webhook_secret", "whsec_" + secrets.token_urlsafe(32))
    pipe.hget(key, "webhook_secret")
    if ttl_s:
        pipe.expire(key, ttl_s)
    value = pipe.execute()[1]
    return value.decode() if isinstance(value, bytes) else value


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>`: the receiver recomputes it and refuses old
    timestamps, so a captured delivery cannot be replayed later."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, body: bytes, header: str, tolerance_s: float = 300.0) -> bool:
    """What a receiver does with the signature header (also used by the tests)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (ValueError, KeyError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def queue_delivery(client: redis.Redis, job_key: str, send: Callable[[float], None], ttl_s: int) -> bool:
    """Queue the webhook of a finished job, once whoever calls (the worker that finished it, a task that
    finds it finished, the gateway's reconciler that failed it): `send(ended_at)` sends the delivery task.
    False when there is nothing to send or it was sent already."""
    url, status = client.hmget(job_key, "callback_url", "status")
    if isinstance(status, bytes):
        status = status.decode()
    if not url or status not in ("succeeded", "failed"):
        return False
    queued = f"{job_key}:webhook-queued"
    if not client.set(queued, "1", nx=True, ex=ttl_s):
        return False
    client.hset(job_key, STATE_FIELD, "pending")
    try:
        send(time.time())
    except Exception:
        client.delete(queued)
        raise
    return True


def attempts_key(job_id: str) -> str:
    return f"emoji:job:{job_id}:{ATTEMPTS_SUFFIX}"


def delivery_state(client: redis.Redis, job_key: str, job_id: str) -> dict | None:
    """What the job shows about its webhook: url, status (pending, retrying, delivered, failed), attempts."""
    pipe = client.pipeline()
    pipe.hmget(job_key, "callback_url", STATE_FIELD)
    pipe.lrange(attempts_key(job_id), 0, -1)
    (url, status), attempts = pipe.execute()
    if not url:
        return None
    decode = (lambda v: v.decode()) if isinstance(url, bytes) else (lambda v: v)
    return {
        "url": decode(url),
        "status": decode(status) if status else "pending",
        "attempts": [json.loads(a) for a in attempts],
    }
