"""Helpers the owner, quota and webhook tests share: keys made with the real CLI, requests with a key."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent


def keys_cli(redis_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m gateway keys ...` against the test Redis, as an operator would run it."""
    env = {**os.environ, "EMOJI_REDIS_URL": redis_url}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "keys", *args], cwd=REPO_ROOT, env=env, capture_output=True,
        text=True, check=check, timeout=60,
    )


def create_key(redis_url: str, name: str, *limits: str) -> dict[str, str]:
    """A new key: {"key", "id", "name", "webhook secret"} as the CLI printed them."""
    out = keys_cli(redis_url, "create", name, *limits).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in fields.items()}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upload(base_url: str, video: Path, headers: dict | None = None, data: dict | None = None,
           cookies: dict | None = None, timeout: float = 120) -> httpx.Response:
    with open(video, "rb") as f:
        return httpx.post(
            f"{base_url}/api/v1/jobs", files={"file": (video.name, f, "video/mp4")}, data=data,
            headers=headers, cookies=cookies, timeout=timeout,
        )


def wait_done(base_url: str, job_id: str, headers: dict, timeout_s: float = 420) -> dict:
    deadline = time.monotonic() + timeout_s
    job: dict = {}
    while time.monotonic() < deadline:
        job = httpx.get(f"{base_url}/api/v1/jobs/{job_id}", headers=headers, timeout=10).json()
        if job.get("status") in ("succeeded", "failed"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not done after {timeout_s} s: {job}")
