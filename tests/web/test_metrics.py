"""server/web/metrics.py: GET /metrics tells what the hub did, in Prometheus' text format."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningHub, make_settings, other_platform, serve


async def scrape(running: RunningHub) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with running.http() as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def test_metrics_count_switches_commits_and_tabs(running: RunningHub) -> None:
    """An accepted and a stale switch are counted by result, the accepted one's broadcast is
    timed, each commit is recorded with its batch size, and the gauges read the live hub."""
    token = await running.login("alice")
    first, second = await running.tab(token, "first"), await running.tab(token, "second")
    target = other_platform(first.hello["state"])
    assert (await first.switch("m1", target))["type"] == "switched"
    stale = await second.switch("m2", target, base=0)
    assert stale["type"] == "rejected" and stale["reason"] == "stale"

    samples = await scrape(running)
    assert samples[("hub_switches_total", (("result", "accepted"),))] == 1
    assert samples[("hub_switches_total", (("result", "stale"),))] == 1
    assert samples[("hub_switch_broadcast_seconds_count", ())] == 1  # only the accepted one
    assert samples[("hub_commit_seconds_count", ())] == 2
    assert samples[("hub_commit_batch_size_sum", ())] == 2
    assert samples[("hub_tabs", ())] == 2
    assert samples[("hub_sessions_connected", ())] == 1  # both tabs share alice's session
    assert samples[("hub_backplane_reconnects", ())] == 0  # SQLite: no listener
    # The session watcher (every 0.1 s here) holds a connection while it reads, so a single
    # scrape may catch it; a leaked connection would keep the gauge above 0 for good.
    seen = []
    for _ in range(100):
        seen.append((await scrape(running))[("hub_db_connections_checked_out", ())])
        if seen[-1] == 0:
            break
        await asyncio.sleep(0.01)
    assert seen[-1] == 0, seen

    await first.close()
    await second.close()
    async with running.http() as client:  # the gauge follows the tabs leaving
        for _ in range(100):
            if "hub_tabs 0.0" in (await client.get("/metrics")).text:
                break
            await asyncio.sleep(0.02)
    assert (await scrape(running))[("hub_tabs", ())] == 0


async def test_metrics_count_ended_and_collected_sessions(tmp_path: Path) -> None:
    """A logout with a tab here counts as a session ended by logout; the collector's deletion
    is counted; the hub's own counters (coalesced states, slow tabs) are exposed."""
    settings = make_settings(tmp_path, collect_interval_s=0.2)
    async with serve(settings) as running:
        token = await running.login("alice")
        tab = await running.tab(token, "t")
        async with running.http(token, origin=running.url) as client:
            assert (await client.post("/api/logout")).status_code == 200
        assert (await tab.receive_type("session_ended"))["reason"] == "logout"
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for _ in range(100):  # the collector runs every 0.2 s
            samples = await scrape(running)
            if samples.get(("hub_sessions_collected_total", ()), 0) >= 1:
                break
            await asyncio.sleep(0.05)
        assert samples[("hub_sessions_ended_total", (("reason", "logout"),))] == 1
        assert samples[("hub_sessions_collected_total", ())] >= 1
        assert samples[("hub_states_coalesced_total", ())] == 0
        assert samples[("hub_tabs_closed_slow_total", ())] == 0
