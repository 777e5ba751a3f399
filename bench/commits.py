"""Durable switches per second: group commit against a naive commit per switch.

    .venv/bin/python -m bench.commits [--users 1000] [--duration 5] [--engine sqlite|postgresql]

Below the WebSocket layer: ``--users`` concurrent callers (one per user, as if each user
had one tab switching as fast as it is answered) call the hub's real store
(``SqlStore.switch``) on a real SQLite file for ``--duration`` seconds. Each call returns
only after its decision is committed. Measured for ``commit_batch_max`` 1 (a transaction
per switch) and 256 (group commit), under synchronous=NORMAL (the hub's default) and FULL
(an fsync per commit). Afterwards every user's stored version must equal the number of
switches it had accepted, or the run fails.

On PostgreSQL (``--engine postgresql``, the machine's server, each run on a copy of one
seeded database) the runs are with and without the NOTIFY that wakes other processes
(server/storage/backplane.py's WAKE): NOTIFY takes a lock held until the commit ends, so
notifying commits cannot share a WAL flush; the difference is its share of the ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from server.db import Database
from server.protocol import Switch
from server.rules import Accepted
from server.settings import Settings
from server.storage import backplane
from server.storage.switches import SqlStore
from tests.support.population import Population, database_facts, populate
from tests.support.postgres import fresh_database

ROOT = Path(__file__).resolve().parent.parent


async def run_one(
    url: str,
    population: Population,
    *,
    synchronous: str,
    batch: int,
    duration: float,
    stores: int = 1,
) -> dict[str, Any]:
    """``stores`` stores (each its own pool and commit queue, as a hub process has) share the
    users; on SQLite there is one."""
    sqlite = {"sqlite_synchronous": synchronous} if url.startswith("sqlite") else {}
    settings = Settings(database_url=url, commit_batch_max=batch, **sqlite)  # type: ignore[arg-type]
    databases = [Database(settings) for _ in range(stores)]
    all_stores = [SqlStore(database) for database in databases]
    latencies: list[float] = []
    accepted: dict[int, int] = {}
    deadline = time.monotonic() + duration

    async def user(user_id: int) -> None:
        platforms = population.platforms[user_id]
        version, n = 0, 0
        session_id = population.sessions[user_id]
        while time.monotonic() < deadline:
            n += 1
            request = Switch(id=uuid.uuid4().hex, platform=platforms[n % 3], base=version)
            started = time.perf_counter()
            store = all_stores[user_id % stores]
            decision = await store.switch(user_id, session_id, request, None)
            latencies.append(time.perf_counter() - started)
            if not isinstance(decision, Accepted):
                raise AssertionError(f"user {user_id}: {decision}")
            version = decision.version
            accepted[user_id] = accepted.get(user_id, 0) + 1

    cpu = time.process_time()
    started = time.monotonic()
    try:
        await asyncio.gather(*(user(u) for u in population.platforms))
    finally:
        elapsed = time.monotonic() - started
        cpu = time.process_time() - cpu
        for store, database in zip(all_stores, databases, strict=True):
            await store.close()
            await database.dispose()
    states, _ = await database_facts(settings)
    wrong = [u for u, n in accepted.items() if states[u][0] != n]
    if wrong:
        raise AssertionError(f"stored versions disagree with accepted switches: {wrong[:5]}")
    latencies.sort()
    total = sum(accepted.values())
    return {
        "engine": settings.database_url.split("+", 1)[0],
        "synchronous": synchronous,
        "notify": backplane.WAKE,
        "commit_batch_max": batch,
        "accepted": total,
        "accepted_per_s": round(total / elapsed),
        "stores": stores,
        "batches": (batches := sum(store.commits.batches for store in all_stores)),
        "mean_batch": round(sum(s.commits.requests for s in all_stores) / max(1, batches), 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2),
        "cpu_s_per_1000": round(1000 * cpu / max(1, total), 3),
    }


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.engine == "postgresql":
        return await on_postgresql(args)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        seed = Path(tmp) / "seed.db"
        settings = Settings(database_url=f"sqlite+aiosqlite:///{seed}")
        population = await populate(settings, args.users)
        for synchronous in ("NORMAL", "FULL"):
            for batch in (1, 256):
                path = Path(tmp) / f"{synchronous}-{batch}.db"
                shutil.copy(seed, path)
                result = await run_one(
                    f"sqlite+aiosqlite:///{path}",
                    population,
                    synchronous=synchronous,
                    batch=batch,
                    duration=args.duration,
                )
                print(json.dumps(result), flush=True)
                results.append(result)
    return results


async def on_postgresql(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each run on a copy (CREATE DATABASE ... TEMPLATE) of one seeded database."""
    results = []
    async with fresh_database() as seed:
        population = await populate(Settings(database_url=seed), args.users)
        seed_name = seed.rsplit("/", 1)[1]
        for stores in (1, 8):
            for wake in (True, False):
                for batch in (1, 256):
                    async with fresh_database(template=seed_name) as url:
                        backplane.WAKE = wake
                        try:
                            result = await run_one(
                                url,
                                population,
                                synchronous="-",
                                batch=batch,
                                duration=args.duration,
                                stores=stores,
                            )
                        finally:
                            backplane.WAKE = True
                    print(json.dumps(result), flush=True)
                    results.append(result)
    return results


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| engine | stores | synchronous | NOTIFY | commit | accepted durable switches/s "
        "| commits/s | mean batch | p50 / p99 commit latency (ms) | CPU s per 1,000 switches |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        kind = "naive (1 per transaction)" if r["commit_batch_max"] == 1 else "group commit"
        rows.append(
            f"| {r['engine']} | {r['stores']} | {r['synchronous']} "
            f"| {'yes' if r['notify'] else 'no'} | {kind} | {r['accepted_per_s']} "
            f"| {round(r['accepted_per_s'] / r['mean_batch'])} | {r['mean_batch']} "
            f"| {r['p50_ms']} / {r['p99_ms']} | {r['cpu_s_per_1000']} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--engine", choices=["sqlite", "postgresql"], default="sqlite")
    arguments = parser.parse_args()
    measured = asyncio.run(main(arguments))
    print()
    print(table(measured))
    by = {
        (r["stores"], r["synchronous"], r["notify"], r["commit_batch_max"]): r["accepted_per_s"]
        for r in measured
    }
    for stores, sync, notify in sorted(
        {(r["stores"], r["synchronous"], r["notify"]) for r in measured}
    ):
        ratio = by[(stores, sync, notify, 256)] / max(1, by[(stores, sync, notify, 1)])
        print(f"group / naive, {stores} stores, synchronous={sync}, NOTIFY={notify}: {ratio:.1f}x")
    if arguments.engine == "postgresql":
        for stores in (1, 8):
            for batch in (1, 256):
                with_notify, without = (
                    by[(stores, "-", True, batch)],
                    by[(stores, "-", False, batch)],
                )
                print(
                    f"{stores} stores, batch {batch}: with NOTIFY / without: "
                    f"{with_notify / max(1, without):.2f}"
                )
