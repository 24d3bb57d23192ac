"""The web pages in real headless Chromium against the real stack: upload, results, live webcam.

Screenshots of every page go to tests/artifacts/ (git-ignored) so a person can look at them.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from common.classes import EMOTIONS
from common.jobs import JobStore
from tests.conftest import start_gateway

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
BASE_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
JOB_TIMEOUT_MS = 420_000


@pytest.fixture(scope="module")
def playwright():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing; `make install` installs Debian's chromium")
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def camera_clip(astronaut_video, tmp_path_factory) -> Path:
    """The astronaut clip as Chromium's fake webcam wants it: raw .y4m, 640x480."""
    clip = tmp_path_factory.mktemp("camera") / "face.y4m"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-i",
            str(astronaut_video),
            "-vf",
            "crop=640:480:0:0",
            "-pix_fmt",
            "yuv420p",
            "-r",
            "15",
            str(clip),
        ],
        check=True,
    )
    return clip


@pytest.fixture(scope="module")
def browser(playwright, camera_clip):
    """Chromium with a fake camera that plays the face clip and grants camera access without asking."""
    args = [
        *BASE_ARGS,
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={camera_clip}",
    ]
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
    yield browser
    browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="module")
def live_gateway(stack_env, service_logs, worker):
    """A gateway that waits long for live answers: a loaded test machine must not turn into a failed test."""
    service, url = start_gateway(
        {**stack_env, "EMOJI_LIVE_TIMEOUT_S": "120"}, service_logs, "gateway-live-pages"
    )
    yield url
    service.stop()


def wait_until(page, expression: str, timeout: float = 30_000):
    """Poll a JavaScript expression until it is truthy; its value. page.evaluate, not wait_for_function:
    the pages' Content-Security-Policy forbids the string evaluation wait_for_function polls with."""
    deadline = time.monotonic() + timeout / 1000
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout / 1000:.0f} s: {expression}")
        time.sleep(0.1)


def browser_owner(page, gateway: str) -> str:
    """The owner of this browser's jobs: the first page visit gives it a session; the API names its owner."""
    page.goto(gateway)
    return page.evaluate("fetch('/api/v1/me').then(r => r.json())")["owner"]


def shot(page, name: str, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def test_upload_form_to_results_with_video_chart_and_downloads(page, gateway, astronaut_video):
    page.goto(f"{gateway}/")
    wait_until(page, "document.getElementById('limits-hint').textContent.includes('up to')")
    shot(page, "upload-empty")
    page.set_input_files("#file-input", str(astronaut_video))
    page.wait_for_selector("#file-row:not(.hidden)")
    assert page.text_content("#file-name") == astronaut_video.name
    page.click("#upload-button")
    page.wait_for_url("**/jobs/*", timeout=60_000)
    job_id = page.url.rstrip("/").split("/")[-1]
    page.wait_for_selector("#job-title:not(:text('Loading…'))")
    shot(page, "job-running")

    page.wait_for_selector("#result-card:not(.hidden)", timeout=JOB_TIMEOUT_MS)
    assert page.text_content("#job-badge").strip() == "Done"
    duration = wait_until(page, "(v => v.readyState >= 1 && v.duration)(document.getElementById('player'))")
    assert duration == pytest.approx(3.0, abs=0.1)

    wait_until(page, "document.getElementById('chart').dataset.drawn === 'true'", timeout=30_000)
    lanes = int(page.get_attribute("#chart", "data-lanes"))
    points = int(page.get_attribute("#chart", "data-points"))
    assert lanes >= 1, "the chart shows no person although the astronaut's face is in every frame"
    assert points > 30
    coloured = page.evaluate(
        """() => {
            const c = document.getElementById('chart');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
            return n / (d.length / 4);
        }"""
    )
    assert coloured > 0.2, f"only {coloured:.0%} of the chart is drawn"

    # Clicking the chart seeks the video: the middle of the plot is the middle of the clip.
    chart = page.locator("#chart")
    width = chart.bounding_box()["width"]
    # The plot spans the canvas less 44 px of lane labels on the left and 12 px on the right.
    chart.click(position={"x": 44 + (width - 56) / 2, "y": 20})
    seek = page.evaluate("document.getElementById('player').currentTime")
    assert seek == pytest.approx(duration / 2, abs=0.25)
    shot(page, "job-done")

    expected = {"#dl-video": "video/mp4", "#dl-json": "application/json", "#dl-csv": "text/csv"}
    # The job is this browser's: the downloads go with its session cookie.
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    for selector, content_type in expected.items():
        href = page.get_attribute(selector, "href")
        assert href.startswith(f"/api/v1/jobs/{job_id}/")
        reply = httpx.get(f"{gateway}{href}", timeout=60, cookies=cookies)
        assert reply.status_code == 200, f"{selector} -> {reply.status_code}"
        assert reply.headers["content-type"].startswith(content_type)
        assert reply.headers.get("content-disposition", "").startswith("attachment")
        assert reply.content

    # The job is listed on the front page.
    page.goto(f"{gateway}/")
    page.wait_for_selector(f"a[href='/jobs/{job_id}']")
    shot(page, "upload-with-recent")


def test_a_file_dropped_on_the_page_is_chosen(page, gateway):
    page.goto(f"{gateway}/")
    dropped = page.evaluate_handle(
        """() => {
            const data = new DataTransfer();
            data.items.add(new File([new Uint8Array(2048)], "dropped.mp4", { type: "video/mp4" }));
            return data;
        }"""
    )
    page.dispatch_event("#dropzone", "dragover", {"dataTransfer": dropped})
    assert "dragover" in page.get_attribute("#dropzone", "class")
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": dropped})
    page.wait_for_selector("#file-row:not(.hidden)")
    assert page.text_content("#file-name") == "dropped.mp4"
    assert page.text_content("#file-size") == "2 KB"
    assert page.is_enabled("#upload-button")


def test_upload_page_sends_the_chosen_render_options(page, gateway, astronaut_video):
    page.goto(f"{gateway}/")
    assert page.is_checked("input[name=style][value=badge]") and not page.is_checked("#labels-input")
    page.check("input[name=style][value=cover]")
    page.check("#labels-input")
    page.set_input_files("#file-input", str(astronaut_video))
    page.click("#upload-button")
    page.wait_for_url("**/jobs/*", timeout=60_000)
    job_id = page.url.rstrip("/").split("/")[-1]
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    job = httpx.get(f"{gateway}/api/v1/jobs/{job_id}", cookies=cookies, timeout=30).json()
    assert job["options"] == {"style": "cover", "labels": True}


def test_upload_page_shows_the_servers_refusal_in_plain_words(page, gateway, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video\n" * 100)
    page.goto(f"{gateway}/")
    page.set_input_files("#file-input", str(notes))
    page.click("#upload-button")
    page.wait_for_selector("#upload-error:not(.hidden)", timeout=60_000)
    text = page.text_content("#upload-error")
    assert "refused" in text and "not a video we can read" in text
    shot(page, "upload-refused")


def test_upload_page_checks_the_size_limit_before_sending(browser, stack_env, service_logs, astronaut_video):
    # A second gateway with a limit smaller than the clip.
    env = {**stack_env, "EMOJI_MAX_UPLOAD_BYTES": "20000"}
    service, url = start_gateway(env, service_logs, name="gateway-small-limit")
    context = browser.new_context()
    try:
        page = context.new_page()
        posts: list[str] = []
        page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
        page.goto(f"{url}/")
        wait_until(page, "document.getElementById('limits-hint').textContent.includes('19.5 KB')")
        page.set_input_files("#file-input", str(astronaut_video))
        page.wait_for_selector("#upload-error:not(.hidden)")
        assert "over the 19.5 KB limit" in page.text_content("#upload-error")
        assert page.is_disabled("#upload-button")
        assert posts == [], "the page sent a file it knew was too large"
        shot(page, "upload-too-large")
    finally:
        context.close()
        service.stop()


def test_failed_job_page_shows_the_error_and_what_to_do(page, gateway, redis_url):
    store = JobStore.from_url(redis_url)
    job_id = "f" * 32
    store.create_for(
        browser_owner(page, gateway),
        job_id,
        "broken.mp4",
        {"frames": 50, "width": 640, "height": 480, "fps": 25.0, "duration_s": 2.0, "has_audio": False},
    )
    store.mark_failed(job_id, "model_server_unavailable", "the model server did not answer after 5 tries")
    try:
        page.goto(f"{gateway}/jobs/{job_id}")
        page.wait_for_selector("#job-error:not(.hidden)")
        text = page.text_content("#job-error")
        assert "the model server did not answer after 5 tries" in text.lower()
        assert "upload" in text.lower()
        assert page.text_content("#job-badge").strip() == "Failed"
        assert page.is_hidden("#result-card")
        shot(page, "job-failed")
    finally:
        store.delete(job_id)


def test_job_page_shows_the_frames_a_damaged_video_lost(page, gateway, redis_url):
    from common.jobs import JobWarning

    store = JobStore.from_url(redis_url)
    job_id = "9" * 32
    store.create_for(
        browser_owner(page, gateway),
        job_id,
        "damaged.mp4",
        {"frames": 100, "width": 320, "height": 240, "fps": 25.0, "duration_s": 4.0, "has_audio": False},
    )
    message = "frames 30-54 could not be decoded (the file is damaged there)"
    store.add_warning(job_id, "analyze:0", JobWarning(code="frames_lost", message=message, frames=[30, 54]))
    try:
        page.goto(f"{gateway}/jobs/{job_id}")
        page.wait_for_selector("#job-warnings:not(.hidden)")
        text = page.text_content("#job-warnings")
        assert "frames 30-54 could not be decoded" in text.lower()
        assert "frames_lost" in text
    finally:
        store.delete(job_id)


def test_unknown_job_page_says_so(page, gateway):
    page.goto(f"{gateway}/jobs/{'0' * 32}")
    page.wait_for_selector("#job-error:not(.hidden)")
    assert page.text_content("#job-title") == "Job not found"


def test_pages_fit_a_phone(browser, gateway):
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
    )
    try:
        page = context.new_page()
        pages = [("/", "phone-upload"), ("/live", "phone-live")]
        done = [
            j
            for j in httpx.get(f"{gateway}/api/v1/jobs", timeout=10).json()["jobs"]
            if j["status"] == "succeeded"
        ]
        if done:
            pages.append((done[0]["links"]["page"], "phone-job"))
        for path, name in pages:
            page.goto(f"{gateway}{path}")
            page.wait_for_load_state("networkidle")
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at phone width"
            shot(page, name)
    finally:
        context.close()


def test_live_page_draws_an_emoji_on_the_fake_cameras_face(page, live_gateway):
    page.goto(f"{live_gateway}/live")
    page.click("#start-button")
    wait_until(
        page,
        "window.liveState.answers >= 5 && window.liveState.facesSeen > 0 && window.liveState.emojiDrawn > 0",
        timeout=90_000,
    )
    state = page.evaluate("({...window.liveState, latencies: window.liveState.latencies.slice(-20)})")
    assert state["errors"] == []
    last = state["last"]
    assert last["width"] == 640 and last["height"] == 480
    assert last["faces"], "the last answer has no face although the fake camera shows one"
    face = last["faces"][0]
    assert face["shown_emotion"] in EMOTIONS
    # The emoji PNG (not the font fallback) loaded and is what was drawn.
    assert page.evaluate(f"emojiImage({face['shown_emotion']!r}).naturalWidth") > 0

    # Over the face, the canvas differs from the bare camera frame: the emoji covers it.
    diff = page.evaluate(
        """(box) => {
            const view = document.getElementById('view');
            const video = document.getElementById('camera');
            const [x1, y1, x2, y2] = box;
            const sx = view.width / 640, sy = view.height / 480;
            const left = Math.round(view.width - x2 * sx), top = Math.round(y1 * sy);
            const w = Math.round((x2 - x1) * sx), h = Math.round((y2 - y1) * sy);
            const shown = view.getContext('2d').getImageData(left, top, w, h).data;
            const bare = document.createElement('canvas');
            bare.width = view.width; bare.height = view.height;
            const ctx = bare.getContext('2d');
            ctx.setTransform(-1, 0, 0, 1, view.width, 0);
            ctx.drawImage(video, 0, 0, view.width, view.height);
            const raw = ctx.getImageData(left, top, w, h).data;
            let sum = 0; for (let i = 0; i < raw.length; i++) sum += Math.abs(raw[i] - shown[i]);
            return sum / raw.length;
        }""",
        face["box_xyxy"],
    )
    assert diff > 20, f"the face region looks like the bare camera frame (mean difference {diff:.1f})"
    latency = page.text_content("#stat-latency")
    assert latency.endswith("ms")
    shot(page, "live")


def test_live_page_explains_a_refused_camera(playwright, gateway):
    # No fake-UI flag: headless Chromium then refuses the camera, as a user clicking "Block" would.
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM, args=[*BASE_ARGS, "--use-fake-device-for-media-stream"]
    )
    try:
        page = browser.new_page()
        page.goto(f"{gateway}/live")
        page.click("#start-button")
        page.wait_for_selector("#live-error:not(.hidden)", timeout=30_000)
        text = page.text_content("#live-error")
        assert "camera was refused" in text and "Allow" in text
        shot(page, "live-refused")
    finally:
        browser.close()


def test_api_reference_works_offline(page, gateway):
    """/docs (linked from every page) loads Swagger UI from the gateway itself, not from a CDN."""
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{gateway}/docs")
    page.wait_for_selector(".opblock", timeout=15000)
    assert page.locator(".opblock").count() >= 5, "the API's operations are not listed"
    assert page.get_by_text("/api/v1/jobs").first.is_visible()
    outside = [url for url in requested if not url.startswith(gateway)]
    assert not outside, f"/docs fetched from outside the gateway: {outside}"
    shot(page, "api-docs")
