"""Security headers on every answer, and cross-site requests refused.

The session cookie is SameSite=Lax, so browsers already leave it off cross-site POSTs; as a second line,
any request that changes state (POST, PUT, PATCH, DELETE) or opens the live WebSocket from a page of
another origin is refused with 403 here, whatever it carries. Requests without an Origin (curl, scripts)
pass: they cannot ride a visitor's cookie.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# The pages load scripts, styles, images and media from this server only; no inline script anywhere.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI sets style attributes from script; still no inline script.
DOCS_CSP = PAGE_CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(self), microphone=(), geolocation=(), payment=(), usb=()"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
CROSS_SITE_MESSAGE = (
    "this request came from a page of another site ({origin}); the service accepts uploads, deletions and "
    "live streams only from its own pages or from clients without an Origin header (curl, scripts)"
)


def _netloc(origin: str) -> str:
    parts = urlsplit(origin)
    return parts.netloc.lower() if parts.scheme in ("http", "https") else ""


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, allowed_origins: str = "", hsts: bool = False) -> None:
        self.app = app
        self.allowed = {_netloc(o.strip()) for o in allowed_origins.split(",") if o.strip()}
        self.hsts = hsts

    def cross_site(self, scope: Scope) -> str | None:
        """The offending origin of a cross-site request, else None."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        if origin is None:
            return "another site" if headers.get("sec-fetch-site") == "cross-site" else None
        netloc = _netloc(origin)
        if netloc and (netloc == headers.get("host", "").lower() or netloc in self.allowed):
            return None
        return origin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            origin = self.cross_site(scope)
            if origin is not None:
                await send({"type": "websocket.close", "code": 1008, "reason": "cross-site"})
                return
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] not in SAFE_METHODS:
            origin = self.cross_site(scope)
            if origin is not None:
                message = CROSS_SITE_MESSAGE.format(origin=origin)
                body = json.dumps({"error": {"code": "cross_site_request", "message": message}}).encode()
                await send({"type": "http.response.start", "status": 403, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    *HEADERS,
                ]})
                await send({"type": "http.response.body", "body": body})
                return
        csp = (DOCS_CSP if scope["path"] == "/docs" else PAGE_CSP).encode()

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"content-security-policy", csp), *HEADERS]
                message["headers"] = [*message.get("headers", []), *extra]
                if self.hsts:
                    message["headers"].append((b"strict-transport-security", b"max-age=31536000"))
            await send(message)

        await self.app(scope, receive, send=with_headers)
