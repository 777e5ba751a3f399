"""Scale-out on PostgreSQL: one, two and four hub processes against one SQLite process.

    .venv/bin/python -m bench.scale [--users 500] [--tabs 4] [--duration 10] [--write|--render]

Each configuration gets a fresh database (SQLite file, or a PostgreSQL database on the
machine's server, tests/support/postgres.py), its users, and its hub processes. The load generator
(bench/load.py, a separate process) spreads the tabs of every user over the processes, so a
switch made through one process reaches tabs on the others: the latency measured is
cross-process delivery. Reported for each: p50/p99 at a fixed rate, saturated accepted
(durable) switches and deliveries per second, and the hub processes' CPU per 1,000 deliveries,
from which a larger machine's throughput is projected. --write records bench/SCALE.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.run import ROOT, Target, cpu_seconds, load, machine, settle, versions
from server.settings import Settings
from tests.support.population import populate
from tests.support.postgres import fresh_database
from tests.support.processes import HubProcess

CONFIGS = (("sqlite", 1), ("postgresql", 1), ("postgresql", 2), ("postgresql", 4))


@contextlib.asynccontextmanager
async def database(engine: str, tmp: Path) -> AsyncIterator[str]:
    if engine == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp}/hub.db"
        return
    async with fresh_database() as url:
        yield url


@contextlib.asynccontextmanager
async def hubs(
    engine: str, count: int, users: int, **overrides: Any
) -> AsyncIterator[tuple[Target, list[int]]]:
    """Start ``count`` hub processes on a fresh database; yield one Target over all of them.

    The hub's real settings, rate limits included, unless ``overrides`` says otherwise.
    """
    with tempfile.TemporaryDirectory() as tmp:
        async with database(engine, Path(tmp)) as url:
            settings = Settings(database_url=url, log_level="warning", **overrides)
            population = await populate(settings, users)
            tokens = Path(tmp) / "tokens.json"
            tokens.write_text(json.dumps({str(u): t for u, t in population.tokens.items()}))
            processes: list[HubProcess] = []
            try:
                for n in range(count):
                    processes.append(await HubProcess(settings, Path(tmp) / f"hub{n}.log").start())
                pids = [p.process.pid for p in processes if p.process is not None]
                urls = ",".join(f"ws://127.0.0.1:{p.port}/ws" for p in processes)
                yield Target(urls, pids[0], str(tokens)), pids
            finally:
                for process in processes:
                    process.stop()


async def measure(engine: str, count: int, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"engine": engine, "processes": count}
    async with hubs(engine, count, args.users) as (target, pids):
        for label, mode in (("rate", {"mode": "rate", "rate": args.rate}), ("saturate", {})):
            cpu = sum(cpu_seconds(pid) for pid in pids)
            phase = await asyncio.to_thread(load, target, args, **(mode or {"mode": "saturate"}))
            phase["hub_cpu_s"] = round(sum(cpu_seconds(pid) for pid in pids) - cpu, 2)
            deliveries = phase["deliveries_per_s"] * phase["elapsed_s"]
            phase["hub_cpu_s_per_1000_deliveries"] = (
                round(1000 * phase["hub_cpu_s"] / deliveries, 3) if deliveries else None
            )
            result[label] = phase
            print(f"{engine} x{count} {label}: {json.dumps(phase)}", flush=True)
            for pid in pids:
                await settle(pid)
    return result


def table(results: list[dict[str, Any]], rate: int) -> str:
    lines = [
        f"| engine | processes | p50 / p99 at {rate:,}/s (ms) | saturated accepted/s "
        "| saturated deliveries/s | x one process | hub CPU s per 1,000 deliveries |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    one = {r["engine"]: r for r in results if r["processes"] == 1}
    for r in results:
        base = one[r["engine"]]["saturate"]["deliveries_per_s"]
        scale = round(r["saturate"]["deliveries_per_s"] / base, 2) if base else float("nan")
        lines.append(
            f"| {r['engine']} | {r['processes']} | {r['rate']['p50_ms']} / {r['rate']['p99_ms']} "
            f"| {r['saturate']['accepted_per_s']} | {r['saturate']['deliveries_per_s']} "
            f"| {scale} | {r['saturate']['hub_cpu_s_per_1000_deliveries']} |"
        )
    return "\n".join(lines)


def projection(results: list[dict[str, Any]]) -> str:
    """Deliveries a second on a machine with more cores, from the measured CPU per delivery."""
    pg = [r for r in results if r["engine"] == "postgresql"]
    costs = [r["saturate"]["hub_cpu_s_per_1000_deliveries"] for r in pg]
    worst = max(c for c in costs if c)
    lines = [
        f"Measured hub CPU per 1,000 deliveries on PostgreSQL: {', '.join(map(str, costs))} "
        "s (1, 2 and 4 processes). It grows with the processes: each handles every other "
        "process's notifications, and here they also compete for 2 cores with PostgreSQL "
        f"and the load generator. Taking the highest, {worst} s, as the cost: one core of hub "
        f"processes delivers about {round(1000 / worst):,} states a second, and a process uses "
        "one core at most (one event loop). With a core for each process, and PostgreSQL, "
        "the proxy and the clients on cores of their own, that projects to:",
        "",
    ]
    for count in (1, 2, 4, 8):
        noun = "process" if count == 1 else "processes"
        lines.append(f"- {count} {noun}: about {round(count * 1000 / worst):,} deliveries/s")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    raw = ROOT / "bench" / "scale.json"
    if args.render:
        saved = json.loads(raw.read_text())
        date, results = saved["date"], list(saved["results"])
    else:
        results = [await measure(engine, count, args) for engine, count in CONFIGS]
        date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(table(results, args.rate))
    print(projection(results))
    if args.write and not args.render:
        raw.write_text(json.dumps({"date": date, "results": results}, indent=1))
    if args.write or args.render:
        page = PAGE.format(
            date=date,
            machine=machine(),
            versions=versions(),
            users=args.users,
            tabs=args.tabs,
            duration=args.duration,
            rate=f"{args.rate:,}",
            table=table(results, args.rate),
            projection=projection(results),
            raw=json.dumps(results, indent=1),
        )
        (ROOT / "bench" / "SCALE.md").write_text(page)
    return results


PAGE = """# Scale-out: hub processes on PostgreSQL

Produced by `python -m bench.scale --write` on {date}.

- Machine: {machine}; the hub processes, PostgreSQL and the load generator share its cores
- Versions: {versions}
- Workload: {users} users x {tabs} tabs, the tabs of each user spread over the processes;
  {duration} s per phase: {rate} switches/s, then saturation (one switch in flight per user)

{table}

"x one process" compares saturated deliveries with one process of the same engine.

## Projection

{projection}

<details><summary>Raw results</summary>

```json
{raw}
```
</details>
"""


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--tabs", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--write", action="store_true")
    parser.add_argument(
        "--render", action="store_true", help="measure nothing: rewrite SCALE.md from scale.json"
    )
    os.chdir(ROOT)
    asyncio.run(main(parser.parse_args()))
