"""client/navigation.js and the demo page in a real Chromium, against a real hub on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiosqlite
import httpx
import pytest
from playwright.async_api import Page, expect
from sqlalchemy import Connection, Row, select

from platform_hub_client import AsyncHostClient
from server import db
from server.settings import Settings
from tests.browser.conftest import PATIENCE_MS, WITHIN_MS
from tests.conftest import RunningHub, make_settings, serve


def platform(page: Page, platform_id: int) -> Any:
    return page.locator(f'.platform[data-id="{platform_id}"]')


async def choose(page: Page, platform_id: int) -> None:
    """Click a platform, in the front tab as a person would (background tabs get no frames)."""
    await page.bring_to_front()
    await platform(page, platform_id).click()


async def shows(page: Page, version: int, active: int, within_ms: int = WITHIN_MS) -> None:
    """Wait until ``page`` shows ``version`` with ``active`` checked and nothing pending."""
    await expect(page.locator("#version")).to_have_text(str(version), timeout=within_ms)
    await expect(platform(page, active).locator("input")).to_be_checked(timeout=within_ms)
    await expect(page.locator(".tag.pending")).to_have_count(0, timeout=within_ms)


async def state(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate("window.hub.state")
    return result


def others(current: dict[str, Any]) -> list[int]:
    return [p["id"] for p in current["platforms"] if p["id"] != current["active"]]


async def switch_log(hub: RunningHub, user_id: int) -> list[Row[Any]]:
    log = db.switch_log
    query = select(log).where(log.c.user_id == user_id).order_by(log.c.version)

    def rows(connection: Connection) -> list[Row[Any]]:
        return list(connection.execute(query))

    return await hub.database.read(rows)


async def test_a_switch_in_one_tab_shows_in_the_others(running: RunningHub, devices: Any) -> None:
    """Log in through the form; three tabs; a click in one shows in the other two within 1 s."""
    device = await devices(running)
    first = await device.context.new_page()
    await first.goto(running.url + "/")
    await first.fill("#username", "alice")
    await first.fill("#password", "alice-demo-pw")
    await first.click("#login-button")
    await expect(first.locator("#status")).to_have_text("Live", timeout=PATIENCE_MS)
    tabs = [first, await device.open_tab(), await device.open_tab()]
    before = await state(first)
    assert before["version"] == 0
    target = others(before)[0]

    await choose(first, target)
    # Optimistic: the clicked tab shows the target at once, marked pending, before the hub says.
    await expect(platform(first, target).locator("input")).to_be_checked()
    for tab in tabs:
        await shows(tab, 1, target)
    assert await first.locator("#message").text_content() == ""
    # The token is an HttpOnly cookie: page scripts, and so other tabs, never see it.
    assert "hub_session" not in await first.evaluate("document.cookie")


async def test_rapid_clicks_send_only_the_last_choice(running: RunningHub, devices: Any) -> None:
    """Ten clicks in a row coalesce into one switch; every tab ends on the last choice."""
    device = await devices(running, debounceMs=600)
    await device.log_in()
    tabs = [await device.open_tab(), await device.open_tab()]
    first = tabs[0]
    start = await state(first)
    ids = [p["id"] for p in start["platforms"]]
    clicks = [ids[(i + 1) % len(ids)] for i in range(10)]
    assert clicks[-1] != start["active"]

    for choice in clicks:
        await choose(first, choice)
    await expect(platform(first, clicks[-1]).locator(".tag")).to_have_text("Switching…")
    for tab in tabs:
        await shows(tab, 1, clicks[-1], within_ms=PATIENCE_MS)

    user_id = (await first.evaluate("window.hub.user"))["id"]
    log = await switch_log(running, user_id)
    assert [(row.accepted, row.version) for row in log] == [(True, 1)]
    assert (await running.hub.store.load_state(user_id)).active == clicks[-1]


async def test_simultaneous_switches_converge_and_the_loser_says_why(
    running: RunningHub, devices: Any, settings: Settings
) -> None:
    """Two tabs switch while the database is locked: one wins, both converge, one explains."""
    device = await devices(running, debounceMs=0)
    await device.log_in()
    left, right = await device.open_tab(), await device.open_tab()
    start = await state(left)
    a, b = others(start)[:2]

    # Hold the write lock so both requests are decided against the same version.
    path = settings.database_url.split("///", 1)[1]
    async with aiosqlite.connect(path) as blocker:
        await blocker.execute("BEGIN IMMEDIATE")
        await choose(left, a)
        await choose(right, b)
        for tab in (left, right):
            await tab.wait_for_function("() => window.hub.switcher.inFlight !== null")
        await asyncio.sleep(0.2)  # let both requests reach the hub and wait on the lock
        await blocker.rollback()
    for tab in (left, right):
        await tab.wait_for_function("() => window.hub.switcher.inFlight === null")

    user_id = (await left.evaluate("window.hub.user"))["id"]
    final = await running.hub.store.load_state(user_id)
    assert final.version == 1 and final.active in {a, b}
    winner, loser = (left, right) if final.active == a else (right, left)
    name = next(p for p in final.platforms if p.id == final.active)
    for tab in (winner, loser):
        await shows(tab, 1, final.active)
    await expect(loser.locator("#message")).to_have_text(
        f"Switched to {name.name} @{name.username} in another tab."
    )
    await expect(winner.locator("#message")).to_have_text("")
    log = await switch_log(running, user_id)
    assert sorted((row.accepted, row.reason) for row in log) == [(False, "stale"), (True, None)]


async def test_tabs_resync_after_a_restart_and_a_switch_made_meanwhile_applies_once(
    tmp_path: Path, devices: Any
) -> None:
    """Stop the hub: tabs show reconnecting. A click while it is down applies once on return."""
    settings = make_settings(tmp_path)
    fast = {"baseDelayMs": 100, "maxDelayMs": 800}
    async with serve(settings) as first:
        device = await devices(first, **fast)
        await device.log_in()
        tabs = [await device.open_tab(), await device.open_tab()]
        start = await state(tabs[0])
        user_id = (await tabs[0].evaluate("window.hub.user"))["id"]
        port = first.port
    for tab in tabs:
        await expect(tab.locator("#status")).to_have_text("Reconnecting…", timeout=WITHIN_MS)
    target = others(start)[0]
    await platform(tabs[0], target).click()
    await expect(platform(tabs[0], target).locator(".tag")).to_have_text("Switching…")

    async with serve(settings, port=port) as second:
        for tab in tabs:
            await expect(tab.locator("#status")).to_have_text("Live", timeout=PATIENCE_MS)
            await shows(tab, start["version"] + 1, target, within_ms=PATIENCE_MS)
        log = await switch_log(second, user_id)
        assert [(row.accepted, row.version) for row in log] == [(True, start["version"] + 1)]


async def test_logout_ends_this_browser_only_and_logout_all_ends_every_device(
    running: RunningHub, devices: Any
) -> None:
    """Logout reaches every tab of the browser within 1 s; another device stays signed in."""
    laptop, phone = await devices(running), await devices(running)
    await laptop.log_in()
    await phone.log_in()
    laptop_tabs = [await laptop.open_tab(), await laptop.open_tab()]
    phone_tab = await phone.open_tab()

    await laptop_tabs[0].click("#logout")
    for tab in laptop_tabs:
        await expect(tab.locator("#login-view")).to_be_visible(timeout=WITHIN_MS)
        await expect(tab.locator("#message")).to_have_text("You are signed out.")
    await expect(phone_tab.locator("#status")).to_have_text("Live")
    target = others(await state(phone_tab))[0]
    await choose(phone_tab, target)
    await shows(phone_tab, 1, target)

    # Signing in again in one tab brings the browser's other tab back too.
    await laptop_tabs[1].fill("#username", "alice")
    await laptop_tabs[1].fill("#password", "alice-demo-pw")
    await laptop_tabs[1].click("#login-button")
    for tab in laptop_tabs:
        await expect(tab.locator("#status")).to_have_text("Live", timeout=PATIENCE_MS)
        await shows(tab, 1, target)

    await phone_tab.click("#logout-all")
    for tab in [*laptop_tabs, phone_tab]:
        await expect(tab.locator("#login-view")).to_be_visible(timeout=WITHIN_MS)
    assert running.hub.tabs() == []


async def test_expiry_warns_offers_to_stay_and_then_signs_out(tmp_path: Path, devices: Any) -> None:
    """A short idle TTL: the warning, "stay signed in" moves the expiry, then expiry signs out."""
    settings = make_settings(tmp_path, session_idle_s=4, session_warning_s=3, session_touch_s=60)
    async with serve(settings) as hub:
        device = await devices(hub)
        await device.log_in()
        tab = await device.open_tab()
        first_expiry = await tab.evaluate("window.hub.expiresAt")
        await expect(tab.locator("#expiry")).to_be_visible(timeout=PATIENCE_MS)
        await expect(tab.locator("#expiry-text")).to_contain_text("Your session expires at")

        await tab.click("#stay")
        await expect(tab.locator("#expiry")).to_be_hidden(timeout=WITHIN_MS)
        assert await tab.evaluate("window.hub.expiresAt") > first_expiry

        await expect(tab.locator("#login-view")).to_be_visible(timeout=PATIENCE_MS)
        await expect(tab.locator("#message")).to_have_text(
            "Your session expired. Sign in again to continue."
        )


async def test_a_duplicated_tab_takes_its_own_id(running: RunningHub, devices: Any) -> None:
    """window.open copies sessionStorage, like "duplicate tab": the copy takes a new id."""
    device = await devices(running)
    await device.log_in()
    original = await device.open_tab()
    original_id = await original.evaluate("window.hub.tabId")

    async with device.context.expect_page() as opened:
        await original.evaluate("window.open('/')")
    duplicate = await opened.value
    await expect(duplicate.locator("#status")).to_have_text("Live", timeout=PATIENCE_MS)

    assert await duplicate.evaluate("window.initialTabId") == original_id  # it did clash
    duplicate_id = await duplicate.evaluate("window.hub.tabId")
    assert duplicate_id != original_id
    assert await original.evaluate("window.hub.tabId") == original_id
    assert sorted(tab.id for tab in running.hub.tabs()) == sorted([original_id, duplicate_id])
    # The original kept its connection: it never saw a 4005 and never reconnected.
    await expect(original.locator("#status")).to_have_text("Live")

    # A reload keeps the tab's id.
    await duplicate.reload()
    await expect(duplicate.locator("#status")).to_have_text("Live", timeout=PATIENCE_MS)
    assert await duplicate.evaluate("window.hub.tabId") == duplicate_id


async def test_degraded_mode_switches_over_http_and_returns_to_the_websocket(
    running: RunningHub, devices: Any
) -> None:
    """With upgrades blocked (a proxy, say) the page falls back to HTTP and keeps working."""
    device = await devices(
        running, degradedAfter=2, baseDelayMs=50, maxDelayMs=400, pollIntervalMs=300
    )
    blocked = True

    async def proxy(route: Any) -> None:
        if blocked:
            await route.close(code=1011, reason="upgrade blocked")
        else:
            route.connect_to_server()

    await device.context.route_web_socket(re.compile(r".*/ws(\?.*)?$"), proxy)
    await device.log_in()
    tab = await device.open_tab(live=False)
    await expect(tab.locator("#status")).to_have_text("Live (HTTP fallback)", timeout=PATIENCE_MS)
    start = await state(tab)
    user_id = (await tab.evaluate("window.hub.user"))["id"]

    target = others(start)[0]
    await choose(tab, target)
    await shows(tab, 1, target, within_ms=PATIENCE_MS)
    assert (await running.hub.store.load_state(user_id)).active == target

    # A switch made elsewhere reaches the degraded tab by polling.
    token = await running.login("alice")
    elsewhere = others({"platforms": start["platforms"], "active": target})[0]
    async with running.http(token) as http:
        answer = await http.post("/api/switch", json={"id": "r2", "platform": elsewhere, "base": 1})
    assert answer.status_code == httpx.codes.OK, answer.text
    await shows(tab, 2, elsewhere, within_ms=PATIENCE_MS)

    blocked = False
    await expect(tab.locator("#status")).to_have_text("Live", timeout=PATIENCE_MS)
    assert [t.id for t in running.hub.tabs()] == [await tab.evaluate("window.hub.tabId")]


@pytest.mark.parametrize("channel", ["BroadcastChannel", "storage events"])
async def test_a_reconnecting_tab_still_shows_the_newest_state(
    running: RunningHub, devices: Any, channel: str
) -> None:
    """Tabs share states among themselves, so a tab cut off from the hub still follows."""
    device = await devices(running, baseDelayMs=5000, maxDelayMs=5000)
    if channel == "storage events":
        await device.context.add_init_script("delete window.BroadcastChannel;")
    await device.log_in()
    live = await device.open_tab()
    cut_off = await device.context.new_page()
    sockets: list[Any] = []
    blocked = False

    async def proxy(route: Any) -> None:
        if blocked:
            await route.close(code=1011, reason="cut off")
        else:
            sockets.append(route)
            route.connect_to_server()

    await cut_off.route_web_socket(re.compile(r".*/ws(\?.*)?$"), proxy)
    await cut_off.goto(running.url + "/")
    await expect(cut_off.locator("#status")).to_have_text("Live", timeout=PATIENCE_MS)
    assert await cut_off.evaluate("typeof BroadcastChannel") == (
        "function" if channel == "BroadcastChannel" else "undefined"
    )

    # Cut the tab off: its socket drops and its HTTP probes fail.
    await cut_off.route("**/api/state", lambda route: route.abort())
    blocked = True
    await sockets[0].close(code=1012, reason="cut off")
    await expect(cut_off.locator("#status")).to_have_text("Reconnecting…", timeout=WITHIN_MS)

    target = others(await state(live))[0]
    await choose(live, target)
    await shows(live, 1, target)
    await shows(cut_off, 1, target)
    assert await cut_off.evaluate("window.hub.status") == "reconnecting"


async def test_a_link_that_stops_answering_pings_is_dropped_and_replaced(
    tmp_path: Path, devices: Any
) -> None:
    """A dead link must not look alive: no pong within the timeout, and the tab reconnects."""
    settings = make_settings(tmp_path, heartbeat_s=0.3)
    async with serve(settings) as hub:
        device = await devices(hub, pongTimeoutMs=500, baseDelayMs=50, maxDelayMs=200)
        connections: list[Any] = []

        def proxy(route: Any) -> None:
            server = route.connect_to_server()
            connections.append(route)
            first = len(connections) == 1
            route.on_message(server.send)

            def from_hub(message: str | bytes) -> None:
                # The first connection goes silent after its hello: the link is dead.
                if not first or '"hello"' in str(message):
                    route.send(message)

            server.on_message(from_hub)

        await device.context.route_web_socket(re.compile(r".*/ws(\?.*)?$"), proxy)
        await device.log_in()
        tab = await device.open_tab()
        await tab.evaluate(
            "window.statuses = [];"
            "hub.addEventListener('status', (e) => statuses.push(e.detail.status));"
        )
        await tab.wait_for_function(
            "() => statuses.join() === 'reconnecting,open'", timeout=PATIENCE_MS
        )
        assert len(connections) == 2
        # The replacement link works: a switch goes through it.
        target = others(await state(tab))[0]
        await choose(tab, target)
        await shows(tab, 1, target)


async def test_the_page_works_from_the_keyboard(running: RunningHub, devices: Any) -> None:
    """Sign in and switch with the keyboard alone; status changes are announced."""
    device = await devices(running, debounceMs=300)
    page = await device.context.new_page()
    await page.goto(running.url + "/")
    await expect(page.locator("#username")).to_be_focused()
    await page.keyboard.type("alice")
    await page.keyboard.press("Tab")
    await page.keyboard.type("alice-demo-pw")
    await page.keyboard.press("Enter")
    await expect(page.locator("#status")).to_have_text("Live", timeout=PATIENCE_MS)
    start = await state(page)

    await page.keyboard.press("Tab")  # into the radio group, on the checked platform
    await expect(platform(page, start["active"]).locator("input")).to_be_focused()
    await page.keyboard.press("ArrowDown")
    await page.keyboard.press("ArrowDown")
    ids = [p["id"] for p in start["platforms"]]
    target = ids[(ids.index(start["active"]) + 2) % len(ids)]
    await shows(page, 1, target, within_ms=PATIENCE_MS)
    assert await page.get_by_role("status").count() >= 1
    assert await page.locator("[aria-live=polite]").count() == 2
    assert await page.get_by_label("User name").count() == 1


@pytest.mark.parametrize("signal", ["online", "visible"])
async def test_coming_back_online_or_visible_reconnects_at_once(
    running: RunningHub, devices: Any, signal: str
) -> None:
    """The `online` event and the page becoming visible cut the backoff wait short."""
    # A backoff drawn from [0, 30 s): without the signal the tab would most likely still wait.
    device = await devices(running, baseDelayMs=30_000, maxDelayMs=30_000)
    sockets = await device.record_sockets()
    await device.log_in()
    tab = await device.open_tab()
    await sockets[0].close(code=1012, reason="hub restarting")
    await expect(tab.locator("#status")).to_have_text("Reconnecting…", timeout=WITHIN_MS)

    if signal == "online":
        await tab.evaluate("window.dispatchEvent(new Event('online'))")
    else:
        await tab.evaluate(
            "Object.defineProperty(document, 'visibilityState', {value: 'visible'});"
            "document.dispatchEvent(new Event('visibilitychange'))"
        )
    await expect(tab.locator("#status")).to_have_text("Live", timeout=WITHIN_MS)
    assert len(sockets) == 2


async def test_the_demo_page_manages_platforms_and_every_tab_follows(
    running: RunningHub, devices: Any
) -> None:
    """Connect a platform through the page's form, make it the default, deactivate the active
    one: the other tab's choices follow each change, the active choice moves to the default,
    and deleting the last active platform is refused with the hub's sentence."""
    device = await devices(running)
    await device.log_in("bob")
    page, other = await device.open_tab(), await device.open_tab()
    start = await state(page)
    assert [p["name"] for p in start["platforms"]] == ["Mastodon", "Pixelfed"]
    await page.bring_to_front()
    await page.click("#manage summary")
    await expect(page.locator(".managed-row")).to_have_count(2, timeout=WITHIN_MS)
    await page.fill("#new-name", "Photos")
    await page.select_option("#new-kind", "pixelfed")
    await page.fill("#new-url", "https://pixey.org")
    await page.fill("#new-username", "bob_art")
    await page.check("#new-default")
    await page.click("#add-button")
    for tab in (page, other):
        await expect(tab.locator(".platform .name")).to_have_text(
            ["Mastodon", "Pixelfed", "Photos"], timeout=WITHIN_MS
        )
    await expect(page.locator(".managed-row")).to_have_count(3, timeout=WITHIN_MS)
    photos = next(p["id"] for p in (await state(other))["platforms"] if p["name"] == "Photos")

    # Deactivate the active platform (Mastodon): both tabs move to the default, Photos.
    active_row = page.locator(f'.managed-row[data-id="{start["active"]}"]')
    await active_row.locator('button[data-action="off"]').click()
    for tab in (page, other):
        await shows(tab, 2, photos)
        await expect(tab.locator(".platform .name")).to_have_text(["Pixelfed", "Photos"])

    # Deleting down to the last active platform: the last delete is refused, nothing changes.
    pixelfed = next(p["id"] for p in (await state(page))["platforms"] if p["name"] == "Pixelfed")
    await page.locator(f'.managed-row[data-id="{pixelfed}"] button[data-action="delete"]').click()
    await shows(other, 3, photos)
    await page.locator(f'.managed-row[data-id="{photos}"] button[data-action="delete"]').click()
    await expect(page.locator("#message")).to_have_text(
        re.compile("last active platform"), timeout=WITHIN_MS
    )
    bob = (await page.evaluate("window.hub.user"))["id"]
    stored = await running.hub.store.load_state(bob)
    assert (stored.version, stored.active, len(stored.platforms)) == (3, photos, 1)


async def test_the_demo_page_shows_a_hold_and_its_end(tmp_path: Path, devices: Any) -> None:
    """The host app holds bob's switches: both tabs show the banner with the reason and the
    choices look paused; a click is refused with the reason and rolled back; after the release
    the banner, the paused look and the refusal's sentence go, and a click works."""
    async with serve(make_settings(tmp_path, api_key="k")) as running:
        device = await devices(running, debounceMs=0)
        await device.log_in("bob")
        page, other = await device.open_tab(), await device.open_tab()
        start = await state(page)
        async with AsyncHostClient(running.url, "k") as host:
            await host.hold("bob", "Generating captions", 60)
            for tab in (page, other):
                await expect(tab.locator("#hold-text")).to_contain_text(
                    "Busy: Generating captions", timeout=WITHIN_MS
                )
            await choose(page, others(start)[0])
            await expect(page.locator("#message")).to_contain_text(
                "Generating captions", timeout=WITHIN_MS
            )
            await shows(page, 0, start["active"])  # rolled back
            for tab in (page, other):
                await expect(tab.locator("#platforms")).to_have_class(re.compile(r"\bheld\b"))
                assert await opacity(tab, start["active"]) < 1
            await host.release("bob")
        for tab in (page, other):
            await expect(tab.locator("#hold")).to_be_hidden(timeout=WITHIN_MS)
            await expect(tab.locator("#platforms")).not_to_have_class(re.compile(r"\bheld\b"))
            assert await opacity(tab, start["active"]) == 1
        await expect(page.locator("#message")).to_have_text("")  # the busy sentence went too
        await choose(page, others(start)[0])
        for tab in (page, other):
            await shows(tab, 1, others(start)[0])


async def opacity(page: Page, platform_id: int) -> float:
    """The computed opacity of a platform's card (after its transition, if any)."""
    card = platform(page, platform_id)
    return float(await card.evaluate("(el) => getComputedStyle(el).opacity"))


async def test_on_a_phone_the_page_keeps_its_buttons_whole_and_its_ids_tucked_away(
    running: RunningHub, devices: Any
) -> None:
    """At 390 px wide no button's label wraps, and the version and tab id (for developers)
    sit behind a closed Details toggle that opens on a click."""
    device = await devices(running)
    await device.log_in("alice")
    page = await device.open_tab()
    await page.set_viewport_size({"width": 390, "height": 844})
    await expect(page.locator("#version")).to_be_hidden()
    lines = await page.evaluate(
        """() => [...document.querySelectorAll("button")]
            .filter((button) => button.offsetParent !== null)
            .map((button) => {
                const range = document.createRange();
                range.selectNodeContents(button);
                const tops = new Set([...range.getClientRects()].map((r) => Math.round(r.top)));
                return [button.textContent.trim(), tops.size];
            })"""
    )
    assert ["Log out", 1] in lines and ["Log out everywhere", 1] in lines, lines
    assert all(count == 1 for _, count in lines), lines
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways: {width} px"
    await page.locator("#details summary").click()
    await expect(page.locator("#version")).to_be_visible()
    await expect(page.locator("#tab")).to_have_text((await page.evaluate("hub.tabId"))[:8])


async def test_a_message_of_an_unknown_type_is_reported_and_skipped(
    running: RunningHub, devices: Any
) -> None:
    """A hub message this client does not know (from a newer hub, say) fires 'unknown' and
    one console warning, and the tab goes on: a switch after it works."""
    device = await devices(running)
    sockets = await device.record_sockets()
    await device.log_in()
    tab = await device.open_tab()
    warnings: list[str] = []
    tab.on("console", lambda m: warnings.append(m.text) if m.type == "warning" else None)
    await tab.evaluate(
        "window.unknown = []; window.hub.addEventListener('unknown', "
        "(e) => window.unknown.push(e.detail.message.type))"
    )
    for _ in range(2):
        sockets[0].send('{"type":"future_thing","x":1}')
    await tab.wait_for_function("() => window.unknown.length === 2", timeout=WITHIN_MS)
    assert await tab.evaluate("window.unknown") == ["future_thing", "future_thing"]
    assert [w for w in warnings if "future_thing" in w] == [
        'navigation.js: a hub message of unknown type "future_thing" was skipped'
    ]
    start = await state(tab)
    await choose(tab, others(start)[0])
    await shows(tab, 1, others(start)[0])


async def test_two_clients_in_one_page_are_two_tabs_that_both_stay_open(
    running: RunningHub, devices: Any
) -> None:
    """A page that makes a second HubClient beside its first: the second gets an id of its own
    (not the stored one), both stay live, and the hub counts two tabs; a switch from the second
    reaches the first."""
    device = await devices(running)
    await device.log_in("alice")
    page = await device.open_tab()
    first_id = await page.evaluate("window.hub.tabId")
    second_id = await page.evaluate(
        """async () => {
            const { HubClient, Status } = await import("/client/navigation.js");
            window.second = new HubClient();
            await new Promise((resolve, reject) => {
                if (window.second.status === Status.OPEN) resolve();
                window.second.addEventListener("status", (e) => {
                    if (e.detail.status === Status.OPEN) resolve();
                });
                setTimeout(() => reject(new Error(`still ${window.second.status}`)), 5000);
            });
            return window.second.tabId;
        }"""
    )
    assert second_id != first_id
    assert await page.evaluate("sessionStorage.getItem('platform-hub.tab')") == first_id
    ids = {tab.id for tab in running.hub.tabs(1)}
    assert ids == {first_id, second_id}
    current = await state(page)
    target = others(current)[0]
    decision = await page.evaluate(f"window.second.switchPlatform({target})")
    assert decision["ok"], decision
    await shows(page, current["version"] + 1, target)
    # Still both open, with the same ids: neither replaced the other (4005) meanwhile.
    assert await page.evaluate("[window.hub.status, window.second.status]") == ["open", "open"]
    assert {tab.id for tab in running.hub.tabs(1)} == {first_id, second_id}
