"""Run the benchmark: every target under the same workload, in one run; print ratios.

    .venv/bin/python -m bench.run [--users 500] [--tabs 5] [--duration 10] [--write]

Targets: the hub (a `hub serve` process on SQLite, its real durability setting) and the
ceiling (bench/ceiling.py: bare websockets, in-memory counter). The load generator
(bench/load.py) is a separate process. --write records the results in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy
import uvicorn
import websockets

from server import __version__
from server.settings import Settings
from tests.load import HubProcess, free_port, populate

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def spawn_ceiling(port: int) -> subprocess.Popen[bytes]:
    """Start bench/ceiling.py on ``port``."""
    return subprocess.Popen([sys.executable, "-m", "bench.ceiling", "--port", str(port)], cwd=ROOT)


@contextlib.asynccontextmanager
async def ceiling(users: int) -> AsyncIterator[tuple[str, int, None]]:
    port = free_port()
    process = spawn_ceiling(port)
    try:
        await wait_port(port)
        yield f"ws://127.0.0.1:{port}/ws", process.pid, None
    finally:
        process.kill()
        process.wait()


@contextlib.asynccontextmanager
async def hub(users: int) -> AsyncIterator[tuple[str, int, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            database_url=f"sqlite+aiosqlite:///{tmp}/hub.db",
            messages_per_second=10_000,
            message_burst=10_000,
            log_level="warning",
        )
        population = await populate(settings, users)
        tokens = Path(tmp) / "tokens.json"
        tokens.write_text(json.dumps({str(u): t for u, t in population.tokens.items()}))
        process = await HubProcess(settings, Path(tmp) / "hub.log").start()
        try:
            assert process.process is not None
            yield f"ws://127.0.0.1:{process.port}/ws", process.process.pid, str(tokens)
        finally:
            process.stop()


async def wait_port(port: int) -> None:
    for _ in range(200):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


async def settle(pid: int, limit_s: float = 300) -> None:
    """Wait until the target process is idle (under 5% of a core over half a second)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        await asyncio.sleep(0.5)
        if cpu_seconds(pid) - before < 0.025:
            return


def load(target: str, tokens: str | None, args: argparse.Namespace, **mode: Any) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "bench.load",
        "--target",
        target,
        "--users",
        str(args.users),
        "--tabs",
        str(args.tabs),
        "--duration",
        str(args.duration),
    ]
    for key, value in mode.items():
        command += [f"--{key}", str(value)]
    if tokens:
        command += ["--tokens", tokens]
    output = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(output.stdout.strip().splitlines()[-1])
    return result


async def measure(name: str, start: Any, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"target": name}
    async with start(args.users) as (target, pid, tokens):
        idle = rss_kib(pid)
        for label, mode in (
            ("rate_1000", {"mode": "rate", "rate": 1000}),
            ("rate_4000", {"mode": "rate", "rate": 4000}),
            ("saturate", {"mode": "saturate"}),
        ):
            cpu = cpu_seconds(pid)
            result = await asyncio.to_thread(load, target, tokens, args, **mode)
            result["server_cpu_s"] = round(cpu_seconds(pid) - cpu, 2)
            deliveries = result["deliveries_per_s"] * result["elapsed_s"]
            result["server_cpu_s_per_1000_deliveries"] = (
                round(1000 * result["server_cpu_s"] / deliveries, 3) if deliveries else None
            )
            results[label] = result
            print(f"{name} {label}: {json.dumps(result)}", flush=True)
            # A target still working off a backlog would skew the next phase: wait it out.
            await settle(pid)
        results["rss_kib_before_load"] = idle
    return results


def table(all_results: list[dict[str, Any]]) -> str:
    rows = [
        "| target | connect tabs/s | p50 / p99 / max at 1,000/s (ms) "
        "| p50 / p99 / max at 4,000/s (ms) | saturated accepted/s | saturated deliveries/s "
        "| server CPU s per 1,000 deliveries |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in all_results:
        a, b, s = r["rate_1000"], r["rate_4000"], r["saturate"]
        rows.append(
            f"| {r['target']} | {a['connect_tabs_per_s']} "
            f"| {a['p50_ms']} / {a['p99_ms']} / {a['max_ms']} "
            f"| {b['p50_ms']} / {b['p99_ms']} / {b['max_ms']} "
            f"| {s['accepted_per_s']} | {s['deliveries_per_s']} "
            f"| {s['server_cpu_s_per_1000_deliveries']} |"
        )
    return "\n".join(rows)


async def main(args: argparse.Namespace) -> None:
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = [await measure("ceiling (bare websockets)", ceiling, args)]
    results.append(await measure("hub (SQLite, synchronous=NORMAL)", hub, args))
    ceiling_sat, hub_sat = results[0]["saturate"], results[1]["saturate"]
    ratio = hub_sat["deliveries_per_s"] / max(1, ceiling_sat["deliveries_per_s"])
    text = table(results)
    print()
    print(text)
    print(f"\nsaturated deliveries/s, hub / ceiling: {ratio:.2f}")
    if args.write:
        versions = (
            f"Python {platform.python_version()}, hub {__version__}, "
            f"uvicorn {uvicorn.__version__}, "
            f"websockets {websockets.__version__}, SQLAlchemy {sqlalchemy.__version__}, "
            f"msgspec {msgspec.__version__}"
        )
        command = " ".join(["python -m bench.run", *sys.argv[1:]])
        (ROOT / "bench" / "RESULTS.md").write_text(
            RESULTS.format(
                date=started,
                machine=machine(),
                versions=versions,
                command=command,
                users=args.users,
                tabs=args.tabs,
                duration=args.duration,
                table=text,
                ratio=f"{ratio:.2f}",
                raw=json.dumps(results, indent=1),
            )
        )


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    return f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}"


RESULTS = """# Benchmark results

Produced by `{command}` on {date}.

- Machine: {machine}
- Versions: {versions}
- Workload: {users} users x {tabs} tabs; each phase {duration} s; the load generator is a
  separate process with real WebSocket clients (bench/load.py).

{table}

Saturated deliveries per second, hub / ceiling: **{ratio}**.

Latency is from sending a switch to the moment every tab of the user has the new state, for
accepted switches. Server CPU is the target process's user + system time during the phase.

This is the baseline before issue 5's work (group commit, leaner tabs, python-socketio as the
peer): see the issue's progress note.

<details><summary>Raw results</summary>

```json
{raw}
```
</details>
"""


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--tabs", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--write", action="store_true")
    asyncio.run(main(parser.parse_args()))
