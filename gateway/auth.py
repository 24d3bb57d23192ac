"""Who is asking: an API key's owner, a browser's session, or the one shared local owner.

- `Authorization: Bearer <key>`: the key's owner (`key:<id>`), with the key's limits; a bad key is 401.
- A signed, timestamped, HttpOnly, SameSite=Lax session cookie, of one of two kinds:
  - signed in with a key (the sign-in page, `POST /api/v1/session`): the key's owner, as long as the key
    is not revoked;
  - anonymous, handed to a browser by the pages where keys are not required: that browser's own owner
    (`anon:<session id>`), so a browser sees only its own jobs. Where `require_api_key` is on, none is
    made and none is accepted.
  Either is worth nothing after `session_max_age_s`, whatever the browser keeps.
- Neither: the shared local owner (`local`), which keeps `make run` and curl working without a key, unless
  `require_api_key` is on (production), which answers 401 with how to get a key.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from fastapi import Request, Security
from fastapi.security import APIKeyCookie, HTTPBearer
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import HTTPConnection

from common.jobs import LEGACY_OWNER
from gateway.errors import Unauthorized
from gateway.keys import HOW_TO_GET_A_KEY, ApiKey, KeyRefused, KeyStore, Limits, key_limits
from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

SESSION_COOKIE = "emoji_session"
SESSION_ID_CHARS = 24
SIGN_IN_PAGE = "/sign-in"

# Only for the OpenAPI schema (/docs shows an "Authorize" button); the checks are resolve_owner's.
bearer_scheme = HTTPBearer(
    auto_error=False, scheme_name="apiKey",
    description="An API key: `python -m gateway keys create NAME` prints one. Without it, API calls act as "
    "the shared local owner, or get 401 where EMOJI_REQUIRE_API_KEY=true.",
)
cookie_scheme = APIKeyCookie(
    name=SESSION_COOKIE, auto_error=False, scheme_name="browserSession",
    description="The pages' session (signed, HttpOnly, SameSite=Lax): set by signing in with a key, or, "
    "where keys are not required, by visiting a page (an anonymous owner per browser).",
)


@dataclass(frozen=True)
class Owner:
    id: str
    kind: str  # "key", "anon" or "local"
    name: str
    limits: Limits


def load_session_secret(settings: GatewaySettings, wait_s: float = 5.0) -> bytes:
    """The cookie signing secret: the setting, or one made once and kept in a file (mode 0600).

    The file appears whole or not at all (written aside, then hard-linked into place, which fails if it
    exists): a gateway starting beside another never reads it half-written, so never signs with ''."""
    if settings.session_secret:
        return settings.session_secret.encode()
    path = Path(settings.session_secret_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(aside, path)
            logger.info("made a session secret in %s", path)
        except FileExistsError:
            pass  # another gateway was first: use its secret
        finally:
            aside.unlink()
    deadline = time.monotonic() + wait_s
    while True:
        # An empty file is not ours (made by hand, or by an older gateway that died while writing it).
        secret = path.read_text().strip()
        if secret:
            return secret.encode()
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"the session secret file {path} is empty; delete it (a new one is made at the next start) "
                "or set EMOJI_SESSION_SECRET"
            )
        time.sleep(0.1)


class Sessions:
    """Session cookies signed with the secret and stamped with their making time (itsdangerous); the cookie
    says whom it stands for: `{"anon": session id}` or `{"key": key id}`."""

    def __init__(self, secret: bytes, max_age_s: int) -> None:
        self.serializer = URLSafeTimedSerializer(secret, salt="emoji-session")
        self.max_age_s = max_age_s

    def new_anonymous(self) -> tuple[str, str]:
        """(session id, cookie value) of a new anonymous browser."""
        session_id = secrets.token_urlsafe(18)
        return session_id, self.serializer.dumps({"anon": session_id})

    def for_key(self, key_id: str) -> str:
        """The cookie value of a browser signed in with the key `key_id`."""
        return self.serializer.dumps({"key": key_id})

    def verify(self, cookie: str | None) -> dict[str, str] | None:
        """What a validly signed cookie younger than max_age_s stands for, else None."""
        if not cookie or len(cookie) > 300:
            return None
        try:
            session = self.serializer.loads(cookie, max_age=self.max_age_s)
        except BadSignature:  # SignatureExpired is one too
            return None
        if not isinstance(session, dict) or len(session) != 1:
            return None
        (kind, value), = session.items()
        if kind not in ("anon", "key") or not isinstance(value, str) or not value:
            return None
        if kind == "anon" and len(value) != SESSION_ID_CHARS:
            return None
        return session


def limits_for(kind: str, settings: GatewaySettings) -> Limits:
    return Limits(
        max_active_jobs=getattr(settings, f"{kind}_max_active_jobs"),
        uploads_per_minute=getattr(settings, f"{kind}_uploads_per_minute"),
        max_stored_bytes=getattr(settings, f"{kind}_max_stored_bytes"),
        max_live_viewers=getattr(settings, f"{kind}_max_live_viewers"),
    )


def anon_owner(session_id: str, settings: GatewaySettings) -> Owner:
    return Owner(f"anon:{session_id}", "anon", "this browser", limits_for("anon", settings))


def key_owner(record: ApiKey, settings: GatewaySettings) -> Owner:
    return Owner(record.owner, "key", record.name, key_limits(record, limits_for("key", settings)))


def session_owner(conn: HTTPConnection) -> Owner | None:
    """The owner the request's session cookie stands for; None without a usable one. Unauthorized when it
    was signed in with a key that has since been revoked."""
    settings: GatewaySettings = conn.app.state.settings
    session = conn.app.state.sessions.verify(conn.cookies.get(SESSION_COOKIE))
    if session is None:
        return None
    if "key" in session:
        keys: KeyStore = conn.app.state.keys
        try:
            return key_owner(keys.by_id(session["key"]), settings)
        except KeyRefused as exc:
            raise Unauthorized(f"{exc}; sign in again at {SIGN_IN_PAGE}") from exc
    # An anonymous session made before keys were required counts for nothing once they are.
    return None if settings.require_api_key else anon_owner(session["anon"], settings)


def resolve_owner(conn: HTTPConnection) -> Owner:
    """The owner of an API request or WebSocket; Unauthorized when it has none it may use."""
    settings: GatewaySettings = conn.app.state.settings
    header = conn.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized(f"the Authorization header must be 'Bearer <key>'; {HOW_TO_GET_A_KEY}")
        keys: KeyStore = conn.app.state.keys
        try:
            record = keys.authenticate(token.strip())
        except KeyRefused as exc:
            raise Unauthorized(str(exc)) from exc
        return key_owner(record, settings)
    owner = session_owner(conn)
    if owner is not None:
        return owner
    if settings.require_api_key:
        raise Unauthorized(f"this service needs an API key; {HOW_TO_GET_A_KEY}, or sign in at {SIGN_IN_PAGE}")
    return Owner(LEGACY_OWNER, "local", "local", limits_for("local", settings))


def current_owner(
    request: Request,
    _bearer: object = Security(bearer_scheme),
    _cookie: object = Security(cookie_scheme),
) -> Owner:
    return resolve_owner(request)


class SignInNeeded(Exception):
    """A page asked for without a session where keys are required: the browser goes to the sign-in page."""


def page_session(request: Request) -> tuple[Owner, str | None]:
    """A page's owner (the browser's session, never the local owner) and, when the browser gets a new
    anonymous session, the cookie value to set. SignInNeeded where keys are required and the browser has
    not signed in; QuotaExceeded when this address (or everyone) made too many anonymous sessions lately."""
    settings: GatewaySettings = request.app.state.settings
    try:
        owner = session_owner(request)
    except Unauthorized as exc:
        raise SignInNeeded() from exc
    if owner is not None:
        return owner, None
    if settings.require_api_key:
        raise SignInNeeded()
    try:
        request.app.state.quotas.hit_anon_session(request.client.host if request.client else "unknown")
    except redis.RedisError:
        # The pages still show while Redis is down (they say so); nothing can be uploaded until it is back.
        logger.warning("new anonymous session not counted: Redis unreachable")
    session_id, cookie = request.app.state.sessions.new_anonymous()
    return anon_owner(session_id, settings), cookie


def set_session_cookie(response, cookie: str, settings: GatewaySettings) -> None:
    response.set_cookie(
        SESSION_COOKIE, cookie, max_age=settings.session_max_age_s, path="/", httponly=True,
        samesite="lax", secure=settings.cookie_secure,
    )

