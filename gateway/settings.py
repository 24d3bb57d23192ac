"""The gateway's settings: the common ones plus where it listens, upload limits and the live stream."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from common.settings import REPO_ROOT, CommonSettings


class GatewaySettings(CommonSettings):
    host: str = "127.0.0.1"
    port: int = 8000
    # Level of the gateway's own log lines (uvicorn configures only its own loggers).
    log_level: str = "INFO"

    # Bigger uploads are refused while streaming (and before, when Content-Length says so).
    max_upload_bytes: int = Field(default=2 * 1024**3, gt=0)
    # Parts of the multipart form (the `file` and any other fields); more is refused with 413.
    upload_max_parts: int = Field(default=16, gt=0)
    # Each part other than `file` (a form field) may hold this many bytes.
    upload_max_field_bytes: int = Field(default=64 * 1024, gt=0)
    # The headers of one part, all together.
    upload_max_part_header_bytes: int = Field(default=16 * 1024, gt=0)
    # Bytes read from the socket per chunk while streaming an upload to storage.
    upload_chunk_bytes: int = Field(default=1024 * 1024, gt=0)
    recent_jobs_limit: int = Field(default=20, gt=0)
    # Videos by URL (POST /api/v1/jobs with {"url": ...}): fetched under the upload limit, through the guard
    # the webhooks use (public addresses only, each redirect checked). http:// too, not only https://.
    url_fetch_allow_http: bool = False
    # Networks a URL may reach although private or loopback, comma-separated CIDRs (tests: 127.0.0.2/32).
    url_fetch_allowed_networks: str = ""
    # The whole fetch, every redirect and every byte, must be done in this many seconds.
    url_fetch_timeout_s: float = Field(default=300.0, gt=0)
    url_fetch_max_redirects: int = Field(default=5, ge=0)
    # The job page's event stream reads the job as soon as the store announces a change; it also reads it
    # this often in case a notice was lost (e.g. Redis restarted between two writes).
    events_interval_s: float = Field(default=5.0, gt=0)

    # One webcam frame, as the browser sends it (a 640x480 JPEG is ~30-60 kB).
    live_max_frame_bytes: int = Field(default=2 * 1024 * 1024, gt=0)
    # How long one live frame may take through the queue, the worker and back before the socket says so.
    live_timeout_s: float = Field(default=5.0, gt=0)
    # Each connected viewer holds a Redis connection; more viewers than this are told to come back later.
    live_max_clients: int = Field(default=32, gt=0)

    # How often the files of jobs whose Redis record has expired are removed from storage (0: never).
    storage_sweep_interval_s: float = Field(default=3600.0, ge=0)
    # A folder without a record is left alone until nothing in it has changed for this long (uploads).
    orphan_grace_s: float = Field(default=3600.0, ge=0)

    # With an object store: answer result downloads with a redirect to a presigned URL of the object (the
    # store serves the bytes and the Range requests) instead of streaming them through the gateway.
    download_redirect: bool = False
    # How long such a presigned URL stays valid.
    presign_ttl_s: int = Field(default=300, gt=0)
    # How often the gateway looks for queued or running jobs whose tasks are gone from Redis (a Redis that
    # restarted without its data, a queue flushed by hand) and re-queues them (0: never).
    reconcile_interval_s: float = Field(default=60.0, ge=0)
    # A job is only taken for lost when nothing happened to it for this long and no task names it: longer
    # than a task can be silent (a batch under the hard time limit) plus a task's trip through the queue.
    reconcile_grace_s: float = Field(default=900.0, ge=0)
    # A job whose tasks were lost this many times already fails with `tasks_lost` instead.
    reconcile_max_requeues: int = Field(default=2, ge=0)

    # The emoji PNGs, served to the live page.
    emojis_dir: Path = REPO_ROOT / "emojis"

    # --- accounts and limits (docs/api.md, "Keys, owners and limits") ---
    # Without a key (and without a page's session cookie) API calls act as one shared local owner, which
    # keeps `make run` and curl working out of the box; true (production) answers them 401.
    require_api_key: bool = False
    # Signs the pages' session cookies. Empty: a random secret is made once and kept in
    # session_secret_file, so sessions survive restarts; several gateways must share one of the two.
    session_secret: str = ""
    session_secret_file: Path = REPO_ROOT / "var" / "session_secret"
    # Send the session cookie only over HTTPS (on behind a TLS-terminating proxy).
    cookie_secure: bool = False
    # How long a session cookie (anonymous or signed in with a key) is good for, counted from its making by
    # the server, whatever the browser keeps.
    session_max_age_s: int = Field(default=30 * 24 * 3600, gt=0)
    # New anonymous sessions (each a new owner with fresh quotas), where keys are not required: at most this
    # many per client address, and this many in all, per window; more get 429 (0 = no limit).
    anon_sessions_per_address: int = Field(default=20, ge=0)
    anon_sessions_total: int = Field(default=1000, ge=0)
    anon_session_window_s: int = Field(default=3600, gt=0)
    # Origins (scheme://host[:port]) besides the gateway's own from which pages may post, delete or open the
    # live socket, comma-separated: e.g. the public name behind a proxy that rewrites Host.
    allowed_origins: str = ""

    # Quotas, per owner; 0 = no limit. An API key's own limits (`python -m gateway keys create`) replace the
    # key_* defaults; anonymous browsers get the anon_* ones; the shared local owner the local_* ones.
    anon_max_active_jobs: int = Field(default=2, ge=0)
    anon_uploads_per_minute: int = Field(default=10, ge=0)
    anon_max_stored_bytes: int = Field(default=5 * 1024**3, ge=0)
    anon_max_live_viewers: int = Field(default=2, ge=0)
    key_max_active_jobs: int = Field(default=10, ge=0)
    key_uploads_per_minute: int = Field(default=60, ge=0)
    key_max_stored_bytes: int = Field(default=50 * 1024**3, ge=0)
    key_max_live_viewers: int = Field(default=8, ge=0)
    local_max_active_jobs: int = Field(default=0, ge=0)
    local_uploads_per_minute: int = Field(default=0, ge=0)
    local_max_stored_bytes: int = Field(default=0, ge=0)
    local_max_live_viewers: int = Field(default=0, ge=0)
    # The window "uploads per minute" counts in (a moving window); tests shorten it.
    upload_rate_window_s: int = Field(default=60, gt=0)
    # How long an Idempotency-Key answers with the job it first made.
    idempotency_ttl_s: int = Field(default=24 * 3600, gt=0)
    # How long a repeated request waits for the first one with the same Idempotency-Key to finish.
    idempotency_wait_s: float = Field(default=30.0, ge=0)
