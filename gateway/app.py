"""The gateway's ASGI app: `uvicorn gateway.app:app`. It sends tasks by name and never imports the worker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from common import logs
from common import storage as storages
from common.jobs import JobStore
from common.queue import make_celery
from gateway.api import jobs, live, session, system
from gateway.auth import Sessions, SignInNeeded, load_session_secret
from gateway.errors import install_error_handlers
from gateway.idempotency import Idempotency
from gateway.keys import KeyStore
from gateway.live_hub import LiveHub
from gateway.metrics import MetricsMiddleware
from gateway.metrics import router as metrics_router
from gateway.pages import STATIC_DIR, redirect_to_sign_in
from gateway.pages import router as pages_router
from gateway.quotas import AnonSessionLimits, Quotas
from gateway.reconciler import reconcile_forever
from gateway.security import SecurityMiddleware
from gateway.settings import GatewaySettings
from gateway.storage_sweep import sweep_forever

logger = logging.getLogger(__name__)

DESCRIPTION = """Upload a video and get it back with an emoji on every face, plus a timeline of emotions.

Every error answers `{"error": {"code": "...", "message": "..."}}`; the message says what to do.

Every job belongs to whoever created it: an API key (`Authorization: Bearer <key>`), a browser's session
cookie (set by the pages), or, where the service allows it, the one shared local owner of key-less calls.
Another owner's job answers 404. See docs/api.md, "Keys, owners and limits"."""

# The /docs page, with Swagger UI's start-up in a file (no inline script, see security.py).
DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title}</title>
  <link rel="stylesheet" href="/static/vendor/swagger-ui/swagger-ui.css">
  <link rel="icon" href="/static/logo.svg" type="image/svg+xml">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/static/vendor/swagger-ui/swagger-ui-bundle.js"></script>
  <script src="/static/api-docs.js"></script>
</body>
</html>
"""


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """Build the app with its Redis, storage and Celery clients (all connect lazily)."""
    settings = settings or GatewaySettings()
    _configure_logging(settings)
    # docs_url=None: /docs is served below from vendored Swagger UI files, so it works offline too.
    app = FastAPI(
        title="Emoji video", version="1.0", description=DESCRIPTION, lifespan=_lifespan, docs_url=None
    )
    app.state.settings = settings
    _attach_clients(app, settings)
    _install_routes(app, settings)
    return app


def _configure_logging(settings: GatewaySettings) -> None:
    # Under `uvicorn gateway.app:app` nothing configures the root logger; without this our lines vanish.
    if settings.log_format == "json" or not logging.getLogger().handlers:
        logs.configure(settings.log_format, "WARNING")
    logging.getLogger("gateway").setLevel(settings.log_level.upper())


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Check the object store, run the background loops while the app serves, then stop them."""
    settings: GatewaySettings = app.state.settings
    logger.info(
        "gateway up: redis %s, storage %s, max upload %d bytes",
        settings.redis_url,
        settings.storage_url or settings.storage_dir,
        settings.max_upload_bytes,
    )
    if not app.state.storage.local:
        try:  # say it at start, not at the first upload; the gateway still starts (the store may come up)
            await asyncio.to_thread(app.state.storage.check)
        except Exception as exc:
            logger.error("object store not usable: %s", exc)
    background = _start_background_loops(app, settings)
    yield
    for task in background:
        task.cancel()
    await app.state.live_hub.close()


def _start_background_loops(app: FastAPI, settings: GatewaySettings) -> list[asyncio.Task[None]]:
    """The storage sweeper and the job reconciler, each only where its interval is above zero."""
    loops = []
    if settings.storage_sweep_interval_s > 0:
        loops.append(
            asyncio.create_task(
                sweep_forever(
                    app.state.storage,
                    app.state.store,
                    settings.storage_sweep_interval_s,
                    settings.orphan_grace_s,
                )
            )
        )
    if settings.reconcile_interval_s > 0:
        loops.append(
            asyncio.create_task(
                reconcile_forever(
                    app.state.store,
                    app.state.celery,
                    settings.reconcile_interval_s,
                    settings.reconcile_grace_s,
                    settings.reconcile_max_requeues,
                )
            )
        )
    return loops


def _attach_clients(app: FastAPI, settings: GatewaySettings) -> None:
    """Put the Redis, storage, auth, quota and Celery clients on app.state (none connects yet)."""
    app.state.store = JobStore.from_url(settings.redis_url, ttl_s=settings.job_ttl_s)
    app.state.storage = storages.from_settings(settings)
    app.state.keys = KeyStore(app.state.store.redis)
    app.state.sessions = Sessions(load_session_secret(settings), settings.session_max_age_s)
    app.state.quotas = Quotas(
        app.state.store.redis, settings.redis_url, settings.upload_rate_window_s, settings.orphan_grace_s,
        record_ttl_s=2 * settings.job_ttl_s,
        anon_sessions=AnonSessionLimits(
            settings.anon_sessions_per_address, settings.anon_sessions_total, settings.anon_session_window_s
        ),
    )
    app.state.idempotency = Idempotency(
        app.state.store.redis, settings.idempotency_ttl_s, settings.idempotency_wait_s
    )
    # The gateway only sends tasks: without a result backend, sending never subscribes to results it will
    # not read. Live answers are read from Redis directly (see live_hub.py), named and decoded as the
    # workers' result backend writes them.
    app.state.celery = make_celery(settings)
    app.state.celery.conf.result_backend = "disabled"
    worker_results = make_celery(settings).backend
    app.state.live_hub = LiveHub(
        app.state.celery,
        aioredis.Redis.from_url(settings.redis_url),
        worker_results.get_key_for_task,
        worker_results.decode_result,
        settings.live_max_clients,
        settings.live_timeout_s,
    )


def _install_routes(app: FastAPI, settings: GatewaySettings) -> None:
    """Error handlers, middleware (in this order), routers, /docs and the static mounts."""
    install_error_handlers(app)
    app.add_exception_handler(SignInNeeded, redirect_to_sign_in)
    app.add_middleware(
        SecurityMiddleware, allowed_origins=settings.allowed_origins, hsts=settings.cookie_secure
    )
    app.include_router(jobs.router)
    app.include_router(live.router)
    app.include_router(system.router)
    app.include_router(session.router)
    app.include_router(metrics_router)
    app.add_middleware(MetricsMiddleware)
    app.include_router(pages_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/docs", include_in_schema=False)
    def api_docs() -> HTMLResponse:
        return HTMLResponse(DOCS_HTML.format(title=f"{app.title} · API"))

    # The worker draws the same PNGs; check_dir=False so the gateway starts even before they exist.
    app.mount("/emojis", StaticFiles(directory=settings.emojis_dir, check_dir=False), name="emojis")


app = create_app()
