"""Health, the limits the pages check before sending, and who the caller is."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import redis
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from common.images import photo_formats
from common.media import ALLOWED_INPUT_FORMATS
from common.webhooks import owner_secret
from gateway.auth import Owner, current_owner
from gateway.deps import SettingsDep, StoreDep
from gateway.schemas import Health, Limits, LimitsPublic, LiveLimits, Me, Usage

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
def healthz(store: StoreDep) -> JSONResponse:
    """200 when Redis answers, 503 when it does not."""
    try:
        ok = bool(store.redis.ping())
    except redis.RedisError:
        ok = False
    body = Health(status="ok" if ok else "redis unreachable", redis=ok)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get("/api/v1/limits", response_model=Limits)
def limits(settings: SettingsDep) -> Limits:
    """The upload size limit, the accepted containers and the live stream's limits."""
    return Limits(
        max_upload_bytes=settings.max_upload_bytes,
        accepted_formats=list(ALLOWED_INPUT_FORMATS),
        photo_formats=photo_formats(),
        live=LiveLimits(
            max_frame_bytes=settings.live_max_frame_bytes,
            timeout_s=settings.live_timeout_s,
            max_clients=settings.live_max_clients,
        ),
    )


@router.get("/api/v1/me", response_model=Me, responses={401: {"description": "no valid API key"}})
def me(
    request: Request, store: StoreDep, settings: SettingsDep, owner: Annotated[Owner, Depends(current_owner)]
) -> Me:
    """The owner this request acts as, its limits (0: none), what it uses, and its webhook signing secret."""
    quotas = request.app.state.quotas
    limits = owner.limits
    # An anonymous owner lives no longer than its session, and its jobs' webhooks no longer than its jobs.
    secret_ttl_s = settings.session_max_age_s + settings.job_ttl_s if owner.kind == "anon" else None
    return Me(
        owner=owner.id,
        kind=owner.kind,
        name=owner.name,
        limits=LimitsPublic(**asdict(limits)),
        usage=Usage(
            active_jobs=quotas.active_count(owner) if limits.max_active_jobs else 0,
            stored_bytes=quotas.stored_bytes(owner) if limits.max_stored_bytes else 0,
        ),
        webhook_secret=owner_secret(store.redis, owner.id, secret_ttl_s),
    )
