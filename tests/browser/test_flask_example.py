"""examples/flask_app.py, the sync server-rendered host app, against a real hub in Chromium,
on SQLite and on PostgreSQL.

Flask runs in its threaded WSGI server in a thread of the test, its sync HostClient calling
the hub, which serves on the test's event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import expect
from werkzeug.serving import make_server

from examples.flask_app import PEOPLE, create_app
from platform_hub_client import AsyncHostClient
from tests.browser.conftest import PATIENCE_MS, WITHIN_MS
from tests.conftest import ENDED_WORDS, MakeSettings, RunningHub, serve
from tests.support.processes import free_port

KEY = "flask-example-key"


@pytest.fixture
async def apps(make_on_each_engine: MakeSettings) -> AsyncIterator[tuple[RunningHub, str]]:
    """A hub that allows the Flask app's origin, and the Flask app beside it."""
    port = free_port()
    app_url = f"http://127.0.0.1:{port}"
    settings = make_on_each_engine(api_key=KEY, allowed_origins=(app_url,))
    async with serve(settings) as hub:
        app = create_app(hub.url, KEY, job_seconds=1.5)
        server = make_server("127.0.0.1", port, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield hub, app_url
        finally:
            await asyncio.to_thread(server.shutdown)
            server.server_close()
            app.extensions["hub"].close()
            PEOPLE["ines"].captions.clear()


async def log_in(page: Any, app_url: str) -> None:
    await page.goto(app_url + "/")
    await expect(page).to_have_url(app_url + "/login")
    await page.fill("#username", "ines")
    await page.fill("#password", "ines-studio-pw")
    await page.click("#login")
    await expect(page.locator("#status")).to_have_text("live", timeout=PATIENCE_MS)


async def test_the_flask_app_renders_switches_holds_and_logs_out_without_a_race(
    apps: tuple[RunningHub, str], devices: Any
) -> None:
    """Two tabs of the Flask app: the active platform is rendered server-side and mapped to
    the app's own account by external id; a switch in one tab shows in the other; the
    caption job holds switches and writes captions for the account active when it began;
    logging out of the second tab ends both, clears the app's session (the cookie-clearing
    response is not cancelled, even when it arrives after the hub's session_ended) and lands
    on a login form that stays put."""
    hub, app_url = apps
    device = await devices(hub)
    first = await device.context.new_page()
    first.on("pageerror", lambda error: device.errors.append(str(error)))
    await log_in(first, app_url)
    second = await device.context.new_page()
    second.on("pageerror", lambda error: device.errors.append(str(error)))
    await second.goto(app_url + "/")
    await expect(second.locator("#status")).to_have_text("live", timeout=PATIENCE_MS)
    for page in (first, second):
        await expect(page.locator("#platform option")).to_have_text(["Photos", "Toots"])
        await expect(page.locator("#active")).to_have_text("Photos")
    assert await first.locator("#platform option").evaluate_all(
        "(options) => options.map((o) => o.dataset.externalId)"
    ) == ["101", "102"]

    toots = await first.locator("#platform option").nth(1).get_attribute("value")
    assert toots is not None
    await first.bring_to_front()
    await first.select_option("#platform", toots)
    await expect(second.locator("#platform")).to_have_value(toots, timeout=WITHIN_MS)
    await expect(second.locator("#active")).to_have_text("Toots", timeout=WITHIN_MS)
    rendered = await device.context.request.get(app_url + "/")  # the server's own rendering
    assert '<strong id="active">Toots</strong>' in await rendered.text()

    await first.click("#job")
    for page in (first, second):
        await expect(page.locator("#hold")).to_have_text(
            "Busy: Generating captions", timeout=WITHIN_MS
        )
        await expect(page.locator("#platform")).to_be_disabled()
        await expect(page.locator("#job")).to_be_disabled()
    photos = await first.locator("#platform option").nth(0).get_attribute("value")
    assert photos is not None
    decision = await second.evaluate("(id) => window.hub.switchPlatform(id)", int(photos))
    assert (decision["ok"], decision["reason"]) == (False, "busy")
    await expect(second.locator("#message")).to_have_text("")  # the banner says it once
    again = await first.evaluate("() => fetch('/captions', {method: 'POST'}).then(r => r.status)")
    assert again == 409  # one job at a time: a second would replace the first one's hold
    for page in (first, second):  # the job ends, releases its hold, and the page re-renders
        await expect(page.locator("#captions li")).to_have_text(
            ["Captions for Toots (#102)"], timeout=PATIENCE_MS
        )
        await expect(page.locator("#platform")).to_be_enabled(timeout=PATIENCE_MS)

    # The logout race: the app's answer to POST /logout reaches the browser 0.5 s late (a slow
    # network, an app that does more after revoking), so the hub's session_ended comes first.
    async def late(route: Any) -> None:
        answer = await route.fetch()
        await asyncio.sleep(0.5)
        await route.fulfill(response=answer)

    await device.context.route("**/logout", late)
    await second.bring_to_front()
    await second.click("#logout")
    for page in (first, second):
        await expect(page.locator("#login")).to_be_visible(timeout=PATIENCE_MS)
        await expect(page.locator("#error")).to_have_text(ENDED_WORDS["logout"])
    cookies = {c["name"] for c in await device.context.cookies()}
    assert not cookies & {"session", "hub_session"}, cookies
    await first.goto(app_url + "/")  # no loop: the login form, and it stays
    await expect(first).to_have_url(app_url + "/login")
    await asyncio.sleep(0.5)
    await expect(first.locator("#login")).to_be_visible()
    assert not hub.hub.tabs()


async def test_a_hub_session_ended_elsewhere_ends_the_flask_login_without_a_loop(
    apps: tuple[RunningHub, str], devices: Any
) -> None:
    """The hub ends the session on its own (revoked by an administrator through the host
    API): the tab shows the revoked words on the app's login form, the app's session is gone
    too, and /login does not send the person back to a page that would end again."""
    hub, app_url = apps
    device = await devices(hub)
    page = await device.context.new_page()
    page.on("pageerror", lambda error: device.errors.append(str(error)))
    await log_in(page, app_url)
    async with AsyncHostClient(hub.url, KEY) as host:
        (live,) = (await host.sessions("ines")).sessions
        await host.revoke_session("ines", live.id)
    await expect(page.locator("#error")).to_have_text(ENDED_WORDS["revoked"], timeout=WITHIN_MS)
    await page.goto(app_url + "/")
    await expect(page).to_have_url(app_url + "/login")
    await asyncio.sleep(0.5)
    await expect(page.locator("#login")).to_be_visible()
    assert "session" not in {c["name"] for c in await device.context.cookies()}
