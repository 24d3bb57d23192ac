"""Serving a job's file from the object store through the gateway, with HTTP Range support.

One range per request (what players and download managers send); several ranges get the whole file, which
RFC 9110 allows. The object store does the slicing: each request reads only the bytes it answers with.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from common.storage import S3Storage

RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def content_disposition(kind: str, filename: str | None) -> str:
    """`inline`, or `attachment; filename*=utf-8''name` (any name, safely quoted)."""
    return f"{kind}; filename*=utf-8''{quote(filename)}" if filename else kind


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single satisfiable range; None for no (or an ignorable) Range header.

    Raises ValueError when the range cannot be satisfied (the caller answers 416).
    """
    if not header:
        return None
    match = RANGE_RE.match(header.strip())
    if not match or match.groups() == ("", ""):
        return None  # several ranges, or not bytes: serve the whole file
    first, last = match.groups()
    if first == "":  # the last N bytes
        length = int(last)
        if length == 0:
            raise ValueError(header)
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise ValueError(header)
    return start, end


def ranged_response(
    request: Request, storage: S3Storage, job_id: str, name: str, size: int, media_type: str,
    disposition: str,
) -> Response:
    headers = {"Accept-Ranges": "bytes", "Content-Disposition": disposition}
    try:
        wanted = parse_range(request.headers.get("range"), size)
    except ValueError:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    start, end = wanted if wanted else (0, size - 1)
    status = 206 if wanted else 200
    if wanted:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1 if size else 0)
    if request.method == "HEAD" or size == 0:
        return Response(status_code=status, headers=headers, media_type=media_type)
    return StreamingResponse(
        storage.read(job_id, name, start, end), status_code=status, headers=headers, media_type=media_type
    )
