"""The demo page where pages tend to break: under the hub's Content-Security-Policy, over plain
HTTP off localhost (no secure context), with platform data that holds anything, and when the
client cannot start.

The devices fixture fails any test here (and everywhere) whose pages threw or broke a
Content-Security-Policy.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, Route, expect

from server.web.security_headers import CONTENT_SECURITY_POLICY
from tests.browser.conftest import HOST_NAME, PATIENCE_MS, WITHIN_MS
from tests.browser.test_client import choose, others, shows, state
from tests.conftest import RunningHub, make_settings, serve

Message = MutableMapping[str, Any]

TAB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
LONG = "W" * 5000


async def log_in_through_the_form(page: Page, name: str = "alice") -> None:
    await page.fill("#username", name)
    await page.fill("#password", f"{name}-demo-pw")
    await page.click("#login-button")


async def test_the_page_runs_under_the_hubs_content_security_policy(
    running: RunningHub, devices: Any
) -> None:
    """Under the CSP, nosniff and referrer headers the hub sends (server/web/security_headers.py)
    on the page and its files, the page loads styled, signs in, goes live over the WebSocket,
    switches and manages platforms without a single policy violation."""
    device = await devices(running)
    page = await device.context.new_page()
    page.on("pageerror", lambda error: device.errors.append(str(error)))
    loaded = await page.goto(running.url + "/")
    assert loaded is not None
    assert loaded.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert loaded.headers["x-content-type-options"] == "nosniff"
    for path, kind in [
        ("/client/demo.js", "javascript"),
        ("/client/navigation.js", "javascript"),
        ("/client/demo.css", "text/css"),
    ]:  # nosniff: a file of the wrong type would not run
        answer = await device.context.request.get(running.url + path)
        assert answer.ok and kind in answer.headers["content-type"], path

    await log_in_through_the_form(page)
    await expect(page.locator("#status")).to_have_text("Live", timeout=PATIENCE_MS)
    # demo.css applies: the badge of a live tab is green on green.
    badge = await page.eval_on_selector(
        "#status", "(e) => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor]"
    )
    assert badge == ["rgb(19, 122, 67)", "rgb(220, 245, 231)"]
    target = others(await state(page))[0]
    await choose(page, target)
    await shows(page, 1, target)
    await page.click("#manage summary")
    await expect(page.locator(".managed-row")).to_have_count(3, timeout=WITHIN_MS)
    await page.fill("#new-name", "Photos")
    await page.fill("#new-url", "https://pixey.org")
    await page.fill("#new-username", "alice_art")
    await page.click("#add-button")
    await expect(page.locator(".managed-row")).to_have_count(4, timeout=WITHIN_MS)
    await expect(page.locator("#message")).to_have_text("")

    assert await page.evaluate("window.cspViolations") == []
    assert device.csp_violations == []


@pytest.fixture
async def on_host_name(tmp_path: Path) -> AsyncIterator[RunningHub]:
    """A hub served under HOST_NAME as well (HUB_ALLOWED_HOSTS), as a dev host would be."""
    async with serve(make_settings(tmp_path, allowed_hosts=("127.0.0.1", HOST_NAME))) as hub:
        yield hub


async def test_the_page_works_over_plain_http_on_a_host_name_other_than_localhost(
    on_host_name: RunningHub, devices: Any
) -> None:
    """Served as http://hub.test:port (no secure context, so no crypto.randomUUID), the page
    signs in through its form, goes live with a valid tab id, and a switch reaches a second
    tab; nothing throws and no message appears."""
    running = on_host_name
    device = await devices(running, host_name=HOST_NAME)
    page = await device.open_tab(live=False)
    assert page.url.startswith(f"http://{HOST_NAME}:")
    assert await page.evaluate("[window.isSecureContext, typeof crypto.randomUUID]") == [
        False,
        "undefined",
    ]
    await log_in_through_the_form(page)
    await expect(page.locator("#status")).to_have_text("Live", timeout=PATIENCE_MS)
    other = await device.open_tab()
    for tab in (page, other):
        assert TAB_ID.fullmatch(await tab.evaluate("window.hub.tabId"))
    assert await page.evaluate("window.hub.tabId") != await other.evaluate("window.hub.tabId")

    target = others(await state(page))[0]
    await choose(page, target)
    for tab in (page, other):
        await shows(tab, 1, target)
    await expect(page.locator("#message")).to_have_text("")


async def test_a_page_that_cannot_start_says_why(running: RunningHub, devices: Any) -> None:
    """When the client cannot start (here the browser blocks storage), the page says the real
    cause after signing in, not that the hub cannot be reached."""
    device = await devices(running)
    await device.context.add_init_script(
        "Object.defineProperty(window, 'sessionStorage', {get() {"
        " throw new DOMException('Storage is blocked here.', 'SecurityError'); }});"
    )
    page = await device.open_tab(live=False)
    await log_in_through_the_form(page)
    await expect(page.locator("#message")).to_have_text(
        "The page failed: Storage is blocked here.", timeout=WITHIN_MS
    )
    await expect(page.locator("#message")).to_have_class("error")


def hostile_platforms() -> list[dict[str, Any]]:
    """Platform data a page must survive, whatever the hub validates: an invalid port, a name
    of 5000 characters, bidi overrides and combining marks, a lone surrogate, empty strings,
    wrong types, markup."""
    return [
        {"id": 9001, "name": "Bad port", "kind": "mastodon",
         "instance_url": "https://x:99999", "username": "alice", "is_default": True},
        {"id": 9002, "name": LONG, "kind": "pixelfed",
         "instance_url": "https://" + "a" * 3000 + ".example", "username": LONG},
        {"id": 9003, "name": "\u202egnp.exe\u202c مرحبا 👩‍👩‍👧 Z̤͔ͧ̑̓\u0000\u0007", "kind": "x",
         "instance_url": "https://bücher.example/@x", "username": "\ud83d"},
        {"id": 9004, "name": "", "kind": "", "instance_url": "", "username": "",
         "is_default": False},
        {"id": 9005, "name": None, "kind": None, "instance_url": ["https://a.example"],
         "username": 42, "is_default": "yes"},
        {"id": 9006, "name": "<img src=x onerror=alert(1)>", "kind": "mastodon",
         "instance_url": "javascript:alert(1)", "username": "<b>bob</b>"},
    ]  # fmt: skip


async def test_the_page_renders_any_platform_data_and_never_throws(
    running: RunningHub, devices: Any
) -> None:
    """A state (over the WebSocket) and a platform list (over HTTP) full of hostile platform
    data render a row for every platform, as text, within the page's width; nothing throws."""
    device = await devices(running)
    sockets = await device.record_sockets()
    platforms = hostile_platforms()

    async def hostile_list(route: Route) -> None:
        rows = [{**p, "is_active": i % 2 == 0} for i, p in enumerate(platforms)]
        # json.dumps escapes the lone surrogate, as JSON from the hub would (json= cannot).
        await route.fulfill(
            body=json.dumps({"version": 1, "platforms": rows}), content_type="application/json"
        )

    await device.context.route(running.url + "/api/platforms", hostile_list)
    await device.log_in()
    page = await device.open_tab()
    hostile = {"version": 1, "active": 9001, "platforms": platforms}
    cause = {"kind": "platforms", "tab": None, "request": "test"}
    sockets[0].send(json.dumps({"type": "state", "state": hostile, "cause": cause}))

    await expect(page.locator(".platform")).to_have_count(len(platforms), timeout=WITHIN_MS)
    await expect(page.locator(".platform .name")).to_have_text([
        "Bad port",
        "W" * 119 + "…",
        re.compile("^\u202egnp\\.exe\u202c مرحبا 👩‍👩‍👧 Z"),
        "Unnamed platform",
        "Unnamed platform",
        "<img src=x onerror=alert(1)>",
    ])  # fmt: skip
    await expect(page.locator(".platform .handle")).to_have_text([
        "@alice · https://x:99999",
        "@" + "W" * 119 + "… · " + "a" * 119 + "…",
        re.compile(r" · xn--bcher-kva\.example$"),
        "",
        "@42",
        "@<b>bob</b> · javascript:alert(1)",
    ])  # fmt: skip
    await expect(page.locator('.platform[data-id="9001"] input')).to_be_checked()
    await expect(page.locator("#version")).to_have_text("1")
    assert await page.locator("#platforms img, #platforms b").count() == 0
    assert await page.locator(".platform .name").nth(1).get_attribute("title") == LONG
    fits = "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    assert await page.evaluate(fits)

    await page.click("#manage summary")
    await expect(page.locator(".managed-row")).to_have_count(len(platforms), timeout=WITHIN_MS)
    await expect(page.locator(".managed-row .name").nth(0)).to_have_text("Bad port (default)")
    await expect(page.locator(".managed-row.inactive")).to_have_count(3)
    assert await page.evaluate(fits)
    await expect(page.locator("#message")).to_have_text("")


async def test_the_page_lists_the_persons_devices_and_signs_another_out(
    running: RunningHub, devices: Any
) -> None:
    """Alice on a laptop (two tabs) and a phone: each page says "Signed in on 2 devices", with
    the other's open tabs; "Sign out" on the phone's row from the laptop ends the phone's page
    at once, in the person's words, and the laptop's list is back to one device."""
    laptop, phone = await devices(running), await devices(running)
    await laptop.log_in()
    await phone.log_in()
    laptop_page = await laptop.open_tab()
    await laptop.open_tab()
    phone_page = await phone.open_tab()
    for page in (laptop_page, phone_page):
        await page.click("#devices-box summary")
        await expect(page.locator("#devices-title")).to_have_text(
            "Signed in on 2 devices", timeout=WITHIN_MS
        )
    # On the phone's page: the laptop's row (with a Sign out) and its own (without).
    other = phone_page.locator(".device", has=phone_page.locator("button"))
    own = phone_page.locator(".device", has_not=phone_page.locator("button"))
    await expect(other.locator(".when")).to_contain_text("2 tabs open", timeout=WITHIN_MS)
    await expect(own.locator(".when")).to_contain_text("this device · 1 tab open")
    # Both described from Chromium's own user agent.
    await expect(laptop_page.locator(".device .name").first).to_contain_text("Chrome")
    await laptop_page.click(".device button")  # the laptop's only Sign out: the phone's
    await expect(phone_page.locator("#login-view")).to_be_visible(timeout=WITHIN_MS)
    await expect(phone_page.locator("#message")).to_have_text(
        "Your session was ended. Sign in again to continue."
    )
    await expect(laptop_page.locator("#devices-title")).to_have_text(
        "Signed in on 1 device", timeout=WITHIN_MS
    )
    await expect(laptop_page.locator(".device button")).to_have_count(0)
    await expect(laptop_page.locator("#message")).to_have_text("")
