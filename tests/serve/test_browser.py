"""The web app in a real browser (Debian's Chromium through Playwright) over a copy of the demo table.

Decisions are read back through LanceDB itself, not through the app.
"""

from __future__ import annotations

import lancedb
import pytest

from clipline.serve.app import create_app
from clipline.serve.settings import ServeSettings
from tests.serve.browser import ARGS, chromium_executable
from tests.serve.conftest import TOKENS
from tests.serve.server import ThreadServer

TOKEN_OF = {name: token for token, name in TOKENS.items()}


@pytest.fixture(scope="module")
def browser():
    executable = chromium_executable()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def open_server(table_copy):
    """Loopback, no auth (the default)."""
    with ThreadServer(create_app(ServeSettings(db=table_copy, table="media", reviewer="tester"))) as url:
        yield url


@pytest.fixture(scope="module")
def token_server(table_copy):
    with ThreadServer(create_app(ServeSettings(db=table_copy, table="media", auth="token", tokens=TOKENS))) as url:
        yield url


def new_page(browser, url: str):
    context = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    return context.new_page()


def logged_in(browser, url: str, reviewer: str):
    page = new_page(browser, url)
    page.goto("/login?next=/queue")
    page.fill("#token", TOKEN_OF[reviewer])
    page.click("button[type=submit]")
    page.wait_for_url("**/queue")
    return page


def card_ids(page) -> list[str]:
    return page.locator("#results .card, #queue .card").evaluate_all("cards => cards.map(c => c.dataset.id)")


def stored(db: str, row_id: str) -> dict:
    return lancedb.connect(db).open_table("media").search().where(f"id = '{row_id}'").limit(1).to_list()[0]


def test_a_text_search_shows_the_demo_rows_that_match(browser, open_server, demo):
    page = new_page(browser, open_server)
    page.goto("/")
    page.fill("#q", "a photo of a red star.")
    page.press("#q", "Enter")
    page.wait_for_url("**/?q=*")
    found = card_ids(page)[:5]
    shown = [(demo.rows[row_id].get("shape"), demo.rows[row_id].get("colour")) for row_id in found]
    assert shown.count(("star", "red")) >= 4, shown
    decoded = page.locator("#results .card img").first.evaluate("img => img.complete && img.naturalWidth")
    assert decoded == 160  # the stored thumbnail, drawn
    page.context.close()


def test_an_uploaded_image_finds_its_original_at_rank_one(browser, open_server, demo):
    original = next(row for row in demo.rows.values() if row.get("kind") == "image" and row["id"].endswith("42"))
    page = new_page(browser, open_server)
    page.goto("/")
    page.set_input_files("#image", files=[{"name": "query.png", "mimeType": "image/png", "buffer": original["image"]}])
    page.click("#search-image")
    page.wait_for_url("**/search/image")
    assert card_ids(page)[0] == original["id"]
    assert "most like" in page.locator("#summary").inner_text()
    page.context.close()


def test_without_a_token_pages_and_the_api_are_refused(browser, token_server):
    page = new_page(browser, token_server)
    page.goto("/queue")
    assert "/login" in page.url and page.locator("#token").is_visible()
    assert page.context.request.get(f"{token_server}/api/search?q=a+star").status == 401
    assert page.context.request.get(f"{token_server}/api/queue").status == 401
    page.context.close()


def test_pressing_the_block_key_persists_the_reviewers_override(browser, token_server, table_copy):
    page = logged_in(browser, token_server, "alice")
    target = card_ids(page)[0]
    assert page.locator("#queue .card.focused").get_attribute("data-id") == target
    page.keyboard.press("b")
    page.locator("#toast-text").filter(has_text="Blocked 1 row").wait_for()
    row = stored(table_copy, target)
    assert row["override_decision"] == "block" and row["override_by"] == "alice" and row["decision"] == "block"
    page.context.close()


def test_two_reviewer_sessions_get_disjoint_rows(browser, token_server):
    alice = logged_in(browser, token_server, "alice")
    bob = logged_in(browser, token_server, "bob")
    alice.goto("/queue?size=6")
    bob.goto("/queue?size=6")
    mine, theirs = card_ids(alice), card_ids(bob)
    assert len(mine) == len(theirs) == 6 and not set(mine) & set(theirs)
    alice.reload()
    assert card_ids(alice) == mine  # reloading keeps the leased page
    alice.context.close()
    bob.context.close()
