"""One WebSocket per browser (``shareConnection``), in a real Chromium against a real hub:
the tabs of a context elect a leader with Web Locks and reach the hub through it over a
BroadcastChannel."""

from __future__ import annotations

import time
from typing import Any

from playwright.async_api import expect

from tests.browser.conftest import PATIENCE_MS, WITHIN_MS
from tests.browser.test_client import choose, others, shows, state, switch_log
from tests.conftest import RunningHub
from tests.support.processes import wait_until


async def switch_from_each(tabs: list[Any], version: int, within_ms: int = WITHIN_MS) -> int:
    """Click another platform in each tab in turn; each shows in every tab. Return the
    version after them."""
    for tab in tabs:
        target = others(await state(tab))[0]
        await choose(tab, target)
        version += 1
        for each in tabs:
            await shows(each, version, target, within_ms=within_ms)
    return version


def carried(running: RunningHub) -> list[tuple[str, int]]:
    """The hub's connections: each one's own tab id and how many tabs it is."""
    return sorted((tab.id, tab.width) for tab in running.hub.tabs())


async def test_five_tabs_share_one_connection_and_survive_their_leaders_close(
    running: RunningHub, devices: Any
) -> None:
    """Five tabs of one context: the hub counts one connection and five tabs, each tab lists
    five, and a switch from each shows in all. A member closed detaches at once. Closing the
    leader: another tab leads (one connection, three tabs),
    a click made during the handover is applied once, and switching from every tab keeps
    working; a second context gets its own connection; logout ends the first one's tabs."""
    laptop = await devices(running, shareConnection=True)
    await laptop.log_in()
    tabs = [await laptop.open_tab() for _ in range(5)]
    await wait_until(lambda: [w for _, w in carried(running)] == [5], 5, "one connection, 5 tabs")
    version = await switch_from_each(tabs, (await state(tabs[0]))["version"])

    ((leader_id, _),) = carried(running)
    ids = [await tab.evaluate("window.hub.tabId") for tab in tabs]
    by_id = dict(zip(ids, tabs, strict=True))
    leader = by_id[leader_id]
    for tab in tabs:  # the demo page says which tab carries the connection
        said = "this tab carries it" if tab is leader else "carried by another tab"
        await expect(tab.locator("#link")).to_contain_text(said)
        # and every tab, the leader included, counts the device's five tabs
        await expect(tab.locator("#devices .when")).to_contain_text("5 tabs open")
    # A member closed says so at once (its page hides), not at the leader's prune.
    member = next(tab for tab in tabs if tab is not leader)
    await member.close()
    tabs.remove(member)
    await wait_until(lambda: [w for _, w in carried(running)] == [4], 5, "the member detached")
    await leader.close()
    tabs.remove(leader)
    closed_at = time.monotonic()
    # A click during the handover: sent again with its id through the new leader, applied once.
    target = others(await state(tabs[0]))[0]
    await choose(tabs[0], target)
    version += 1
    await wait_until(
        lambda: [w for _, w in carried(running)] == [3], PATIENCE_MS / 1000, "a new leader"
    )
    print(f"handover: one connection of 3 tabs {time.monotonic() - closed_at:.2f} s after")
    assert carried(running)[0][0] in ids and carried(running)[0][0] != leader_id
    for each in tabs:
        await shows(each, version, target, within_ms=PATIENCE_MS)
    new_leader = by_id[carried(running)[0][0]]
    await expect(new_leader.locator("#link")).to_contain_text("this tab carries it")
    accepted = [row for row in await switch_log(running, 1) if row.accepted]
    assert [row.version for row in accepted] == list(range(1, version + 1))  # each once
    assert {row.tab_id for row in accepted} <= set(ids)  # each by the tab that asked
    for tab in tabs:
        await expect(tab.locator("#status")).to_have_text("Live", timeout=PATIENCE_MS)
    version = await switch_from_each(tabs, version, PATIENCE_MS)

    phone = await devices(running, shareConnection=True)
    await phone.log_in()
    await phone.open_tab()
    await wait_until(lambda: sorted(w for _, w in carried(running)) == [1, 3], 5, "two devices")

    await tabs[0].click("#logout")
    for tab in tabs:
        await expect(tab.locator("#login-view")).to_be_visible(timeout=WITHIN_MS)
    await wait_until(lambda: [w for _, w in carried(running)] == [1], 5, "the phone alone")


async def test_a_frozen_leader_is_replaced_and_rejoins_as_a_member(
    running: RunningHub, devices: Any
) -> None:
    """The leader's page stops running script with its lock held (as a page the browser
    froze; paused here in the debugger, since Chromium freezes only hidden pages and every
    page of a headless browser is visible): the tab in front takes the lock and the
    connection, and the others switch through it. Running again, the old leader gives up its
    socket and is carried by the new one."""
    laptop = await devices(running, shareConnection=True)
    await laptop.log_in()
    tabs = [await laptop.open_tab() for _ in range(3)]
    await wait_until(lambda: [w for _, w in carried(running)] == [3], 5, "one connection, 3 tabs")
    ((leader_id, _),) = carried(running)
    ids = [await tab.evaluate("window.hub.tabId") for tab in tabs]
    leader = tabs[ids.index(leader_id)]
    rest = [tab for tab in tabs if tab is not leader]
    await rest[0].bring_to_front()
    cdp = await laptop.context.new_cdp_session(leader)
    await cdp.send("Debugger.enable")
    await cdp.send("Debugger.pause")
    frozen_at = time.monotonic()
    # The frozen page's socket stays open (the hub still counts it), carrying nothing more.
    await wait_until(
        lambda: sorted(w for _, w in carried(running)) == [1, 2], PATIENCE_MS / 1000, "a new leader"
    )
    print(f"takeover from a frozen leader: {time.monotonic() - frozen_at:.2f} s")
    version = await switch_from_each(rest, (await state(rest[0]))["version"], PATIENCE_MS)

    await cdp.send("Debugger.resume")
    await wait_until(
        lambda: [w for _, w in carried(running)] == [3], PATIENCE_MS / 1000, "rejoined"
    )
    assert carried(running)[0][0] != leader_id
    await expect(leader.locator("#status")).to_have_text("Live", timeout=PATIENCE_MS)
    await shows(leader, version, (await state(rest[0]))["active"], within_ms=PATIENCE_MS)
