"""Browser harness: the system's Chromium (Debian's package) driven by Playwright, no download.

Without Chromium the browser tests skip and say why, except under CI=true, where
they fail: CI installs Chromium (scripts/ensure-chromium, run by make test), so a skip
there would hide a gap.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import async_playwright, expect

CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# As root in a container Chromium needs --no-sandbox; the rest keep it off this machine's
# closed network (it would otherwise try to reach Google's hosts at every start).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Within this many milliseconds a change must show in every tab it concerns.
WITHIN_MS = 1000
# For steps whose time the test does not promise (page loads, reconnects).
PATIENCE_MS = 10_000


def _unavailable(reason: str) -> None:
    if CI:
        pytest.fail(f"{reason}; under CI=true the browser tests must run", pytrace=False)
    pytest.skip(reason)


def chromium_path() -> str | None:
    """The Chromium to drive: $HUB_CHROMIUM, else `chromium` (Debian) on PATH."""
    return (
        os.environ.get("HUB_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    path = chromium_path()
    if path is None:
        _unavailable("Chromium is not installed (Debian: apt-get install chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


class Device:
    """One browser context: a device with its own cookies and its own tabs of the demo page."""

    def __init__(self, context: Any, base_url: str) -> None:
        self.context = context
        self.base_url = base_url
        self.pages: list[Any] = []
        self.errors: list[str] = []

    async def log_in(self, name: str = "alice") -> None:
        """Log in over HTTP, as a page would; the cookie lands in this context."""
        response = await self.context.request.post(
            f"{self.base_url}/api/login",
            data={"username": name, "password": f"{name}-demo-pw"},
        )
        assert response.ok, await response.text()

    async def record_sockets(self) -> list[Any]:
        """Route this device's WebSockets to the hub through Playwright, and return the list
        their routes are added to, to close or write into them from the test."""
        routes: list[Any] = []

        def proxy(route: Any) -> None:
            routes.append(route)
            route.connect_to_server()

        await self.context.route_web_socket(re.compile(r".*/ws(\?.*)?$"), proxy)
        return routes

    async def open_tab(self, *, live: bool = True) -> Any:
        """Open the demo page in a new tab; with ``live``, wait until it is connected."""
        page = await self.context.new_page()
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        await page.goto(self.base_url + "/")
        if live:
            await expect(page.locator("#status")).to_have_text("Live", timeout=PATIENCE_MS)
        self.pages.append(page)
        return page


@pytest.fixture
async def devices(browser: Any) -> AsyncIterator[Any]:
    """Make devices: ``await devices(hub, **client_options)``; checks no page threw."""
    made: list[Device] = []

    async def make(hub: Any, **options: Any) -> Device:
        context = await browser.new_context()
        # The demo page passes window.hubOptions to its HubClient; record each tab's
        # initial id too, to see what a duplicated tab inherited.
        await context.add_init_script(
            f"window.hubOptions = {json.dumps(options)};"
            "window.initialTabId = sessionStorage.getItem('platform-hub.tab');"
        )
        device = Device(context, hub.url)
        made.append(device)
        return device

    yield make
    for device in made:
        await device.context.close()
    errors = [error for device in made for error in device.errors]
    assert not errors, f"uncaught errors in the page: {errors}"
