"""Two browsers in real headless Chromium: each sees only its own jobs, on `/` and on `/jobs/{id}`, and no
page breaks its Content-Security-Policy. Screenshots of `/` for both go to tests/artifacts/."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def playwright():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing; `make install` installs Debian's chromium")
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    yield browser
    browser.close()


def _context(browser):
    """A fresh browser profile (its own cookies); its pages collect JavaScript and CSP errors."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.problems = []

    def watch(page):
        page.on("pageerror", lambda exc: context.problems.append(str(exc)))
        page.on("console", lambda msg: msg.type == "error" and "Content Security Policy" in msg.text
                and context.problems.append(msg.text))

    context.on("page", watch)
    return context


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_a_second_browser_sees_none_of_the_first_ones_jobs(browser, gateway, astronaut_video):
    first, second = _context(browser), _context(browser)
    try:
        mine = first.new_page()
        mine.goto(f"{gateway}/")
        mine.set_input_files("#file-input", str(astronaut_video))
        mine.click("#upload-button")
        mine.wait_for_url("**/jobs/*", timeout=60_000)
        job_id = mine.url.rstrip("/").split("/")[-1]
        mine.wait_for_selector("#job-title:not(:text('Loading…'))")
        assert mine.text_content("#job-title") != "Job not found"
        mine.goto(f"{gateway}/")
        mine.wait_for_selector(f"a[href='/jobs/{job_id}']")
        shot(mine, "owners-first-browser")

        theirs = second.new_page()
        theirs.goto(f"{gateway}/")
        theirs.wait_for_selector("#recent-jobs li:not(:text('Loading…'))")
        assert theirs.locator(f"a[href='/jobs/{job_id}']").count() == 0
        assert "Nothing yet" in theirs.text_content("#recent-jobs")
        shot(theirs, "owners-second-browser")
        # Even with the link, the job is not there for the second browser.
        answer = theirs.goto(f"{gateway}/jobs/{job_id}")
        assert answer.status == 404
        theirs.wait_for_selector("#job-error:not(.hidden)")
        assert theirs.text_content("#job-title") == "Job not found"
        assert theirs.locator("#player").evaluate("v => v.currentSrc") == ""

        # The pages keep to their Content-Security-Policy (no inline script, nothing from elsewhere).
        for path in ("/live", "/docs"):
            theirs.goto(f"{gateway}{path}")
        theirs.wait_for_selector(".opblock", timeout=15_000)
        assert first.problems == [] and second.problems == [], first.problems + second.problems

        # The first browser deletes its job from its own page's API; the second cannot.
        status = theirs.evaluate(f"fetch('/api/v1/jobs/{job_id}', {{method: 'DELETE'}}).then(r => r.status)")
        assert status == 404
        status = mine.evaluate(f"fetch('/api/v1/jobs/{job_id}', {{method: 'DELETE'}}).then(r => r.status)")
        assert status == 204
    finally:
        first.close()
        second.close()


# Exactly the page's "Connected." (text-is): `:text('Connected')` is a case-insensitive substring match,
# which the initial "Not connected." already satisfies.
CONNECTED = "#live-status:text-is('Connected.')"


def test_a_browser_over_its_live_viewer_limit_is_told_so(playwright, stack_env, service_logs, worker):
    """With one live page allowed per browser, the second page of the same browser says which limit."""
    from tests.conftest import start_gateway

    service, url = start_gateway({**stack_env, "EMOJI_ANON_MAX_LIVE_VIEWERS": "1"}, service_logs,
                                 "gateway-live-limit")
    args = [*ARGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
    try:
        context = _context(browser)
        first, second = context.new_page(), context.new_page()
        for page in (first, second):
            page.goto(f"{url}/live")
        first.click("#start-button")
        first.wait_for_selector(CONNECTED, timeout=30_000)
        second.click("#start-button")
        # Refused or (wrongly) admitted: either way the page settles, and a failure says which.
        second.wait_for_function(
            "() => !document.querySelector('#live-error').classList.contains('hidden')"
            " || document.querySelector('#live-status').textContent.startsWith('Connected')",
            timeout=60_000,
        )
        status = second.text_content("#live-status")
        viewers = [line for line in service.log_tail(20_000).splitlines() if "live viewer" in line]
        assert second.is_visible("#live-error"), (
            f"the second page was not refused; it says {status!r}, the first says "
            f"{first.text_content('#live-status')!r}; the gateway's viewers: {viewers}"
        )
        text = second.text_content("#live-error")
        assert "Too many live pages open" in text and "1 live page open, your limit is 1" in text
        shot(second, "live-over-limit")
        # The first page is still connected; a second browser has its own allowance.
        assert first.is_hidden("#live-error")
        other = _context(browser).new_page()
        other.goto(f"{url}/live")
        other.click("#start-button")
        other.wait_for_selector(CONNECTED, timeout=30_000)
        assert context.problems == []
    finally:
        browser.close()
        service.stop()


def test_where_keys_are_required_a_browser_signs_in_with_a_key(browser, stack_env, service_logs, redis_url):
    """The page sends the browser to the sign-in form; a wrong key is told so; the right one brings the
    browser back to where it was going, acting as the key's owner."""
    from tests.conftest import start_gateway
    from tests.keys_helpers import create_key

    dave = create_key(redis_url, "dave")
    service, url = start_gateway({**stack_env, "EMOJI_REQUIRE_API_KEY": "true"}, service_logs,
                                 "gateway-sign-in")
    context = _context(browser)
    try:
        page = context.new_page()
        page.goto(f"{url}/live")
        assert page.url == f"{url}/sign-in?next=%2Flive"
        page.fill("#key-input", "ek_" + "x" * 43)
        page.click("#sign-in-button")
        page.wait_for_selector("#sign-in-error:not(.hidden)", timeout=10_000)
        assert "not valid" in page.text_content("#sign-in-error")
        page.fill("#key-input", dave["key"])
        page.click("#sign-in-button")
        page.wait_for_url(f"{url}/live", timeout=10_000)
        me = page.evaluate("fetch('/api/v1/me').then(r => r.json())")
        assert me["kind"] == "key" and me["owner"] == f"key:{dave['id']}"
        page.goto(f"{url}/sign-in")
        page.wait_for_selector("#signed-in-as:text-is('Signed in with the key “dave”.')", timeout=10_000)
        shot(page, "sign-in")
        assert context.problems == []
    finally:
        context.close()
        service.stop()
