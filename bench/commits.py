"""Durable switches per second on SQLite: group commit against a naive commit per switch.

    .venv/bin/python -m bench.commits [--users 1000] [--duration 5] [--write]

Below the WebSocket layer: ``--users`` concurrent callers (one per user, as if each user
had one tab switching as fast as it is answered) call the hub's real store
(``SqlStore.switch``) on a real SQLite file for ``--duration`` seconds. Each call returns
only after its decision is committed. Measured for ``commit_batch_max`` 1 (a transaction
per switch) and 256 (group commit), under synchronous=NORMAL (the hub's default) and FULL
(an fsync per commit). Afterwards every user's stored version must equal the number of
switches it had accepted, or the run fails.
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
from server.storage.switches import SqlStore
from tests.support.population import Population, database_facts, populate

ROOT = Path(__file__).resolve().parent.parent


async def run_one(
    path: Path, population: Population, *, synchronous: str, batch: int, duration: float
) -> dict[str, Any]:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{path}",
        sqlite_synchronous=synchronous,
        commit_batch_max=batch,
    )
    database = Database(settings)
    store = SqlStore(database)
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
        await store.close()
        await database.dispose()
    states, _ = await database_facts(settings)
    wrong = [u for u, n in accepted.items() if states[u][0] != n]
    if wrong:
        raise AssertionError(f"stored versions disagree with accepted switches: {wrong[:5]}")
    latencies.sort()
    total = sum(accepted.values())
    return {
        "synchronous": synchronous,
        "commit_batch_max": batch,
        "accepted": total,
        "accepted_per_s": round(total / elapsed),
        "batches": store.commits.batches,
        "mean_batch": round(store.commits.requests / max(1, store.commits.batches), 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2),
        "cpu_s_per_1000": round(1000 * cpu / max(1, total), 3),
    }


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
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
                    path, population, synchronous=synchronous, batch=batch, duration=args.duration
                )
                print(json.dumps(result), flush=True)
                results.append(result)
    return results


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| synchronous | commit | accepted durable switches/s | mean batch "
        "| p50 / p99 commit latency (ms) | CPU s per 1,000 switches |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        kind = "naive (1 per transaction)" if r["commit_batch_max"] == 1 else "group commit"
        rows.append(
            f"| {r['synchronous']} | {kind} | {r['accepted_per_s']} | {r['mean_batch']} "
            f"| {r['p50_ms']} / {r['p99_ms']} | {r['cpu_s_per_1000']} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=5)
    arguments = parser.parse_args()
    measured = asyncio.run(main(arguments))
    print()
    print(table(measured))
    by = {(r["synchronous"], r["commit_batch_max"]): r["accepted_per_s"] for r in measured}
    for sync in ("NORMAL", "FULL"):
        print(f"group / naive, synchronous={sync}: {by[(sync, 256)] / max(1, by[(sync, 1)]):.1f}x")
