"""The web pages: plain HTML whose scripts read everything else from the API.

Each page file in templates/ holds only its own content; layout.html gives every page the same head and
navigation bar."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from string import Template
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from gateway.auth import SIGN_IN_PAGE, SignInNeeded, page_session, set_session_cookie
from gateway.deps import JobIdDep

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"
# The navigation bar, in order: (link, label).
NAV_LINKS = (("/", "Upload"), ("/live", "Live"), ("/docs", "API"), (SIGN_IN_PAGE, "Sign in"))

router = APIRouter(include_in_schema=False)


@functools.cache
def render_page(name: str, title: str, current: str | None) -> tuple[str, str]:
    """(HTML, ETag) of templates/<name> inside the layout, read and hashed once per process; `current` is
    the nav link marked as this page."""
    marked = ' aria-current="page"'
    nav = "\n".join(
        f'      <a href="{href}"{marked if href == current else ""}>{label}</a>' for href, label in NAV_LINKS
    )
    layout = Template((TEMPLATES_DIR / "layout.html").read_text(encoding="utf-8"))
    html = layout.substitute(title=title, nav=nav, content=(TEMPLATES_DIR / name).read_text(encoding="utf-8"))
    return html, '"' + hashlib.sha1(html.encode()).hexdigest()[:16] + '"'


def _page(
    request: Request, name: str, title: str, current: str | None = None, status_code: int = 200,
    cookie: str | None = None,
) -> Response:
    """The page; `cookie` (a new browser session) is set on it, also on a 304."""
    html, etag = render_page(name, title, current)
    # no-cache: pages change with deployments and are tiny; the browser revalidates with the ETag.
    headers = {"Cache-Control": "no-cache", "ETag": etag}
    if status_code == 200 and request.headers.get("if-none-match") == etag:
        response = Response(status_code=304, headers=headers)
    else:
        response = HTMLResponse(html, status_code=status_code, headers=headers)
    if cookie:
        set_session_cookie(response, cookie, request.app.state.settings)
    return response


def redirect_to_sign_in(request: Request, exc: SignInNeeded) -> Response:
    """Where keys are required, a page asked for without a session: the sign-in page, then back here."""
    back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{SIGN_IN_PAGE}?next={quote(back, safe='')}", status_code=303)


@router.get(SIGN_IN_PAGE)
def sign_in_page(request: Request) -> Response:
    """Type an API key; the browser then acts as its owner (the only way in where keys are required)."""
    return _page(request, "sign-in.html", "sign in", current=SIGN_IN_PAGE)


@router.get("/")
def upload_page(request: Request) -> Response:
    """Pick or drop a video and upload it; where keys are not required, the first visit starts the
    browser's anonymous session."""
    _, cookie = page_session(request)
    return _page(request, "index.html", "upload", current="/", cookie=cookie)


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: JobIdDep) -> Response:
    """A job's progress and, when done, its video, chart and downloads; 404 (the page says "not found")
    unless this browser made the job."""
    owner, cookie = page_session(request)
    mine = request.app.state.store.owner_of(job_id) == owner.id
    return _page(request, "job.html", "job", status_code=200 if mine else 404, cookie=cookie)


@router.get("/live")
def live_page(request: Request) -> Response:
    """The webcam with an emoji on every face."""
    _, cookie = page_session(request)
    return _page(request, "live.html", "live", current="/live", cookie=cookie)
