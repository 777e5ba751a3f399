"""examples/host_app.py, the minimal host app, against a real hub in a real Chromium.

The host app logs people in with its own passwords and mints hub sessions through the host
API; its page loads navigation.js from the hub (another origin) and connects with that
session. Everything a person does here goes through both apps, as in a real integration.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.async_api import expect

from examples.host_app import create_app
from tests.browser.conftest import PATIENCE_MS, WITHIN_MS
from tests.conftest import RunningHub, make_settings, serve
from tests.support.processes import free_port

KEY = "example-key"


@pytest.fixture
async def apps(tmp_path: Path) -> AsyncIterator[tuple[RunningHub, str]]:
    """A hub that allows the host app's origin, and the host app beside it."""
    port = free_port()
    host_url = f"http://127.0.0.1:{port}"
    settings = make_settings(tmp_path, api_key=KEY, allowed_origins=(host_url,))
    async with serve(settings) as hub:
        config = uvicorn.Config(
            create_app(hub.url, KEY), host="127.0.0.1", port=port, log_level="warning"
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        try:
            async with asyncio.timeout(10):
                while not server.started:
                    if task.done():
                        task.result()  # it failed to start: say why
                    await asyncio.sleep(0.01)
            yield hub, host_url
        finally:
            server.should_exit = True
            await task


async def test_the_example_host_app_logs_in_switches_holds_and_logs_out(
    apps: tuple[RunningHub, str], devices: Any
) -> None:
    """Log in to the host app: two tabs connect to the hub with the minted session and show
    the host's platforms; a switch in one shows in the other; the caption job holds switches
    (the banner, a refused click) until it ends; logging out of the host app ends both tabs."""
    hub, host_url = apps
    device = await devices(hub)
    first = await device.context.new_page()
    first.on("pageerror", lambda error: device.errors.append(str(error)))
    await first.goto(host_url + "/")
    await first.fill("#username", "dana")
    await first.fill("#password", "dana-studio-pw")
    await first.click("#login")
    await expect(first.locator("#status")).to_have_text("open", timeout=PATIENCE_MS)
    second = await device.context.new_page()
    second.on("pageerror", lambda error: device.errors.append(str(error)))
    await second.goto(host_url + "/app")
    await expect(second.locator("#status")).to_have_text("open", timeout=PATIENCE_MS)
    for page in (first, second):
        await expect(page.locator(".platform")).to_have_text(
            [" Photos (@dana)", " Toots (@dana)"], timeout=WITHIN_MS
        )
    toots = await first.locator(".platform").nth(1).get_attribute("data-id")

    await first.bring_to_front()
    await first.locator(f'.platform[data-id="{toots}"] input').click()
    await expect(second.locator(f'.platform[data-id="{toots}"] input')).to_be_checked(
        timeout=WITHIN_MS
    )

    await first.click("#job")
    for page in (first, second):
        await expect(page.locator("#hold")).to_have_text(
            "Busy: Generating captions", timeout=WITHIN_MS
        )
    photos = await first.locator(".platform").nth(0).get_attribute("data-id")
    await first.locator(f'.platform[data-id="{photos}"] input').click()
    await expect(first.locator("#message")).to_contain_text(
        "Generating captions", timeout=WITHIN_MS
    )
    for page in (first, second):  # the job takes 3 s, then releases its hold
        await expect(page.locator("#hold")).to_be_hidden(timeout=PATIENCE_MS)

    await first.click("#logout")
    await expect(second.locator("#login")).to_be_visible(timeout=WITHIN_MS)
    for _ in range(100):  # the hub closed both tabs of the revoked session
        if not hub.hub.tabs():
            break
        await asyncio.sleep(0.05)
    assert hub.hub.tabs() == []
