"""Health and the limits the pages check before sending."""

from __future__ import annotations

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from common.media import ALLOWED_INPUT_FORMATS
from gateway.deps import SettingsDep, StoreDep
from gateway.schemas import Health, Limits, LiveLimits

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
        live=LiveLimits(
            max_frame_bytes=settings.live_max_frame_bytes,
            timeout_s=settings.live_timeout_s,
            max_clients=settings.live_max_clients,
        ),
    )
