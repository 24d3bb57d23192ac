"""What routes need, as `Annotated` aliases; the objects themselves are built once in `create_app`."""

from __future__ import annotations

import re
from typing import Annotated

from celery import Celery
from fastapi import Depends
from starlette.requests import HTTPConnection

from common.errors import JobNotFound
from common.jobs import JobStore
from common.storage import Storage
from gateway.live_hub import LiveHub
from gateway.settings import GatewaySettings

# Job ids are uuid4 hex; anything else is refused before it gets near Redis keys or storage paths.
JOB_ID_RE = re.compile(r"[0-9a-f]{32}")


def get_settings(conn: HTTPConnection) -> GatewaySettings:
    return conn.app.state.settings


def get_store(conn: HTTPConnection) -> JobStore:
    return conn.app.state.store


def get_storage(conn: HTTPConnection) -> Storage:
    return conn.app.state.storage


def get_celery(conn: HTTPConnection) -> Celery:
    return conn.app.state.celery


def get_live_hub(conn: HTTPConnection) -> LiveHub:
    return conn.app.state.live_hub


def checked_job_id(job_id: str) -> str:
    """The path's job id, or 404 when it cannot be one of ours."""
    if not JOB_ID_RE.fullmatch(job_id):
        raise JobNotFound(f"no job with id {job_id[:64]!r}; check the link, or upload the video again")
    return job_id


SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
StorageDep = Annotated[Storage, Depends(get_storage)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
LiveHubDep = Annotated[LiveHub, Depends(get_live_hub)]
JobIdDep = Annotated[str, Depends(checked_job_id)]
