"""server/metrics.py: GET /metrics tells what the hub did, in Prometheus' text format."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningHub, other_platform


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
    assert samples[("hub_db_connections_checked_out", ())] == 0
    assert samples[("hub_backplane_reconnects", ())] == 0  # SQLite: no listener

    await first.close()
    await second.close()
    async with running.http() as client:  # the gauge follows the tabs leaving
        for _ in range(100):
            if "hub_tabs 0.0" in (await client.get("/metrics")).text:
                break
            await asyncio.sleep(0.02)
    assert (await scrape(running))[("hub_tabs", ())] == 0
