"""API keys: made, listed and revoked with `python -m gateway keys`; only their SHA-256 is stored.

A key is 256 random bits, so a plain SHA-256 is enough to store it (no salt or slow hash needed: there is
nothing to guess). A presented key is looked up by its hash; a malformed one is hashed and looked up just
the same, so the answer takes as long whether the key was well-formed, unknown or revoked.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import redis

KEY_PREFIX = "emoji:apikey:"
# key id -> hash, for listing and revoking by id or name.
KEY_INDEX = "emoji:apikeys"
TOKEN_PREFIX = "ek_"
TOKEN_RE = re.compile(r"ek_[A-Za-z0-9_-]{43}")
HOW_TO_GET_A_KEY = (
    "send an API key as 'Authorization: Bearer <key>'; the operator makes one with "
    "`python -m gateway keys create NAME` (docs/api.md, 'Keys, owners and limits')"
)


@dataclass(frozen=True)
class Limits:
    """An owner's quotas; 0 means no limit."""

    max_active_jobs: int = 0
    uploads_per_minute: int = 0
    max_stored_bytes: int = 0
    max_live_viewers: int = 0


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    created_at: str
    revoked_at: str | None
    # Only the limits given at creation; the others come from the gateway's key_* settings.
    limits: dict[str, int]

    @property
    def owner(self) -> str:
        return f"key:{self.id}"


class KeyRefused(Exception):
    """The presented key is not a valid one; the message says why (the same words for unknown and
    malformed, so they cannot be told apart)."""


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", errors="surrogateescape")).hexdigest()


class KeyStore:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client  # decode_responses=True

    def create(self, name: str, limits: dict[str, int] | None = None) -> tuple[str, ApiKey]:
        """A new key: (the token, shown once, and its record)."""
        if not name or len(name) > 100:
            raise ValueError("a key needs a name of 1 to 100 characters")
        unknown = set(limits or {}) - set(Limits.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown limits: {sorted(unknown)}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = hash_key(token)
        record = ApiKey(
            id=secrets.token_hex(6), name=name, created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            revoked_at=None, limits=dict(limits or {}),
        )
        pipe = self.redis.pipeline()
        pipe.hset(KEY_PREFIX + digest, mapping={
            "hash": digest, "id": record.id, "name": name, "created_at": record.created_at,
            "limits": json.dumps(record.limits),
        })
        pipe.hset(KEY_INDEX, record.id, digest)
        pipe.execute()
        return token, record

    @staticmethod
    def _record(raw: dict) -> ApiKey:
        return ApiKey(
            id=raw["id"], name=raw["name"], created_at=raw["created_at"], revoked_at=raw.get("revoked_at"),
            limits=json.loads(raw.get("limits") or "{}"),
        )

    def authenticate(self, token: str) -> ApiKey:
        """The key's record, or KeyRefused. One hash and one Redis lookup whatever the token looks like;
        the stored hash is compared in constant time."""
        digest = hash_key(token[:200])
        raw = self.redis.hgetall(KEY_PREFIX + digest)
        same = hmac.compare_digest(raw.get("hash", ""), digest)
        if not (same and TOKEN_RE.fullmatch(token)):
            raise KeyRefused(f"the API key is not valid; {HOW_TO_GET_A_KEY}")
        record = self._record(raw)
        if record.revoked_at:
            raise KeyRefused(
                f"this API key was revoked on {record.revoked_at}; ask the operator for a new one"
            )
        return record

    def by_id(self, key_id: str) -> ApiKey:
        """The record of the key with this id (a signed-in browser's), or KeyRefused if gone or revoked."""
        digest = self.redis.hget(KEY_INDEX, key_id)
        raw = self.redis.hgetall(KEY_PREFIX + digest) if digest else {}
        if not raw:
            raise KeyRefused("the API key this browser signed in with no longer exists")
        record = self._record(raw)
        if record.revoked_at:
            raise KeyRefused(f"the API key this browser signed in with was revoked on {record.revoked_at}")
        return record

    def list(self) -> list[ApiKey]:
        digests = self.redis.hgetall(KEY_INDEX)
        pipe = self.redis.pipeline()
        for digest in digests.values():
            pipe.hgetall(KEY_PREFIX + digest)
        records = [self._record(raw) for raw in pipe.execute() if raw]
        return sorted(records, key=lambda r: r.created_at)

    def revoke(self, id_or_name: str) -> list[ApiKey]:
        """Revoke the key with this id, or every live key with this name; the keys revoked."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        hits = [k for k in self.list() if not k.revoked_at and id_or_name in (k.id, k.name)]
        digests = self.redis.hgetall(KEY_INDEX)
        for key in hits:
            self.redis.hset(KEY_PREFIX + digests[key.id], "revoked_at", now)
        return hits


def key_limits(record: ApiKey, defaults: Limits) -> Limits:
    return Limits(**{**asdict(defaults), **record.limits})
