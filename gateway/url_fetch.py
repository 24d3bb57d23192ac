"""Videos by URL: the gateway fetches `{"url": ...}` into storage, then the job goes on as an upload would.

Every hop is checked by the guard the webhooks use (common/url_guard.py) and connected to at the address
that was checked; redirects are followed by hand, each checked again. The body streams to the job's writer
under the upload size limit, and the whole fetch (every hop, every byte) has one deadline, so neither a
huge file nor a server that drips a byte a second holds the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from common.storage import Writer
from common.url_guard import UrlRefused, check_public_url, pinned_request
from gateway.errors import BadRequestField
from gateway.uploads import UploadResult, clean_filename, human_bytes, write_chunk

logger = logging.getLogger(__name__)

USER_AGENT = "emoji-video-fetch/1.0"


class UrlFetchRefused(BadRequestField):
    """The URL was refused or could not be fetched (422); `code` says which rule, the message what to do."""


class UrlTooLarge(UrlFetchRefused):
    """The body is over the size limit (known from Content-Length, or counted while streaming)."""


@dataclass(frozen=True)
class FetchLimits:
    """See GatewaySettings (url_fetch_*, max_upload_bytes)."""

    max_bytes: int
    timeout_s: float = 300.0
    max_redirects: int = 5
    allow_http: bool = False
    allowed_networks: str = ""
    chunk_bytes: int = 1024 * 1024

    @classmethod
    def from_settings(cls, settings, max_bytes: int | None = None) -> FetchLimits:
        return cls(
            max_bytes=settings.max_upload_bytes if max_bytes is None else max_bytes,
            timeout_s=settings.url_fetch_timeout_s,
            max_redirects=settings.url_fetch_max_redirects,
            allow_http=settings.url_fetch_allow_http,
            allowed_networks=settings.url_fetch_allowed_networks,
            chunk_bytes=settings.upload_chunk_bytes,
        )

    @property
    def schemes(self) -> tuple[str, ...]:
        return ("https", "http") if self.allow_http else ("https",)


def filename_of(url: str) -> str:
    """The URL path's last segment, for display only (like an upload's file name)."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return clean_filename(name.encode()) if name else "video"


def too_large(max_bytes: int) -> UrlTooLarge:
    return UrlTooLarge(
        f"the video at url is larger than the {human_bytes(max_bytes)} upload limit; "
        "give a shorter or smaller video",
        code="url_too_large",
    )


async def fetch_url(url: str, out: Writer, limits: FetchLimits, resolver=None) -> UploadResult:
    """Fetch `url` into `out` (closed when this returns, aborted when it raises); raise UrlFetchRefused."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limits.timeout_s):
            result = await _follow(url, out, limits, resolver)
            await asyncio.to_thread(out.close)
    except TimeoutError:
        out.abort()
        raise UrlFetchRefused(
            f"fetching url took longer than {limits.timeout_s:g} s (the limit for the whole download); "
            "give a URL that serves the video faster, or upload the file",
            code="url_timed_out",
        ) from None
    except BaseException:
        out.abort()  # directly: an await here would not run in a cancelled request
        raise
    logger.info("fetched %s (%d bytes) in %.2f s", url, result.size, time.perf_counter() - started)
    return result


async def _follow(url: str, out: Writer, limits: FetchLimits, resolver) -> UploadResult:
    """Each hop checked, then fetched at the checked address; redirects followed by hand."""
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=limits.timeout_s) as client:
        current = url
        for hop in range(limits.max_redirects + 1):
            target, headers, extensions = await _checked_hop(current, hop, limits, resolver)
            request = client.build_request(
                "GET", target, headers={**headers, "User-Agent": USER_AGENT}, extensions=extensions
            )
            try:
                response = await client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise UrlFetchRefused(
                    f"url could not be fetched ({type(exc).__name__}: {exc}); check that it works",
                    code="url_unreachable",
                ) from exc
            try:
                if response.is_redirect and "location" in response.headers:
                    current = urljoin(current, response.headers["location"])
                    continue
                size = await _stream_body(response, out, limits)
                return UploadResult(filename=filename_of(current), size=size)
            finally:
                await response.aclose()
    raise UrlFetchRefused(
        f"url redirects more than {limits.max_redirects} times; give the video's final address",
        code="url_too_many_redirects",
    )


async def _checked_hop(url: str, hop: int, limits: FetchLimits, resolver) -> tuple[str, dict, dict]:
    field = "url" if hop == 0 else f"url's redirect to {url[:200]}"
    try:
        addresses = await asyncio.to_thread(
            check_public_url, url, field, limits.allowed_networks, limits.schemes, resolver
        )
    except UrlRefused as exc:
        code = exc.code if hop == 0 else "url_redirect_refused"
        raise UrlFetchRefused(str(exc), code=code) from exc
    return pinned_request(url, addresses[0])


async def _stream_body(response: httpx.Response, out: Writer, limits: FetchLimits) -> int:
    if response.status_code != 200:
        raise UrlFetchRefused(
            f"the server of url answered {response.status_code} instead of the video; check the URL",
            code="url_http_error",
        )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise too_large(limits.max_bytes)
    size = 0
    try:
        async for chunk in response.aiter_bytes(limits.chunk_bytes):
            size += len(chunk)
            if size > limits.max_bytes:
                raise too_large(limits.max_bytes)
            await write_chunk(out, chunk)
    except httpx.HTTPError as exc:
        raise UrlFetchRefused(
            f"the download of url broke off ({type(exc).__name__}); try again", code="url_unreachable"
        ) from exc
    if size == 0:
        raise UrlFetchRefused("url answered with an empty body, not a video", code="url_empty")
    return size
