"""The web pages: plain HTML files whose scripts read everything else from the API."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from gateway.deps import JobIdDep

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"

router = APIRouter(include_in_schema=False)


def _page(name: str) -> FileResponse:
    # no-cache: pages change with deployments and are tiny; the browser revalidates with ETag.
    return FileResponse(
        TEMPLATES_DIR / name, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"}
    )


@router.get("/")
def upload_page() -> FileResponse:
    """Pick or drop a video and upload it."""
    return _page("index.html")


@router.get("/jobs/{job_id}")
def job_page(job_id: JobIdDep) -> FileResponse:
    """A job's progress and, when done, its video, chart and downloads."""
    return _page("job.html")


@router.get("/live")
def live_page() -> FileResponse:
    """The webcam with an emoji on every face."""
    return _page("live.html")
