"""The upload and job pages with photos, in real headless Chromium against the real stack (the browser
fixtures are those of test_pages.py). Screenshots go to tests/artifacts/ for a person to look at."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from common.classes import EMOTIONS
from tests import photo_files, test_pages
from tests.test_pages import JOB_TIMEOUT_MS, shot, wait_until

# The browser fixtures of test_pages.py, shared rather than copied (pytest finds fixtures by module name).
playwright, camera_clip, browser, page = (
    test_pages.playwright,
    test_pages.camera_clip,
    test_pages.browser,
    test_pages.page,
)

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def drop_file(page, path: Path, media_type: str) -> None:
    """Drop the file on the drop zone as a person dragging it from their desktop would."""
    payload = base64.b64encode(path.read_bytes()).decode()
    dropped = page.evaluate_handle(
        """([name, type, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], name, { type }));
            return data;
        }""",
        [path.name, media_type, payload],
    )
    page.dispatch_event("#dropzone", "dragover", {"dataTransfer": dropped})
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": dropped})


def test_the_drop_zone_icon_is_an_image_not_a_font_glyph(page, gateway):
    page.goto(f"{gateway}/")
    icon = page.locator("#dropzone .big")
    assert icon.evaluate("e => e.tagName") == "IMG"
    wait_until(page, "document.querySelector('#dropzone .big').complete")
    assert icon.evaluate("e => e.naturalWidth") > 0, "the icon's image did not load"
    wait_until(page, "document.getElementById('limits-hint').textContent.includes('photos')")
    assert "JPEG" in page.text_content("#limits-hint")


def test_a_dropped_photo_leads_to_its_job_page_with_the_drawn_photo_and_its_faces(page, gateway, tmp_path):
    source = photo_files.save(photo_files.astronaut(), tmp_path / "astronaut.jpg", format="JPEG", quality=92)
    page.goto(f"{gateway}/")
    drop_file(page, source, "image/jpeg")
    page.wait_for_selector("#file-row:not(.hidden)")
    assert page.text_content("#file-name") == "astronaut.jpg"
    page.click("#upload-button")
    page.wait_for_url("**/jobs/*", timeout=60_000)
    job_id = page.url.rstrip("/").split("/")[-1]

    page.wait_for_selector("#photo:not(.hidden)", timeout=JOB_TIMEOUT_MS)
    assert page.text_content("#job-badge").strip() == "Done"
    assert "512×512 · JPEG photo" in page.text_content("#job-sub")
    size = wait_until(
        page,
        "(i => i.complete && i.naturalWidth && [i.naturalWidth, i.naturalHeight])"
        "(document.getElementById('photo'))",
    )
    assert size == [512, 512], "the drawn photo is not shown"
    assert page.is_hidden("#player") and page.is_hidden("#chart-card")
    # The face, its emoji and its emotion.
    faces = page.locator("#people li.face")
    assert faces.count() == 1
    emotion = faces.first.locator(".badge").text_content().lower()
    assert emotion in EMOTIONS
    assert faces.first.locator("img").get_attribute("src") == f"/emojis/{emotion}.png"
    assert page.text_content("#shares-title") == "Share of faces"
    shot(page, "photo-job-done")

    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    href = page.get_attribute("#dl-video", "href")
    assert href == f"/api/v1/jobs/{job_id}/image?download=true"
    assert page.text_content("#dl-video") == "Download JPEG"
    reply = httpx.get(f"{gateway}{href}", timeout=60, cookies=cookies)
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/jpeg"
    assert reply.headers["content-disposition"].startswith('attachment; filename="astronaut-emoji.jpg"')

    page.goto(f"{gateway}/")
    link = page.wait_for_selector(f"a[href='/jobs/{job_id}']")
    assert "512×512 photo" in link.text_content()
    shot(page, "upload-with-photo")


def test_a_refused_photo_is_explained_on_the_upload_page(page, gateway, tmp_path):
    page.goto(f"{gateway}/")
    page.set_input_files("#file-input", str(photo_files.huge_png(tmp_path / "huge.png")))
    page.click("#upload-button")
    page.wait_for_selector("#upload-error:not(.hidden)", timeout=60_000)
    text = page.text_content("#upload-error")
    assert "refused" in text and "EMOJI_MAX_IMAGE" in text
