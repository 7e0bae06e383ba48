"""The web backend's page in Chromium: users A and B signed in at once, in two browser contexts.

Each signs in with their own token, starts a conversation, sends, and watches the reply stream in.
Each page shows only its user's conversations and stream; A's codename never appears on B's page.
Screenshots (each page, and both side by side) go to ``tmp/screenshots/``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import CHROMIUM, CHROMIUM_ARGS
from web_fixture import ServiceThread

from helpers.run import TMP
from helpers.web.service import Settings

SHOTS = TMP / "screenshots"
CODENAMES = {"A": "AURORA-7", "B": "BOREAL-3"}
REPLY_TIMEOUT_MS = 60_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.runtime,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's Chromium at /usr/bin/chromium: apt-get install chromium",
    ),
]


@pytest.fixture(scope="module")
def web() -> Iterator[ServiceThread]:
    running = ServiceThread(Settings(turn_timeout_s=60))
    try:
        yield running
    finally:
        running.stop()


def sign_in(page, url: str, token: str) -> None:
    page.goto(url + "/")
    page.fill("#token", token)
    page.click("#signin button")
    page.wait_for_selector("#app:not([hidden])")


def test_two_users_at_once_each_see_only_their_own(web: ServiceThread) -> None:
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    tokens = {user: web.call(web.service.tokens.issue(user)) for user in CODENAMES}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            pages = {}
            for user in CODENAMES:
                context = browser.new_context(viewport={"width": 700, "height": 520})
                pages[user] = context.new_page()
                sign_in(pages[user], web.url, tokens[user])
                assert pages[user].text_content("#who") == user
                pages[user].click("#new")
                pages[user].wait_for_function(
                    "document.getElementById('conversations').options.length === 1"
                )
            for user, page in pages.items():  # both turns stream at the same time
                page.fill(
                    "#text", f"Wait 1 seconds, then remember: the codename is {CODENAMES[user]}."
                )
                page.click("#send")
            for page in pages.values():
                page.wait_for_selector(".assistant[data-done='1']", timeout=REPLY_TIMEOUT_MS)
            texts = {user: page.text_content("#log") or "" for user, page in pages.items()}
            deltas = {
                user: int(page.get_attribute(".assistant", "data-deltas") or 0)
                for user, page in pages.items()
            }
            options = {
                user: page.eval_on_selector_all(
                    "#conversations option", "os => os.map(o => o.value)"
                )
                for user, page in pages.items()
            }
            for user, page in pages.items():
                page.screenshot(path=str(SHOTS / f"web-user-{user.lower()}.png"))
            wrong = pages["B"]
            wrong.fill("#text", "What is the codename?")
            wrong.click("#send")
            wrong.wait_for_function(
                "document.querySelectorAll('.assistant[data-done=\"1\"]').length === 2",
                timeout=REPLY_TIMEOUT_MS,
            )
            b_after = wrong.text_content("body") or ""
        finally:
            browser.close()
    side_by_side(SHOTS / "web-user-a.png", SHOTS / "web-user-b.png", SHOTS / "web-two-users.png")
    assert CODENAMES["A"] in texts["A"] and CODENAMES["B"] in texts["B"]
    assert min(deltas.values()) >= 2, f"each reply streamed in as pieces: {deltas}"
    assert CODENAMES["A"] not in texts["B"] and CODENAMES["B"] not in texts["A"]
    assert CODENAMES["A"] not in b_after, "B's page never shows A's codename"
    for user in CODENAMES:
        assert options[user] == web.call(web.service.store.sessions_of(user)), "only their own"
        assert len(options[user]) == 1 and options[user][0].startswith(f"user-{user.lower()}-")


def side_by_side(left, right, out) -> None:
    """One image of two screenshots of the same size, left and right."""
    import matplotlib.image as image
    import numpy as np

    a, b = image.imread(left), image.imread(right)
    gap = np.ones((a.shape[0], 12, a.shape[2]), dtype=a.dtype)
    image.imsave(out, np.hstack([a, gap, b]))
