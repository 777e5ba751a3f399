"""The benchmark's own parts work (a tiny run); its figures are in bench/RESULTS.md, not here."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
from pathlib import Path

import pytest

from bench import scale, sharing, storm
from bench.run import idle_memory, load
from bench.targets import ceiling, node_ceiling, node_socketio, node_socketio_tuned, peer
from tests.support.postgres import require_postgres

ROOT = Path(__file__).resolve().parents[2]


NODE_TARGETS = {node_ceiling, node_socketio, node_socketio_tuned}


def require_node() -> None:
    """Skip without Node.js and npm, except under CI, where it fails."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("the Node targets and tabs need Node.js 20+ and npm under CI=true")
        pytest.skip("the Node targets and tabs need Node.js 20+ and npm")


@pytest.mark.parametrize(
    "start",
    [ceiling, node_ceiling, peer, node_socketio, node_socketio_tuned],
    ids=["ceiling", "node-ws", "peer", "node-socketio", "node-socketio-tuned"],
)
async def test_the_load_generator_measures_the_ceilings_and_the_peers(start: object) -> None:
    """Both protocols, on Python and Node: every switch is answered and every accepted one
    reaches every tab. The Node targets need Node.js and npm (the client's tests need them
    too): without them they skip, except under CI."""
    if start in NODE_TARGETS:
        require_node()
    async with start(5) as target:  # type: ignore[operator]
        args = argparse.Namespace(users=5, tabs=3, duration=0.5)
        for mode in ("rate", "saturate"):
            result = await asyncio.to_thread(
                load, target, args, pids=[target.pid], mode=mode, rate=100, warmup=0
            )
            assert result["tabs"] == 15 and result["accepted"] > 0, result
            # The target's CPU over the phase alone, between the generator's marks.
            assert len(result["phase_cpu_s"]) == 1 and result["phase_window_s"] >= 0.5, result
            assert result["unanswered"] == 0 and result["closed"] == {}, result
            assert result["misnamed_hellos"] == 0, result
            # Every accepted switch reached all three tabs of its user: a latency exists.
            assert result["p50_ms"] == result["p50_ms"] and result["p50_ms"] >= 0, result
        memory = await asyncio.to_thread(idle_memory, target, 12, 3)
        assert memory["idle_tabs"] == 12, memory
        assert memory["rss_kib_after"] > 0, memory


async def test_the_scale_benchmark_spreads_each_users_tabs_over_the_processes() -> None:
    """bench/scale.py's two PostgreSQL processes: every switch is answered, and each user's
    tabs, half on each process, all receive the accepted ones (cross-process delivery)."""
    await require_postgres()
    args = argparse.Namespace(users=4, tabs=2, duration=0.5, rate=40)
    # Four users in a closed loop switch faster than a person can (hundreds a second per tab
    # on a quick machine): past the per-tab limit, the hub answers rate_limited, then closes
    # with 4002, which is right but not what this test is about.
    lifted = {"messages_per_second": 100_000, "message_burst": 100_000}
    async with scale.hubs("postgresql", 2, args.users, **lifted) as (target, pids):
        assert len(pids) == 2 and target.url.count("ws://") == 2
        for mode in ("rate", "saturate"):
            extra = {"rate": args.rate} if mode == "rate" else {}
            result = await asyncio.to_thread(load, target, args, mode=mode, warmup=0, **extra)
            assert result["tabs"] == 8 and result["accepted"] > 0, result
            assert result["unanswered"] == 0 and result["closed"] == {}, result
            # Latency counts only switches that reached every tab of the user, on both.
            assert result["deliveries_per_s"] > 0 and result["p50_ms"] >= 0, result


@pytest.mark.parametrize("client", ["node", "python"])
async def test_the_storm_benchmark_brings_every_tab_back_after_a_restart(client: str) -> None:
    """bench/storm.py on 40 tabs, from either tabs' process: the hub and the ceiling are
    restarted under their tabs, which come back by themselves with the client's backoff;
    none gives up, and nothing but the restart's refused connections counts as an error. The
    hub asks for a restart window (HUB_RECONNECT_RATE 100: 40 tabs within 0.4 s), which
    either tabs' process reads as the shipped client does."""
    if client == "node":
        require_node()
    args = argparse.Namespace(
        tabs=40, per_user=4, within=60.0, witness_rate=20.0, client=client, reconnect_rate=100.0
    )
    for kind in ("ceiling", "hub"):
        result = await storm.restart(kind, args)
        assert result["reconnect_rate"] == (100.0 if kind == "hub" else None), result
        assert result["tabs"] == 40 and result["back"] == 40, result
        assert result["errors"] == {} and result["gave_up_or_late"] == 0, result
        assert result["all_back_after_sigterm_s"] >= result["shutdown_s"], result


async def test_the_storm_benchmark_times_a_witness_on_another_process() -> None:
    """bench/storm.py's hub-pg: two hub processes on PostgreSQL; the witness user's switches
    on the process left running are answered and reach both its tabs, before the restart of
    the other and through it."""
    await require_postgres()
    require_node()
    args = argparse.Namespace(
        tabs=40, per_user=4, within=60.0, witness_rate=20.0, client="node", reconnect_rate=None
    )
    result = await storm.restart("hub-pg", args)
    assert result["back"] == 40 and result["errors"] == {}, result
    for phase in ("witness_before", "witness_storm"):
        assert result[phase]["switches"] > 0 and result[phase]["unanswered"] == 0, result
        assert 0 < result[phase]["p50_ms"] <= result[phase]["p99_ms"], result
    assert result["witness_rejected"] == {}, result


async def test_the_sharing_benchmark_counts_one_connection_per_user_and_every_delivery() -> None:
    """bench/sharing.py on 4 users of 5 tabs: own sockets are 20 connections, shared ones 4,
    both 20 tabs; every switch made a version, told to every tab: down each tab's socket (a
    frame each), or down the shared one once (relayed by its leader)."""
    own = await sharing.measure(users=4, tabs=5, switches=3, shared=False)
    shared = await sharing.measure(users=4, tabs=5, switches=3, shared=True)
    assert (own["hub_connections"], shared["hub_connections"]) == (20, 4)
    assert own["hub_tabs"] == shared["hub_tabs"] == 20
    for result in (own, shared):
        assert result["versions"] == 12 and result["deliveries"] == 60, result
    assert (own["state_frames_sent"], shared["state_frames_sent"]) == (60, 12)
