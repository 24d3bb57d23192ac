"""Streaming a multipart upload straight to storage: the file never sits whole in memory.

Starlette's own form parser spools files to a temporary file first and cannot stop at a size limit while
reading; this one writes the `file` field to its final place as it arrives and stops at the limit. Every
other part of the body is bounded too: the number of parts, each field's size, each part's headers, the
whole body. The place is a storage Writer: a file in the local folder, or a multipart upload to the object
store (then nothing of it touches the gateway's disk).
"""

from __future__ import annotations

import asyncio
import logging
import time
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect

from common.errors import StorageFull, UploadTooLarge, is_storage_full
from common.storage import Writer
from gateway.errors import BadUpload, MalformedRequest, UploadLimit

logger = logging.getLogger(__name__)

FILE_FIELD = "file"
# Content-Length counts the multipart framing too (boundaries, part headers, other small fields).
MULTIPART_OVERHEAD_BYTES = 64 * 1024
HOW_TO_SEND = "send the video as multipart/form-data in a field named 'file' (curl -F file=@video.mp4 URL)"


def human_bytes(size: int) -> str:
    """1536 -> '1.5 KiB'; for messages people read."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.3g} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def too_large(max_bytes: int) -> UploadTooLarge:
    return UploadTooLarge(
        f"the file is larger than the {human_bytes(max_bytes)} upload limit; "
        "upload a shorter clip or compress it first (e.g. a lower resolution)"
    )


def check_content_length(header: str | None, max_bytes: int) -> None:
    """Refuse before reading a byte when the declared body cannot fit under the limit."""
    if header is None or not header.isdigit():
        return
    if int(header) > max_bytes + MULTIPART_OVERHEAD_BYTES:
        raise too_large(max_bytes)


def boundary_of(content_type: str | None) -> bytes:
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise BadUpload(f"the request is not a multipart form; {HOW_TO_SEND}")
    return options[b"boundary"]


def make_parser(content_type: str | None, callbacks: dict) -> MultipartParser:
    boundary = boundary_of(content_type)
    try:
        return MultipartParser(boundary, callbacks)
    except (ValueError, TypeError) as exc:  # e.g. a boundary longer than RFC 2046's 70 characters
        raise MalformedRequest(f"the multipart boundary is not usable ({exc}); {HOW_TO_SEND}") from exc


def clean_filename(raw: bytes | None) -> str:
    """The uploaded file's base name, for display only (storage never uses it). Control and format
    characters go: bidi overrides (U+202E) would make "gpj.exe" read as "exe.jpg", zero-width ones hide."""
    if not raw:
        return "upload"
    name = raw.decode("utf-8", errors="replace").replace("\\", "/")
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf"))
    name = PurePosixPath(name).name.strip()
    return name[:200] or "upload"


@dataclass(frozen=True)
class BodyLimits:
    """What a multipart body may hold besides the file (see GatewaySettings)."""

    max_parts: int = 16
    max_field_bytes: int = 64 * 1024
    max_header_bytes: int = 16 * 1024


@dataclass
class UploadResult:
    filename: str
    size: int


class _FileFieldWriter:
    """Parser callbacks that keep only the `file` field's bytes, in a buffer flushed by the caller."""

    def __init__(self, max_bytes: int, limits: BodyLimits | None = None) -> None:
        self.max_bytes = max_bytes
        self.limits = limits or BodyLimits()
        self.parts = 0
        self.field_bytes = 0
        self.header_bytes = 0
        self.size = 0
        self.filename: str | None = None
        self.found = False
        self.over_limit = False
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self._in_file = False
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_cb,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._disposition = b""
        self._in_file = False
        self.parts += 1
        self.field_bytes = self.header_bytes = 0
        if self.parts > self.limits.max_parts:
            raise UploadLimit(
                "too_many_parts",
                f"the form has more than {self.limits.max_parts} parts; {HOW_TO_SEND}",
            )

    def _count_header(self, size: int) -> None:
        self.header_bytes += size
        if self.header_bytes > self.limits.max_header_bytes:
            raise UploadLimit(
                "headers_too_large",
                f"a part's headers are longer than {human_bytes(self.limits.max_header_bytes)}; "
                + HOW_TO_SEND,
            )

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_name += data[start:end]

    def _header_value_cb(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        # Only the first `file` field counts; other fields and repeats are read past and dropped.
        if options.get(b"name") == FILE_FIELD.encode() and not self.found:
            self.found = True
            self._in_file = True
            self.filename = clean_filename(options.get(b"filename"))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_file:
            # Not the file: read past it, but only so far (a 192 MiB "field" is no field).
            self.field_bytes += end - start
            if self.field_bytes > self.limits.max_field_bytes:
                raise UploadLimit(
                    "field_too_large",
                    f"a form field other than 'file' is larger than "
                    f"{human_bytes(self.limits.max_field_bytes)}; {HOW_TO_SEND}",
                )
            return
        if self.over_limit:
            return
        self.size += end - start
        if self.size > self.max_bytes:
            self.over_limit = True
            self.pending.clear()
            return
        self.pending.append(data[start:end])
        self.pending_bytes += end - start

    def _part_end(self) -> None:
        self._in_file = False

    def take(self) -> bytes:
        data = b"".join(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        return data


async def _until_disconnect(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    except ClientDisconnect as exc:
        # Nobody reads the answer; the error is for the log and for the caller's clean-up.
        raise BadUpload("the upload broke off before the end; upload the file again") from exc


async def write_chunk(out, data: bytes) -> None:
    """Write to storage in a thread; a full disk is StorageFull (507), with nothing kept."""
    try:
        await asyncio.to_thread(out.write, data)
    except OSError as exc:
        if is_storage_full(exc):
            raise StorageFull(
                f"the server's disk is full ({exc.strerror}); nothing was kept, try again later"
            ) from exc
        raise


async def stream_upload(
    chunks: AsyncIterator[bytes],
    content_type: str | None,
    out: Writer,
    max_bytes: int,
    flush_bytes: int,
    limits: BodyLimits | None = None,
) -> UploadResult:
    """Write the form's `file` field to `out` as it arrives; raise UploadTooLarge, BadUpload or
    StorageFull.

    `out` is closed (the file complete) when this returns and aborted when it raises; the caller still
    removes the job's files when it raises.
    """
    started = time.perf_counter()
    limits = limits or BodyLimits()
    writer = _FileFieldWriter(max_bytes, limits)
    parser = make_parser(content_type, writer.callbacks())
    max_body = _max_body_bytes(max_bytes, limits)
    try:
        await _parse_body(chunks, parser, writer, out, max_bytes, max_body, flush_bytes)
    except BaseException:
        out.abort()  # directly: an await here would not run in a cancelled request
        raise
    _require_a_file(writer, out)
    await _close_or_storage_full(out)
    logger.info(
        "received upload %r (%d bytes) in %.2f s", writer.filename, writer.size, time.perf_counter() - started
    )
    return UploadResult(filename=writer.filename or "upload", size=writer.size)


def _max_body_bytes(max_bytes: int, limits: BodyLimits) -> int:
    # The whole body: the file, the other parts (each bounded above) and the framing.
    per_part = limits.max_field_bytes + limits.max_header_bytes
    return max_bytes + MULTIPART_OVERHEAD_BYTES + limits.max_parts * per_part


async def _parse_body(
    chunks: AsyncIterator[bytes],
    parser: MultipartParser,
    writer: _FileFieldWriter,
    out: Writer,
    max_bytes: int,
    max_body: int,
    flush_bytes: int,
) -> None:
    """Feed the body to the parser, flushing the file's bytes to `out`; raise UploadTooLarge or BadUpload."""
    received = 0
    # Writes run in a thread so a slow disk or object store never stalls the event loop (other requests).
    async for chunk in _until_disconnect(chunks):
        received += len(chunk)
        if received > max_body:
            raise too_large(max_bytes)
        try:
            parser.write(chunk)
        except MultipartParseError as exc:
            raise BadUpload(
                f"the upload is not a well-formed multipart form ({exc}); {HOW_TO_SEND}"
            ) from exc
        if writer.over_limit:
            raise too_large(max_bytes)
        if writer.pending_bytes >= flush_bytes:
            await write_chunk(out, writer.take())
    try:
        parser.finalize()
    except MultipartParseError as exc:
        raise BadUpload(f"the upload ended early or is malformed ({exc}); {HOW_TO_SEND}") from exc
    if writer.pending_bytes:
        await write_chunk(out, writer.take())


def _require_a_file(writer: _FileFieldWriter, out: Writer) -> None:
    """Abort `out` and raise BadUpload where the form had no `file` field or an empty one."""
    if not writer.found:
        out.abort()
        raise BadUpload(f"the form has no field named 'file'; {HOW_TO_SEND}")
    if writer.size == 0:
        out.abort()
        raise BadUpload("the uploaded file is empty; pick a video file and upload it again")


async def _close_or_storage_full(out: Writer) -> None:
    """Complete the file; a full disk aborts it and raises StorageFull."""
    try:
        await asyncio.to_thread(out.close)
    except BaseException as exc:
        out.abort()
        if is_storage_full(exc):
            raise StorageFull(
                f"the server's disk is full ({exc.strerror}); nothing was kept, try again later"
            ) from exc
        raise
