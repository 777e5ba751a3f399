"""Scale-out on PostgreSQL: 1, 2, 4 and 8 hub processes against one SQLite process.

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
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.run import ROOT, Target, cpu_seconds, load, load_command, machine, settle, versions
from server.settings import Settings
from tests.support.population import populate
from tests.support.postgres import fresh_database
from tests.support.processes import HubProcess

# Not 8 with tabs spread: 8 processes' pools (up to 15 connections each, and a listener) pass
# this machine's max_connections of 100 under the connect storm (docs/deployment.md).
CONFIGS = (("sqlite", 1), ("postgresql", 1), ("postgresql", 2), ("postgresql", 4))
BYSTANDERS = (2, 4, 8)


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


QUIET_PER_PROCESS = 8  # users with one idle tab on each process that hosts no busy user


def hold_idle_tabs(target: Target, users: int) -> subprocess.Popen[str]:
    """Start a load generator holding one idle tab of each of ``users`` users on ``target``;
    return once they are connected."""
    command = load_command(target, users, 1, mode="idle")
    idler = subprocess.Popen(
        command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert idler.stdout is not None
    json.loads(idler.stdout.readline())  # {"connected": ...}
    return idler


def release(idlers: list[subprocess.Popen[str]]) -> None:
    """Close the idle tabs' generators (their stdin) and wait for them."""
    for idler in idlers:
        if idler.stdin is not None:
            idler.stdin.close()
        idler.wait(timeout=60)


async def bystanders(count: int, args: argparse.Namespace) -> dict[str, Any]:
    """What a process pays for changes of users it hosts no tab of (interest routing).

    ``count`` processes on a fresh PostgreSQL database; every busy user's tabs on the first,
    which is saturated with switches. Each other process (a bystander) holds one idle tab of
    each of ``QUIET_PER_PROCESS`` quiet users of its own, so it listens on their shards as a
    real process would (8 of 64: it is woken for about 1 change in 8, and reads rows of other
    users that share a shard). Its CPU during the load, beyond its CPU over an idle window of
    the same length just before, is divided by the accepted switches and compared with the
    hosting process's CPU per accepted switch.
    """
    quiet = QUIET_PER_PROCESS * (count - 1)
    with tempfile.TemporaryDirectory() as tmp:
        async with fresh_database() as url:
            settings = Settings(database_url=url, log_level="warning")
            population = await populate(settings, args.users + quiet)
            ids = sorted(population.tokens)
            busy, rest = ids[: args.users], ids[args.users :]
            busy_tokens = Path(tmp) / "busy.json"
            busy_tokens.write_text(json.dumps({str(u): population.tokens[u] for u in busy}))
            processes: list[HubProcess] = []
            idlers: list[subprocess.Popen[str]] = []
            try:
                for n in range(count):
                    processes.append(await HubProcess(settings, Path(tmp) / f"hub{n}.log").start())
                pids = [p.process.pid for p in processes if p.process is not None]
                for n, process in enumerate(processes[1:]):
                    mine = rest[n * QUIET_PER_PROCESS : (n + 1) * QUIET_PER_PROCESS]
                    tokens = Path(tmp) / f"quiet{n}.json"
                    tokens.write_text(json.dumps({str(u): population.tokens[u] for u in mine}))
                    quiet_target = Target(f"ws://127.0.0.1:{process.port}/ws", 0, str(tokens))
                    idlers.append(await asyncio.to_thread(hold_idle_tabs, quiet_target, len(mine)))
                for pid in pids:
                    await settle(pid)
                before = [cpu_seconds(pid) for pid in pids]
                await asyncio.sleep(args.duration)
                idle = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
                target = Target(f"ws://127.0.0.1:{processes[0].port}/ws", pids[0], str(busy_tokens))
                phase = await asyncio.to_thread(load, target, args, mode="saturate", pids=pids)
                used = phase["phase_cpu_s"]
                seen = [(await p.health())["backplane"] for p in processes[1:]]
            finally:
                await asyncio.to_thread(release, idlers)
                for process in processes:
                    process.stop()
    accepted = phase["accepted"]
    hosting = used[0] / accepted
    # The phase's window (its duration and the last second) against the idle window's length.
    scale = phase["phase_window_s"] / args.duration
    extra = [max(0.0, u - i * scale) for u, i in zip(used[1:], idle[1:], strict=True)]
    per_change = statistics.mean(extra) / accepted if extra else None
    result = {
        "processes": count,
        "accepted": accepted,
        "accepted_per_s": phase["accepted_per_s"],
        "hosting_cpu_ms_per_switch": round(1000 * hosting, 4),
        "bystander_idle_cpu_s": [round(i, 2) for i in idle[1:]],
        "bystander_cpu_s": [round(u, 2) for u in used[1:]],
        # Per bystander since its start: looks at the feed, wake-ups passed over (they named
        # none of its users), and events of others it read.
        "bystander_looks": [b["looks"] for b in seen],
        "bystander_passed": [b["passed"] for b in seen],
        "bystander_events_read": [b["delivered"] for b in seen],
        "bystander_cpu_ms_per_switch": None if per_change is None else round(1000 * per_change, 4),
        "bystander_share": None if per_change is None else round(per_change / hosting, 4),
    }
    print(f"bystanders x{count}: {json.dumps(result)}", flush=True)
    return result


def bystander_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| processes | accepted/s on the hosting process | hosting CPU ms per switch "
        "| bystander CPU ms per switch, beyond idle | share of the hosting cost |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results:
        share = r["bystander_share"]
        lines.append(
            f"| {r['processes']} | {r['accepted_per_s']} | {r['hosting_cpu_ms_per_switch']} "
            f"| {r['bystander_cpu_ms_per_switch']} "
            f"| {'' if share is None else f'{100 * share:.2f}%'} |"
        )
    return "\n".join(lines)


async def measure(engine: str, count: int, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"engine": engine, "processes": count}
    async with hubs(engine, count, args.users) as (target, pids):
        for label, mode in (("rate", {"mode": "rate", "rate": args.rate}), ("saturate", {})):
            phase = await asyncio.to_thread(
                load, target, args, pids=pids, **(mode or {"mode": "saturate"})
            )
            # Over the phase alone (its start and end marks), not the connects before it.
            phase["hub_cpu_s"] = round(sum(phase["phase_cpu_s"]), 2)
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
    """Deliveries a second with a core (or what one process used here) per process.

    D(N) = N x U / c(N): U is the CPU one process used per second of the saturated phase
    here, c(N) the hub CPU per delivery measured with N processes, both over the phase alone
    (bench/load.py marks its start and end; the connects before it are not counted). For
    N = 1 it gives back the measured figure by construction (over the phase's window, which
    includes its last second); what it adds is how the cost per delivery grows with N.
    """
    pg = sorted((r for r in results if r["engine"] == "postgresql"), key=lambda r: r["processes"])
    if not pg:
        return "(not measured)"
    one = pg[0]["saturate"]
    used = one["hub_cpu_s"] / one.get("phase_window_s", one["elapsed_s"])
    lines = [
        f"One process used {used:.2f} CPU-s a second of the saturated phase (the connects "
        "before it not counted). With that much for each process (PostgreSQL, the proxy and "
        "the clients elsewhere), N processes deliver D(N) = N x U / c(N), c(N) being the hub "
        "CPU per delivery measured with N processes. For one process this gives back the "
        "measured figure by construction (over the phase's window, its last second "
        "included); what it shows is what each added process costs when tabs are spread:",
        "",
    ]
    for r in pg:
        n, cost = r["processes"], r["saturate"]["hub_cpu_s_per_1000_deliveries"] / 1000
        note = f" (measured: {one['deliveries_per_s']:,})" if n == 1 else ""
        lines.append(
            f"- {n} {'process' if n == 1 else 'processes'}: c = {1e6 * cost:.0f} us, "
            f"D = {round(n * used / cost):,} deliveries/s{note}"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    raw = ROOT / "bench" / "scale.json"
    saved = json.loads(raw.read_text()) if raw.exists() else {}
    date = saved.get("date", "")
    results: list[dict[str, Any]] = list(saved.get("results", []))
    by: list[dict[str, Any]] = list(saved.get("bystanders", []))
    if not args.render:
        date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        if args.part in ("all", "spread"):
            results = [await measure(engine, count, args) for engine, count in CONFIGS]
        if args.part in ("all", "bystanders"):
            by = [await bystanders(count, args) for count in BYSTANDERS]
    if results:
        print(table(results, args.rate))
        print(projection(results))
    if by:
        print(bystander_table(by))
    if args.write and not args.render:
        raw.write_text(json.dumps({"date": date, "results": results, "bystanders": by}, indent=1))
    if args.write or args.render:
        page = PAGE.format(
            date=date,
            machine=machine(),
            versions=versions(node=False),
            users=args.users,
            tabs=args.tabs,
            duration=args.duration,
            rate=f"{args.rate:,}",
            table=table(results, args.rate),
            projection=projection(results),
            bystanders=bystander_table(by) if by else "(not measured yet)",
            raw=json.dumps({"results": results, "bystanders": by}, indent=1),
        )
        (ROOT / "bench" / "SCALE.md").write_text(page)


PAGE = """# Scale-out: hub processes on PostgreSQL

Produced by `python -m bench.scale --write` on {date}.

- Machine: {machine}; the hub processes, PostgreSQL and the load generator share its cores
- Versions: {versions}
- Workload: {users} users x {tabs} tabs, the tabs of each user spread over the processes;
  {duration} s per phase: {rate} switches/s, then saturation (one switch in flight per user)

{table}

"x one process" compares saturated deliveries with one process of the same engine. Here every
user's tabs are spread over all the processes, so each process reads every change: interest
routing cannot help, and the cost per delivery grows with the processes for that reason and
because they share 2 cores.

## Projection

{projection}

## Changes of users a process hosts no tab of

Produced by `python -m bench.scale --part bystanders --write` (`{users}` busy users x `{tabs}`
tabs, all on the first process, saturated for {duration} s; each other process holds one idle
tab of each of 8 quiet users, so it listens on 8 of the 64 shards). A bystander's CPU during
the load beyond its CPU over an idle window of the same length, per accepted switch, against
the hosting process's CPU per accepted switch. Target: under 1%. Before the change feed it was
3.4% (every process received every change's payload); with the feed by shard, 1.03% to 1.17%
(2026-12-06: woken by every commit of its shards, it looked and decoded its neighbours'
rows); now a wake-up names the users it changed, a bystander passes over those that name none
of its users, and decodes no row that lists none. The kernel counts CPU in 10 ms ticks: the
bystanders' excess here is one to three ticks each, so the share is an upper bound of that
order, not a precise figure.

{bystanders}

## The commit ceiling and NOTIFY

`python -m bench.commits --engine postgresql` measures durable switches a second with and
without the NOTIFY that wakes other processes (bench/RESULTS.md's run log has the figures).
On 2026-12-07, with wake-ups that name their users, NOTIFY cost 1% to 5% of the group-commit
ceiling (8,963 against 9,032 switches/s with one store, 12,390 against 13,086 with eight) and
2% to 10% of a commit per switch (4% to 10% and about 15% on 2026-12-06, a slower day): the
hub's own CPU, not NOTIFY's lock, is the ceiling on 2 cores. Group commit puts 125 to 256
switches in a commit at saturation, so the published ceilings of NOTIFY (500 to 1,000
notifying commits a second) stand for 60,000 switches a second or more.

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
        "--part",
        choices=["all", "spread", "bystanders"],
        default="all",
        help="measure only the spread tabs or only the bystanders (the rest is kept)",
    )
    parser.add_argument(
        "--render", action="store_true", help="measure nothing: rewrite SCALE.md from scale.json"
    )
    os.chdir(ROOT)
    asyncio.run(main(parser.parse_args()))
