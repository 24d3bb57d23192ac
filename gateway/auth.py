"""Who is asking: an API key's owner, a browser's anonymous session, or the one shared local owner.

- `Authorization: Bearer <key>`: the key's owner (`key:<id>`), with the key's limits; a bad key is 401.
- The pages give every browser a signed, HttpOnly, SameSite=Lax session cookie; requests carrying it act
  as that browser's anonymous owner (`anon:<session id>`), so a browser sees only its own jobs.
- Neither: the shared local owner (`local`), which keeps `make run` and curl working without a key, unless
  `require_api_key` is on (production), which answers 401 with how to get a key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request, Security
from fastapi.security import APIKeyCookie, HTTPBearer
from starlette.requests import HTTPConnection

from common.jobs import LEGACY_OWNER
from gateway.errors import Unauthorized
from gateway.keys import HOW_TO_GET_A_KEY, KeyRefused, KeyStore, Limits, key_limits
from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

SESSION_COOKIE = "emoji_session"
SESSION_ID_CHARS = 24

# Only for the OpenAPI schema (/docs shows an "Authorize" button); the checks are resolve_owner's.
bearer_scheme = HTTPBearer(
    auto_error=False, scheme_name="apiKey",
    description="An API key: `python -m gateway keys create NAME` prints one. Without it, API calls act as "
    "the shared local owner, or get 401 where EMOJI_REQUIRE_API_KEY=true.",
)
cookie_scheme = APIKeyCookie(
    name=SESSION_COOKIE, auto_error=False, scheme_name="browserSession",
    description="The pages' anonymous session (signed, HttpOnly, SameSite=Lax), set by visiting a page.",
)


@dataclass(frozen=True)
class Owner:
    id: str
    kind: str  # "key", "anon" or "local"
    name: str
    limits: Limits


def load_session_secret(settings: GatewaySettings) -> bytes:
    """The cookie signing secret: the setting, or one made once and kept in a file (mode 0600)."""
    if settings.session_secret:
        return settings.session_secret.encode()
    path = Path(settings.session_secret_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text().strip()
        if secret:
            return secret.encode()
        # Another process is writing it this instant; it holds one line, so read it again below.
    else:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48) + "\n")
        logger.info("made a session secret in %s", path)
    return path.read_text().strip().encode()


class Sessions:
    """Signed session ids: `<id>.<HMAC-SHA256(secret, id)>`; only the signature makes one valid."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret

    def _mac(self, session_id: str) -> str:
        mac = hmac.new(self.secret, b"session:" + session_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def new(self) -> tuple[str, str]:
        """(session id, cookie value)."""
        session_id = secrets.token_urlsafe(18)
        return session_id, f"{session_id}.{self._mac(session_id)}"

    def verify(self, cookie: str | None) -> str | None:
        """The session id of a validly signed cookie, else None."""
        if not cookie or len(cookie) > 200:
            return None
        session_id, _, mac = cookie.partition(".")
        if len(session_id) != SESSION_ID_CHARS or not hmac.compare_digest(mac, self._mac(session_id)):
            return None
        return session_id


def limits_for(kind: str, settings: GatewaySettings) -> Limits:
    return Limits(
        max_active_jobs=getattr(settings, f"{kind}_max_active_jobs"),
        uploads_per_minute=getattr(settings, f"{kind}_uploads_per_minute"),
        max_stored_bytes=getattr(settings, f"{kind}_max_stored_bytes"),
        max_live_viewers=getattr(settings, f"{kind}_max_live_viewers"),
    )


def anon_owner(session_id: str, settings: GatewaySettings) -> Owner:
    return Owner(f"anon:{session_id}", "anon", "this browser", limits_for("anon", settings))


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
        return Owner(record.owner, "key", record.name, key_limits(record, limits_for("key", settings)))
    session_id = conn.app.state.sessions.verify(conn.cookies.get(SESSION_COOKIE))
    if session_id:
        return anon_owner(session_id, settings)
    if settings.require_api_key:
        raise Unauthorized(f"this service needs an API key; {HOW_TO_GET_A_KEY}")
    return Owner(LEGACY_OWNER, "local", "local", limits_for("local", settings))


def current_owner(
    request: Request,
    _bearer: object = Security(bearer_scheme),
    _cookie: object = Security(cookie_scheme),
) -> Owner:
    return resolve_owner(request)


def page_session(request: Request) -> tuple[Owner, str | None]:
    """A page's owner (always the browser's session, never a key or the local owner) and, when the browser
    has no valid session yet, the cookie value to set."""
    settings: GatewaySettings = request.app.state.settings
    sessions: Sessions = request.app.state.sessions
    session_id = sessions.verify(request.cookies.get(SESSION_COOKIE))
    cookie = None
    if not session_id:
        session_id, cookie = sessions.new()
    return anon_owner(session_id, settings), cookie


def set_session_cookie(response, cookie: str, settings: GatewaySettings) -> None:
    response.set_cookie(
        SESSION_COOKIE, cookie, max_age=settings.session_max_age_s, path="/", httponly=True,
        samesite="lax", secure=settings.cookie_secure,
    )

