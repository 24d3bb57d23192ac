"""Signing a browser in with an API key (the sign-in page's form), and out again."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from gateway.auth import SESSION_COOKIE, key_owner, set_session_cookie
from gateway.errors import Unauthorized
from gateway.keys import KeyRefused, KeyStore
from gateway.schemas import SignedIn

router = APIRouter(tags=["session"])


class SignIn(BaseModel):
    key: str = Field(max_length=200, description="an API key (`python -m gateway keys create NAME`)")


@router.post("/api/v1/session", response_model=SignedIn, responses={401: {"description": "not a valid key"}})
def sign_in(body: SignIn, request: Request, response: Response) -> SignedIn:
    """Turn an API key into this browser's session cookie: the pages then act as the key's owner."""
    keys: KeyStore = request.app.state.keys
    try:
        record = keys.authenticate(body.key.strip())
    except KeyRefused as exc:
        raise Unauthorized(str(exc)) from exc
    owner = key_owner(record, request.app.state.settings)
    set_session_cookie(response, request.app.state.sessions.for_key(record.id), request.app.state.settings)
    return SignedIn(owner=owner.id, name=owner.name)


@router.delete("/api/v1/session", status_code=204)
def sign_out(request: Request) -> Response:
    """Forget this browser's session cookie."""
    response = Response(status_code=204)
    settings = request.app.state.settings
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=settings.cookie_secure
    )
    return response
