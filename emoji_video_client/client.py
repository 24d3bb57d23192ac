"""`Client`: the service's HTTP API in Python, on httpx.

It does what every script would otherwise get wrong: waits out `Retry-After` on 429 and 503, retries a
request whose connection dropped (uploads too: each carries an Idempotency-Key, so a retried upload that
did arrive the first time answers with the same job instead of making a second), keeps waiting for a job
across a gateway restart, and turns the API's error body into `ApiError` with its message.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import httpx

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed")
# What `download` fetches: (link name in the job's links, file name suffix).
RESULTS = {"video": "emoji.mp4", "timeline": "timeline.json", "timeline_csv": "timeline.csv"}
# A photo job (where the service has them) links its drawn photo as "image", in the upload's format.
IMAGE_SUFFIXES = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/heic": "heic"}


class ClientError(Exception):
    """The service could not be reached, or did not answer in time (after the retries)."""


class ApiError(ClientError):
    """The API refused the request; `message` is the API's own, saying what to do."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def __str__(self) -> str:
        return f"{self.message} ({self.status} {self.code})"


class JobFailed(ClientError):
    """The job ended as failed; `job` is the job as the API shows it, with its error."""

    def __init__(self, job: dict) -> None:
        error = job.get("error") or {}
        super().__init__(f"the job failed: {error.get('message', 'no reason given')} ({error.get('code')})")
        self.job = job


def _error_of(response: httpx.Response) -> ApiError:
    try:
        error = response.json()["error"]
        return ApiError(response.status_code, error["code"], error["message"])
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()[:200] or response.reason_phrase
        return ApiError(
            response.status_code, "http_error", f"the server answered {response.status_code}: {text}"
        )


class _ProgressFile:
    """A file handed to httpx that reports every chunk read (the bytes sent) to `on_bytes`."""

    def __init__(self, handle: BinaryIO, on_bytes: Callable[[int], None] | None) -> None:
        self.handle, self.on_bytes = handle, on_bytes

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        if data and self.on_bytes:
            self.on_bytes(len(data))
        return data

    def fileno(self) -> int:  # httpx sizes the part from it (Content-Length instead of chunked)
        return self.handle.fileno()

    def seek(self, *args) -> int:
        return self.handle.seek(*args)

    def tell(self) -> int:
        return self.handle.tell()


class Client:
    """The emoji video API. `transport` is httpx's (tests swap it); `sleep` too."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        retries: int = 5,
        max_retry_after_s: float = 300.0,
        reconnect_for_s: float = 300.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        base_url = base_url or os.environ.get("EMOJI_API_URL") or DEFAULT_URL
        api_key = api_key if api_key is not None else os.environ.get("EMOJI_API_KEY")
        headers = {"User-Agent": "emoji-video-client/0.1"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport
        )
        self.retries, self.max_retry_after_s, self.reconnect_for_s = (
            retries,
            max_retry_after_s,
            reconnect_for_s,
        )
        self.sleep = sleep

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the one place requests are sent ------------------------------------------------------------------

    def _send(
        self, method: str, path: str, *, make: Callable[[], dict] | None = None, **kwargs
    ) -> httpx.Response:
        """Send, retrying a dropped connection (with backoff) and 429/503 (after Retry-After); raise
        ApiError for any other 4xx/5xx. `make` builds fresh keyword arguments per attempt (a file to read
        from the start again)."""
        attempt = 0
        while True:
            try:
                response = self.http.request(method, path, **(make() if make else {}), **kwargs)
            except httpx.TransportError as exc:
                attempt += 1
                if attempt > self.retries:
                    raise ClientError(
                        f"cannot reach {self.http.base_url} ({exc}); is the service running?"
                    ) from exc
                delay = min(2.0 ** (attempt - 1), 30.0)
                logger.warning("%s %s: %s; trying again in %.0f s", method, path, exc, delay)
                self.sleep(delay)
                continue
            if response.status_code in (429, 503) and attempt < self.retries:
                attempt += 1
                delay = self._retry_after(response)
                logger.warning(
                    "%s %s: %s; trying again in %.0f s", method, path, _error_of(response).message, delay
                )
                self.sleep(delay)
                continue
            if response.status_code >= 400:
                raise _error_of(response)
            return response

    def _retry_after(self, response: httpx.Response) -> float:
        value = response.headers.get("retry-after", "")
        seconds = float(value) if value.replace(".", "", 1).isdigit() else 5.0
        return min(max(seconds, 0.5), self.max_retry_after_s)

    # --- jobs ---------------------------------------------------------------------------------------------

    def submit(
        self,
        path: str | os.PathLike,
        *,
        style: str | None = None,
        labels: bool | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> dict:
        """Upload a video; the created job ({"id", "status", "links"}). `on_bytes(n)` is called as bytes go
        out (a retried upload counts from the start again: the total may pass the file's size)."""
        path = Path(path)
        fields = _fields(style, labels, callback_url)
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        with path.open("rb") as handle:

            def make() -> dict:
                handle.seek(0)
                return {
                    "files": {
                        "file": (path.name, _ProgressFile(handle, on_bytes), "application/octet-stream")
                    }
                }

            return self._send("POST", "/api/v1/jobs", make=make, data=fields, headers=headers).json()

    def submit_url(
        self,
        url: str,
        *,
        style: str | None = None,
        labels: bool | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict:
        """A job for the video at `url`, which the service fetches itself."""
        body: dict[str, Any] = {"url": url, **_fields(style, labels, callback_url)}
        if labels is not None:
            body["labels"] = labels
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        return self._send("POST", "/api/v1/jobs", json=body, headers=headers).json()

    def job(self, job_id: str) -> dict:
        return self._send("GET", f"/api/v1/jobs/{job_id}").json()

    def jobs(self, limit: int | None = None) -> list[dict]:
        params = {"limit": limit} if limit else None
        return self._send("GET", "/api/v1/jobs", params=params).json()["jobs"]

    def delete(self, job_id: str) -> None:
        self._send("DELETE", f"/api/v1/jobs/{job_id}")

    def wait(
        self,
        job_id: str,
        *,
        on_update: Callable[[dict], None] | None = None,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> dict:
        """Poll until the job has succeeded or failed; the job as last seen. A dropped connection (the
        gateway restarting, a network blip) is waited out for up to `reconnect_for_s`, then polling goes
        on."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        unreachable_since = None
        while True:
            try:
                job = self.http.get(f"/api/v1/jobs/{job_id}")
            except httpx.TransportError as exc:
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > self.reconnect_for_s:
                    raise ClientError(
                        f"lost {self.http.base_url} for {self.reconnect_for_s:.0f} s ({exc})"
                    ) from exc
                logger.warning("job %s: %s; still waiting", job_id, exc)
                self.sleep(min(poll_s * 2, 5.0))
                continue
            unreachable_since = None
            if job.status_code in (429, 503):
                self.sleep(self._retry_after(job))
                continue
            if job.status_code >= 400:
                raise _error_of(job)
            body = job.json()
            if on_update:
                on_update(body)
            if body["status"] in TERMINAL:
                return body
            if deadline is not None and time.monotonic() > deadline:
                raise ClientError(f"job {job_id} is still {body['status']} after {timeout_s:.0f} s")
            self.sleep(poll_s)

    def download(
        self,
        job_id: str,
        out_dir: str | os.PathLike,
        stem: str | None = None,
        what: tuple[str, ...] = tuple(RESULTS),
    ) -> dict[str, Path]:
        """Save a finished job's results in `out_dir` as <stem>-emoji.mp4 (a photo job's photo:
        <stem>-emoji.jpg, .png, ...), <stem>-timeline.json and <stem>-timeline.csv (stem: the uploaded
        file's); {what: path}."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        job = self.job(job_id)
        if job["status"] == "failed":
            raise JobFailed(job)
        stem = stem or Path(job.get("filename") or job_id).stem or job_id
        saved = {}
        for name in what:
            if name == "video" and job["links"].get("image"):
                name, suffix = "image", self._image_suffix(job["links"]["image"])
            else:
                suffix = RESULTS[name]
            target = out / f"{stem}-{suffix}"
            self._save(job["links"][name], target)
            saved[name] = target
        return saved

    def _image_suffix(self, link: str) -> str:
        kind = self._send("HEAD", link).headers.get("content-type", "").split(";")[0]
        return f"emoji.{IMAGE_SUFFIXES.get(kind, 'img')}"

    def _save(self, link: str, target: Path) -> None:
        """Stream one result to `target` (a partial file never stays: written beside it, then renamed)."""
        partial = target.with_name(target.name + ".part")
        for attempt in range(self.retries + 1):
            try:
                with self.http.stream("GET", link) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise _error_of(response)
                    with partial.open("wb") as f:
                        for chunk in response.iter_bytes(1 << 20):
                            f.write(chunk)
                partial.replace(target)
                return
            except httpx.TransportError as exc:
                partial.unlink(missing_ok=True)
                if attempt == self.retries:
                    raise ClientError(f"the download of {link} kept breaking off ({exc})") from exc
                self.sleep(min(2.0**attempt, 30.0))


def _fields(style: str | None, labels: bool | None, callback_url: str | None) -> dict[str, str]:
    fields = {}
    if style:
        fields["style"] = style
    if labels is not None:
        fields["labels"] = "true" if labels else "false"
    if callback_url:
        fields["callback_url"] = callback_url
    return fields
