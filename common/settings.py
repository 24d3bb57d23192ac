"""Settings shared by every service; each service's own settings class extends `CommonSettings`.

Every value has a safe local default and an environment variable (prefix EMOJI_, e.g. EMOJI_REDIS_URL).
"""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMOJI_", extra="ignore")

    # Redis: Celery's broker and results, and the job records.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # One folder per job (upload, pieces, results); on several machines it must be shared storage.
    storage_dir: Path = REPO_ROOT / "var" / "storage"

    # The model server, gRPC: TF Serving or `python -m model_server`, the client cannot tell which.
    model_server_address: str = "127.0.0.1:8500"
    # The model's name in the server's config.
    model_name: str = "emotion"
    # The SavedModel signature and its tensors: uint8 faces [N,48,48,1] in, float32 probabilities [N,7] out.
    model_signature: str = "serving_default"
    # Input tensor of the signature.
    model_input_key: str = "faces"
    # Output tensor of the signature.
    model_output_key: str = "probabilities"
    # Deadline of every gRPC call to the model server.
    model_timeout_s: float = 10.0
    # gRPC's default receive limit is 4 MiB; requests are split to stay under it.
    grpc_max_message_bytes: int = 4 * 1024 * 1024

    # Redis re-delivers a task whose worker died after this many seconds: keep it above the longest task.
    visibility_timeout_s: int = 600
    # How long Redis keeps a finished job's record; the gateway's storage sweep then removes its files.
    job_ttl_s: int = 7 * 24 * 3600

    # Webhooks (callback_url): the gateway checks the address at submit, the worker again before each POST.
    # Networks a callback may reach although private or loopback, comma-separated CIDRs (tests: 127.0.0.1/32).
    webhook_allowed_networks: str = ""
    # Seconds one delivery attempt may take (connect, send, answer).
    webhook_timeout_s: float = 10.0
    # Retries wait base * 2^n seconds, at most max_delay (and below the visibility timeout, or Redis would
    # hand the waiting task to a second worker), until window seconds after the job ended.
    webhook_retry_base_s: float = 30.0
    webhook_retry_max_delay_s: float = 3600.0
    webhook_retry_window_s: float = 24 * 3600.0
