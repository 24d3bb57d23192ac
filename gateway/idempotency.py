"""`Idempotency-Key` on POST /api/v1/jobs: the same key from the same owner within `idempotency_ttl_s`
answers with the job the first request made; the same key with another file is refused.

The first request claims the key (SET NX) before it reads the upload, so of two concurrent requests only
one makes a job; the other reads its file (to compare, never kept), waits for the first to finish and
answers with its job. The claim is dropped when the first request is refused, so the client can retry.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass

import redis

from gateway.errors import BadRequestField, RequestInProgress

PREFIX = "emoji:idempotency:"
KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")

# Delete the claim only if it is still ours (a slow refused request must not drop a newer claim).
RELEASE = """
local value = redis.call('GET', KEYS[1])
if value and cjson.decode(value)['job_id'] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass
class Claim:
    job_id: str
    state: str  # "pending" or "done"
    sha256: str | None = None


def checked_key(header: str) -> str:
    if not KEY_RE.fullmatch(header):
        raise BadRequestField(
            "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces (a UUID is ideal)",
            code="invalid_idempotency_key",
        )
    return header


class Idempotency:
    def __init__(self, client: redis.Redis, ttl_s: int, wait_s: float) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self._release = client.register_script(RELEASE)

    @staticmethod
    def _name(owner: str, key: str) -> str:
        return PREFIX + hashlib.sha256(f"{owner}\0{key}".encode()).hexdigest()

    def claim(self, owner: str, key: str, job_id: str) -> Claim | None:
        """None when this request is the first with the key (it now holds it), else the existing claim."""
        name = self._name(owner, key)
        value = json.dumps({"job_id": job_id, "state": "pending"})
        if self.redis.set(name, value, nx=True, ex=self.ttl_s):
            return None
        raw = self.redis.get(name)
        if raw is None:  # released between the two calls: try once more
            return self.claim(owner, key, job_id)
        return Claim(**json.loads(raw))

    def complete(self, owner: str, key: str, job_id: str, sha256: str) -> None:
        value = json.dumps({"job_id": job_id, "state": "done", "sha256": sha256})
        self.redis.set(self._name(owner, key), value, ex=self.ttl_s)

    def release(self, owner: str, key: str, job_id: str) -> None:
        self._release(keys=[self._name(owner, key)], args=[job_id])

    def wait_done(self, owner: str, key: str) -> Claim:
        """The finished first request's claim; RequestInProgress if it is still running after `wait_s`."""
        deadline = time.monotonic() + self.wait_s
        while True:
            raw = self.redis.get(self._name(owner, key))
            if raw is None:
                raise RequestInProgress(
                    "the first request with this Idempotency-Key was refused or broke off; "
                    "send this one again"
                )
            claim = Claim(**json.loads(raw))
            if claim.state == "done" or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        if claim.state != "done":
            raise RequestInProgress(
                "a request with this Idempotency-Key is still being uploaded or checked; "
                "send this one again in a few seconds"
            )
        return claim
