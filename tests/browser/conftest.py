"""Browser harness: the system's Chromium (Debian's package) driven by Playwright, no download.

Without Chromium the browser tests skip and say why, except under CI=true, where
they fail: CI installs Chromium (scripts/ensure-chromium, run by make test), so a skip
there would hide a gap.

The hub's Content-Security-Policy has no 'unsafe-eval': give page.wait_for_function a function
("() => ..."), which Playwright runs as such, never a bare expression, which it evals.
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

# A host name that is not localhost, resolved to the hubs of the tests: a page served from it
# over plain HTTP is not a secure context (no crypto.randomUUID, say), as on a LAN or dev host.
HOST_NAME = "hub.test"

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
    f"--host-resolver-rules=MAP {HOST_NAME} 127.0.0.1",
]

# Every page records the Content-Security-Policy violations it sees (the hub's policy, once it
# sends one, or one a test imposes); the devices fixture fails a test that had any.
_WATCH_CSP = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  const where = `${e.sourceFile}:${e.lineNumber}`;
  const text = `${e.effectiveDirective} blocked ${e.blockedURI || "?"} at ${where}`;
  window.cspViolations.push(text);
  window.reportCspViolation(text);
});
"""

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
        self.csp_violations: list[str] = []

    async def log_in(self, name: str = "alice") -> None:
        """Log in over HTTP, as a page would; the cookie lands in this context. (Playwright
        makes this request itself, without Chromium's host rules: not for HOST_NAME.)"""
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
    """Make devices: ``await devices(hub, **client_options)``, with ``host_name=HOST_NAME`` to
    reach the hub by that name; checks no page threw and no page broke its
    Content-Security-Policy."""
    made: list[Device] = []

    async def make(hub: Any, *, host_name: str | None = None, **options: Any) -> Device:
        context = await browser.new_context()
        base_url = hub.url if host_name is None else f"http://{host_name}:{hub.port}"
        device = Device(context, base_url)
        await context.expose_binding(
            "reportCspViolation", lambda _source, text: device.csp_violations.append(text)
        )

        def console(message: Any) -> None:
            # Chromium also logs each violation ("... violates the following Content Security
            # Policy directive ..."), even one the page's listener could not report.
            if "Content Security Policy" in message.text:
                device.csp_violations.append(message.text)

        context.on("console", console)
        await context.add_init_script(_WATCH_CSP)
        # The demo page passes window.hubOptions to its HubClient; record each tab's
        # initial id too, to see what a duplicated tab inherited.
        await context.add_init_script(
            f"window.hubOptions = {json.dumps(options)};"
            "window.initialTabId = sessionStorage.getItem('platform-hub.tab');"
        )
        made.append(device)
        return device

    yield make
    for device in made:
        await device.context.close()
    errors = [error for device in made for error in device.errors]
    assert not errors, f"uncaught errors in the page: {errors}"
    violations = [text for device in made for text in device.csp_violations]
    assert not violations, f"Content-Security-Policy violations: {violations}"
