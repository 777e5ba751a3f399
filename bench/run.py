"""Run the benchmark: every target under the same workload, in one run; print ratios.

    .venv/bin/python -m bench.run [--users 500] [--tabs 5] [--duration 10] [--idle-tabs 10000]
                                  [--write]

Targets, each its own process, measured one after the other with the same load:
- the hub: a `hub serve` process on SQLite, with its real durability setting;
- the ceiling (bench/ceiling.py): bare websockets, an in-memory counter per user;
- the peer (bench/peer.py): python-socketio under uvicorn, one room per user.
The load generator (bench/load.py) is a separate process. For each target: latency at
fixed rates, saturation throughput, CPU per delivery, connect rate, and resident memory per
idle tab with --idle-tabs tabs connected. Then bench/commits.py's store-level comparison of
group commit with a naive commit per switch. --write records everything in
bench/RESULTS.md and plots latency against rate in bench/latency.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy
import uvicorn

from bench import commits
from server import __version__
from server.settings import Settings
from tests.support.population import populate
from tests.support.processes import HubProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
RATES = (250, 500, 1000, 2000, 4000)


@dataclass(frozen=True)
class Target:
    """A running target: where tabs connect, its process, and how tabs authenticate."""

    url: str
    pid: int
    tokens: str | None = None
    protocol: str = "hub"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def spawn(module: str, port: int) -> subprocess.Popen[bytes]:
    """Start a target module (bench.ceiling, bench.peer) listening on ``port``."""
    return subprocess.Popen([sys.executable, "-m", module, "--port", str(port)], cwd=ROOT)


def spawn_ceiling(port: int) -> subprocess.Popen[bytes]:
    """Start bench/ceiling.py on ``port``."""
    return spawn("bench.ceiling", port)


@contextlib.asynccontextmanager
async def module_target(module: str, path: str, protocol: str) -> AsyncIterator[Target]:
    port = free_port()
    process = spawn(module, port)
    try:
        await wait_port(port)
        yield Target(f"ws://127.0.0.1:{port}{path}", process.pid, protocol=protocol)
    finally:
        process.kill()
        process.wait()


def ceiling(users: int) -> contextlib.AbstractAsyncContextManager[Target]:
    return module_target("bench.ceiling", "/ws", "hub")


def peer(users: int) -> contextlib.AbstractAsyncContextManager[Target]:
    return module_target("bench.peer", "/socket.io/?EIO=4&transport=websocket", "socketio")


@contextlib.asynccontextmanager
async def hub(users: int) -> AsyncIterator[Target]:
    with tempfile.TemporaryDirectory() as tmp:
        # The hub's real settings, rate limits included (the workload stays far under them:
        # about 2 switches per second per tab at most; the flood phase is what they are for).
        settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp}/hub.db", log_level="warning")
        population = await populate(settings, users)
        tokens = Path(tmp) / "tokens.json"
        tokens.write_text(json.dumps({str(u): t for u, t in population.tokens.items()}))
        process = await HubProcess(settings, Path(tmp) / "hub.log").start()
        try:
            assert process.process is not None
            yield Target(f"ws://127.0.0.1:{process.port}/ws", process.process.pid, str(tokens))
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


def load_command(target: Target, users: int, tabs: int, **mode: Any) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "bench.load",
        "--target",
        target.url,
        "--protocol",
        target.protocol,
        "--users",
        str(users),
        "--tabs",
        str(tabs),
    ]
    for key, value in mode.items():
        command += [f"--{key}", str(value)]
    if target.tokens:
        command += ["--tokens", target.tokens]
    return command


def load(
    target: Target,
    args: argparse.Namespace,
    *,
    pids: Sequence[int] = (),
    **mode: Any,
) -> dict[str, Any]:
    """Run one phase of the load generator; return its result, with the CPU each of ``pids``
    used over the phase itself (from its start mark to its end mark: not the connects before
    it) as ``phase_cpu_s``, and that window's length as ``phase_window_s``."""
    command = load_command(target, args.users, args.tabs, duration=args.duration, **mode)
    marks: dict[str, tuple[float, list[float]]] = {}
    # stderr to a file: a generator that logs much would block on a full pipe unread.
    with (
        tempfile.TemporaryFile("w+") as stderr,
        subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True
        ) as process,
    ):
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            found = json.loads(line) if line.startswith("{") else None
            if isinstance(found, dict) and "mark" in found:
                marks[found["mark"]] = (time.monotonic(), [cpu_seconds(p) for p in pids])
            else:
                lines.append(line)
        process.wait()
        stderr.seek(0)
        errors = stderr.read()
    if process.returncode != 0:
        raise RuntimeError(
            f"the load generator exited with {process.returncode}: {' '.join(command)}\n"
            f"{errors.strip()[-4000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    if pids and {"start", "end"} <= set(marks):
        (t0, cpu0), (t1, cpu1) = marks["start"], marks["end"]
        result["phase_cpu_s"] = [round(b - a, 2) for a, b in zip(cpu0, cpu1, strict=True)]
        result["phase_window_s"] = round(t1 - t0, 2)
    return result


def load_under_flood(target: Target, args: argparse.Namespace, rate: int) -> dict[str, Any]:
    """A rate phase while one tab of another user floods the target (bench/load.py flood)."""
    command = load_command(target, args.users, 1, mode="flood", duration=600)
    with subprocess.Popen(
        command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as flooder:
        time.sleep(1)  # the flood is under way before the measured tabs connect
        result = load(target, args, mode="rate", rate=rate)
        output, _ = flooder.communicate(timeout=120)  # closes its stdin: the flood stops
    result["flood"] = json.loads(output.strip().splitlines()[-1])
    return result


def idle_memory(target: Target, tabs: int, per_user: int) -> dict[str, Any]:
    """Connect ``tabs`` idle tabs and measure the target's resident memory per tab."""
    before = rss_kib(target.pid)
    command = load_command(target, tabs // per_user, per_user, mode="idle")
    with subprocess.Popen(
        command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdin is not None and process.stdout is not None
        connected = json.loads(process.stdout.readline())
        time.sleep(3)  # let the target finish what the connects left it
        after = rss_kib(target.pid)
        process.stdin.close()
        process.wait(timeout=120)
    return {
        "idle_tabs": connected["connected"],
        "idle_connect_tabs_per_s": connected["connect_tabs_per_s"],
        "rss_kib_before": before,
        "rss_kib_after": after,
        "rss_kib_per_idle_tab": round((after - before) / connected["connected"], 1),
    }


async def measure(
    name: str, start: Callable[[int], Any], args: argparse.Namespace, *, flood: bool = False
) -> dict[str, Any]:
    results: dict[str, Any] = {"target": name}
    users = max(args.users, args.idle_tabs // args.tabs)
    async with start(users) as target:
        # Memory first, on a fresh process, as a user's first 10,000 tabs would find it.
        results["idle"] = await asyncio.to_thread(idle_memory, target, args.idle_tabs, args.tabs)
        print(f"{name} idle: {json.dumps(results['idle'])}", flush=True)
        await settle(target.pid)
        phases: list[tuple[str, dict[str, Any]]] = [
            (f"rate_{rate}", {"mode": "rate", "rate": rate}) for rate in RATES
        ]
        phases.append(("saturate", {"mode": "saturate"}))
        if flood:
            phases.append(("rate_1000_flood", {"rate": 1000}))
        for label, mode in phases:
            cpu = cpu_seconds(target.pid)
            if label.endswith("_flood"):
                result = await asyncio.to_thread(load_under_flood, target, args, **mode)
            else:
                result = await asyncio.to_thread(load, target, args, **mode)
            result["server_cpu_s"] = round(cpu_seconds(target.pid) - cpu, 2)
            deliveries = result["deliveries_per_s"] * result["elapsed_s"]
            result["server_cpu_s_per_1000_deliveries"] = (
                round(1000 * result["server_cpu_s"] / deliveries, 3) if deliveries else None
            )
            results[label] = result
            print(f"{name} {label}: {json.dumps(result)}", flush=True)
            # A target still working off a backlog would skew the next phase: wait it out.
            await settle(target.pid)
    return results


def latency_cell(result: dict[str, Any]) -> str:
    return f"{result['p50_ms']} / {result['p99_ms']} / {result['max_ms']}"


def table(all_results: list[dict[str, Any]]) -> str:
    rows = [
        "| target | connect tabs/s | p50 / p99 / max at 1,000/s (ms) "
        "| p50 / p99 / max at 4,000/s (ms) | saturated accepted/s | saturated deliveries/s "
        "| server CPU s per 1,000 deliveries | KiB per idle tab |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in all_results:
        a, b, s = r["rate_1000"], r["rate_4000"], r["saturate"]
        rows.append(
            f"| {r['target']} | {a['connect_tabs_per_s']} "
            f"| {latency_cell(a)} | {latency_cell(b)} "
            f"| {s['accepted_per_s']} | {s['deliveries_per_s']} "
            f"| {s['server_cpu_s_per_1000_deliveries']} "
            f"| {r['idle']['rss_kib_per_idle_tab']} |"
        )
    return "\n".join(rows)


def rate_table(all_results: list[dict[str, Any]]) -> str:
    header = " | ".join(f"{rate:,}/s" for rate in RATES)
    rows = [
        f"| target | {header} |",
        "| --- |" + " --- |" * len(RATES),
    ]
    for r in all_results:
        cells = []
        for rate in RATES:
            phase = r[f"rate_{rate}"]
            cells.append(f"{phase['p99_ms']} ({phase['accepted_per_s']} acc/s)")
        rows.append(f"| {r['target']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def ratios(all_results: list[dict[str, Any]]) -> dict[str, float]:
    by = {r["target"]: r for r in all_results}
    hub_r, ceiling_r, peer_r = by[HUB], by[CEILING], by[PEER]

    def ratio(a: float, b: float) -> float:
        return round(a / b, 2) if b else math.nan

    return {
        "deliveries_hub_over_ceiling": ratio(
            hub_r["saturate"]["deliveries_per_s"], ceiling_r["saturate"]["deliveries_per_s"]
        ),
        "deliveries_hub_over_peer": ratio(
            hub_r["saturate"]["deliveries_per_s"], peer_r["saturate"]["deliveries_per_s"]
        ),
        "p99_at_1000_hub_over_ceiling": ratio(
            hub_r["rate_1000"]["p99_ms"], ceiling_r["rate_1000"]["p99_ms"]
        ),
        "p99_at_1000_hub_flooded_over_not": ratio(
            hub_r["rate_1000_flood"]["p99_ms"], hub_r["rate_1000"]["p99_ms"]
        )
        if "rate_1000_flood" in hub_r
        else math.nan,
        "idle_memory_hub_over_ceiling": ratio(
            hub_r["idle"]["rss_kib_per_idle_tab"], ceiling_r["idle"]["rss_kib_per_idle_tab"]
        ),
    }


def plot(all_results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 5), dpi=100)
    for r, color in zip(all_results, ("tab:blue", "tab:orange", "tab:green"), strict=False):
        for key, style in (("p50_ms", "--"), ("p99_ms", "-")):
            values = [r[f"rate_{rate}"][key] for rate in RATES]
            label = f"{r['target']} {key[:3]}"
            axes.plot(RATES, values, style, color=color, marker="o", label=label)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("offered switches per second (the table gives the accepted rates)")
    axes.set_ylabel("switch to all tabs of the user (ms)")
    axes.set_title("Switch to all tabs of the user, 500 users x 5 tabs")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)


CEILING = "ceiling (bare websockets)"
PEER = "peer (python-socketio)"
HUB = "hub (SQLite, synchronous=NORMAL)"


async def main(args: argparse.Namespace) -> None:
    if args.render:
        raw = json.loads((ROOT / "bench" / "results.json").read_text())
    else:
        raw = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
            "arguments": {k: v for k, v in vars(args).items() if k not in {"write", "render"}},
            "machine": machine(),
            "versions": versions(),
            "targets": [
                await measure(CEILING, ceiling, args),
                await measure(PEER, peer, args),
                # Only the hub limits a tab's rate; the others would just serve the flood.
                await measure(HUB, hub, args, flood=True),
            ],
            "commits": await commits.main(argparse.Namespace(users=1000, duration=5)),
        }
        if args.write:  # the raw figures first: a failure below must not lose a long run
            (ROOT / "bench" / "results.json").write_text(json.dumps(raw, indent=1))
    results, store = raw["targets"], raw["commits"]
    raw["ratios"] = found = ratios(results)
    print()
    print(table(results))
    print()
    print(rate_table(results))
    print()
    print(commits.table(store))
    print(json.dumps(found, indent=1))
    if args.write or args.render:
        plot(results, ROOT / "bench" / "latency.png")
        arguments = raw["arguments"]
        page = ROOT / "bench" / "RESULTS.md"
        page.write_text(
            RESULTS.format(
                date=raw["date"],
                machine=raw["machine"],
                versions=raw["versions"],
                command=raw["command"],
                users=arguments["users"],
                tabs=arguments["tabs"],
                duration=arguments["duration"],
                idle_tabs=f"{arguments['idle_tabs']:,}",
                table=table(results),
                rates=rate_table(results),
                commits=commits.table(store),
                ratios="\n".join(f"- {key}: **{value}**" for key, value in found.items()),
                targets=targets(results, store),
                raw=json.dumps(raw, indent=1),
            )
            + kept_log(page)
        )


def kept_log(page: Path) -> str:
    """Return the page's run log (written by hand, newest first), which a rewrite keeps."""
    text = page.read_text() if page.exists() else ""
    at = text.find(RUN_LOG)
    return text[at:] if at >= 0 else RUN_LOG + "\n(none yet)\n"


def targets(all_results: list[dict[str, Any]], store: list[dict[str, Any]]) -> str:
    """The targets against this run's figures, each met or missed."""
    by = {r["target"]: r for r in all_results}
    hub_r = by[HUB]
    found = ratios(all_results)
    group = [c for c in store if c["synchronous"] == "NORMAL" and c["commit_batch_max"] > 1]
    durable = group[0]["accepted_per_s"] if group else math.nan
    rows = [
        ("saturated deliveries/s >= 0.9 x ceiling", found["deliveries_hub_over_ceiling"], 0.9),
        ("saturated deliveries/s >= 2 x python-socketio", found["deliveries_hub_over_peer"], 2),
        ("durable switches/s on SQLite (NORMAL) >= 10,000", durable, 10_000),
        ("p99 at 1,000/s <= 10 ms", -hub_r["rate_1000"]["p99_ms"], -10),
        ("KiB per idle tab <= 20", -hub_r["idle"]["rss_kib_per_idle_tab"], -20),
        ("flooded p99 / p99 <= 2", -found["p99_at_1000_hub_flooded_over_not"], -2),
    ]
    lines = ["| target | this run | |", "| --- | --- | --- |"]
    for name, value, bound in rows:
        status = "met" if value >= bound else "**missed**"
        lines.append(f"| {name} | {abs(value):g} | {status} |")
    return "\n".join(lines)


def versions() -> str:
    return (
        f"Python {platform.python_version()}, hub {__version__}, "
        f"uvicorn {uvicorn.__version__}, websockets {metadata.version('websockets')}, "
        f"python-socketio {metadata.version('python-socketio')}, "
        f"SQLAlchemy {sqlalchemy.__version__}, msgspec {msgspec.__version__}"
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

Produced by `{command}` on {date}
(`make bench` runs the same with the default arguments; `python -m bench.run --render`
rewrites this page and the plot from the raw figures in bench/results.json).

- Machine: {machine}, shared and noisy: compare the ratios of one run, not runs
- Versions: {versions}
- Workload: {users} users x {tabs} tabs; each phase {duration} s, the first second of each
  rate phase is warm-up; the load generator is a separate process with real WebSocket
  clients (bench/load.py). Idle memory: {idle_tabs} tabs connected to a fresh process.

## Side by side

{table}

Latency is from sending a switch to the moment every tab of the user has the new state, for
accepted switches. Server CPU is the target process's user + system time during the phase.
KiB per idle tab is the target's resident memory growth with {idle_tabs} tabs connected,
divided by the number of tabs.

## p99 latency against offered rate (ms)

{rates}

![latency against rate](latency.png)

## Durable switches: group commit against a commit per switch

`bench/commits.py`, in the same run: 1,000 concurrent callers (one per user) on the hub's
real store and a real SQLite file, below the WebSocket layer; every switch acknowledged only
after its commit.

{commits}

## Ratios

{ratios}

## Targets

{targets}

docs/performance.md explains each gap, with the profile behind it and the next lever.

<details><summary>Raw results</summary>

```json
{raw}
```
</details>

"""
# The page's last section: what each run measured and what had changed, by hand.
RUN_LOG = "## Run log"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--tabs", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--idle-tabs", type=int, default=10_000)
    parser.add_argument("--write", action="store_true")
    parser.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: rewrite RESULTS.md and the plot from bench/results.json",
    )
    asyncio.run(main(parser.parse_args()))
