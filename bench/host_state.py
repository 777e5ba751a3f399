"""What a host app pays to read a user's state per request: GET .../users/{name}/state.

    .venv/bin/python -m bench.host_state [--users 200] [--requests 2000]

A server-rendered host app (Flask, Django) reads the active platform on each page it renders
or job it starts. This measures that read as such an app makes it: one reused synchronous
``platform_hub_client.HostClient`` (keep-alive), one request at a time, against a real hub
process on SQLite and on PostgreSQL. Interleaved with the state reads, ``GET /livez`` (no
database, the same HTTP stack, its own kept-alive connection) is the baseline of the same run;
the ratio of the two is what the read itself costs. Reported per engine: p50/p99 of each, the
hub's CPU per state read, and the p50 of the same read made the ways a client should not be
used: a new HostClient per call, and ``asyncio.run`` with a new AsyncHostClient per call (what
an async-only client cost a sync view).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from bench.run import cpu_seconds, machine
from platform_hub_client import AsyncHostClient, HostClient
from server.settings import Settings
from tests.support.population import populate
from tests.support.postgres import fresh_database
from tests.support.processes import HubProcess

KEY = "bench-host-key"


@contextlib.asynccontextmanager
async def engine_url(engine: str, tmp: str) -> AsyncIterator[str]:
    if engine == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp}/hub.db"
    else:
        async with fresh_database() as url:
            yield url


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def read_many(url: str, users: int, requests: int, pid: int) -> dict[str, Any]:
    state_s: list[float] = []
    livez_s: list[float] = []
    names = [f"user{n:05d}" for n in range(users)]
    with HostClient(url, KEY) as hub, httpx.Client(base_url=url) as plain:
        for _ in range(100):  # warm the connections, the pool and the caches
            hub.state(random.choice(names))
            plain.get("/livez").raise_for_status()
        cpu_state = 0.0
        for _ in range(requests):
            started = time.perf_counter()
            plain.get("/livez").raise_for_status()
            livez_s.append(time.perf_counter() - started)
            cpu_before = cpu_seconds(pid)
            started = time.perf_counter()
            answer = hub.state(random.choice(names))
            state_s.append(time.perf_counter() - started)
            cpu_state += cpu_seconds(pid) - cpu_before
            assert answer.state.platforms, answer
    unpooled_s: list[float] = []
    per_call_loop_s: list[float] = []
    for _ in range(max(20, requests // 20)):
        started = time.perf_counter()
        with HostClient(url, KEY) as fresh:
            fresh.state(random.choice(names))
        unpooled_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        asyncio.run(_state_once(url, random.choice(names)))
        per_call_loop_s.append(time.perf_counter() - started)
    return {
        "requests": requests,
        "state_p50_ms": round(percentile(state_s, 0.5), 2),
        "state_p99_ms": round(percentile(state_s, 0.99), 2),
        "livez_p50_ms": round(percentile(livez_s, 0.5), 2),
        "livez_p99_ms": round(percentile(livez_s, 0.99), 2),
        "state_over_livez_p50": round(statistics.median(state_s) / statistics.median(livez_s), 2),
        "hub_cpu_ms_per_state_read": round(cpu_state / requests * 1000, 3),
        "new_client_per_call_p50_ms": round(percentile(unpooled_s, 0.5), 2),
        "asyncio_run_per_call_p50_ms": round(percentile(per_call_loop_s, 0.5), 2),
    }


async def _state_once(url: str, name: str) -> None:
    async with AsyncHostClient(url, KEY) as hub:
        await hub.state(name)


async def measure(engine: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with engine_url(engine, tmp) as url:
            settings = Settings(database_url=url, api_key=KEY, log_level="warning")
            await populate(settings, args.users)
            process = await HubProcess(settings, Path(tmp) / "hub.log").start()
            try:
                assert process.process is not None
                pid = process.process.pid
                result = await asyncio.to_thread(
                    read_many, process.url, args.users, args.requests, pid
                )
            finally:
                process.stop()
    return {"engine": engine, **result}


async def main(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    for engine in ("sqlite", "postgresql"):
        print(await measure(engine, args))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--requests", type=int, default=2000)
    asyncio.run(main(parser.parse_args()))
