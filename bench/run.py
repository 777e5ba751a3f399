"""Run the benchmark: every target under the same workload, in one run; print ratios.

    .venv/bin/python -m bench.run [--users 500] [--tabs 5] [--duration 10] [--idle-tabs 10000]
                                  [--rounds 5] [--write]

Targets (bench/targets.py), each its own process, all started together: the hub on SQLite;
the ceilings, Python's websockets and Node's ws; the peers, python-socketio and Socket.IO 4
on Node (defaults, and tuned). The load generator (bench/load.py) is a separate process.
Each phase runs against every target in turn before the next phase (A B C ... A B C), so a
ratio compares minutes that are next to each other: resident memory per idle tab with
--idle-tabs tabs on each fresh process, latency at fixed rates, then --rounds rounds of
saturation (throughput and CPU per delivery), reported as the median ratio with its spread.
Then bench/commits.py's store-level comparison of group commit with a naive commit per
switch. --write records everything in bench/RESULTS.md and plots latency against rate in
bench/latency.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy
import uvicorn

from bench import commits
from bench.targets import (
    ROOT,
    Target,
    ceiling,
    cpu_seconds,
    hub,
    node_ceiling,
    node_packages,
    node_socketio,
    node_socketio_tuned,
    peer,
    rss_kib,
    settle,
)
from server import __version__

__all__ = ["ROOT", "Target", "cpu_seconds", "idle_memory", "load", "load_command", "settle"]

RATES = (250, 500, 1000, 2000, 4000)


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


def phase(target: Target, args: argparse.Namespace, label: str, **mode: Any) -> dict[str, Any]:
    """Run one phase against ``target``, with the target's CPU over it."""
    cpu = cpu_seconds(target.pid)
    if label.endswith("_flood"):
        result = load_under_flood(target, args, **mode)
    else:
        result = load(target, args, **mode)
    result["server_cpu_s"] = round(cpu_seconds(target.pid) - cpu, 2)
    deliveries = result["deliveries_per_s"] * result["elapsed_s"]
    result["server_cpu_s_per_1000_deliveries"] = (
        round(1000 * result["server_cpu_s"] / deliveries, 3) if deliveries else None
    )
    return result


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every target, all running at once; each phase against each target in turn."""
    users = max(args.users, args.idle_tabs // args.tabs)
    results: dict[str, dict[str, Any]] = {name: {"target": name} for name, _ in TARGETS}
    async with contextlib.AsyncExitStack() as stack:
        running = [(name, await stack.enter_async_context(start(users))) for name, start in TARGETS]
        # Memory first, on fresh processes, as a user's first 10,000 tabs would find them.
        for name, target in running:
            found = await asyncio.to_thread(idle_memory, target, args.idle_tabs, args.tabs)
            results[name]["idle"] = found
            print(f"{name} idle: {json.dumps(found)}", flush=True)
            await settle(target.pid)
        phases: list[tuple[str, dict[str, Any]]] = [
            (f"rate_{rate}", {"mode": "rate", "rate": rate}) for rate in RATES
        ]
        phases += [("saturate", {"mode": "saturate"})] * args.rounds
        for label, mode in phases:
            for name, target in running:
                result = await asyncio.to_thread(phase, target, args, label, **mode)
                if label == "saturate":
                    results[name].setdefault("rounds", []).append(result)
                else:
                    results[name][label] = result
                print(f"{name} {label}: {json.dumps(result)}", flush=True)
                # A target still working off a backlog would skew the next phase: wait it out.
                await settle(target.pid)
        # Only the hub limits a tab's rate; the others would just serve the flood.
        hub_target = dict(running)[HUB]
        flooded = await asyncio.to_thread(phase, hub_target, args, "rate_1000_flood", rate=1000)
        results[HUB]["rate_1000_flood"] = flooded
        print(f"{HUB} rate_1000_flood: {json.dumps(flooded)}", flush=True)
    for r in results.values():
        # The round of median deliveries stands for the target in the tables.
        r["saturate"] = sorted(r["rounds"], key=lambda x: x["deliveries_per_s"])[
            len(r["rounds"]) // 2
        ]
    return list(results.values())


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


def round_ratios(all_results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The hub's saturated deliveries over each other target's, round by round (each round
    runs every target in turn): the median ratio, and its spread over the rounds."""
    by = {r["target"]: r for r in all_results}
    hub_rounds = by[HUB].get("rounds", [by[HUB]["saturate"]])
    found = {}
    for name, key in OTHERS.items():
        other = by[name].get("rounds", [by[name]["saturate"]])
        each = [
            round(h["deliveries_per_s"] / o["deliveries_per_s"], 2)
            for h, o in zip(hub_rounds, other, strict=True)
            if o["deliveries_per_s"]
        ]
        found[f"deliveries_hub_over_{key}"] = {
            "median": round(statistics.median(each), 2) if each else math.nan,
            "low": min(each, default=math.nan),
            "high": max(each, default=math.nan),
            "rounds": each,
        }
    return found


def ratios(all_results: list[dict[str, Any]]) -> dict[str, float]:
    by = {r["target"]: r for r in all_results}
    hub_r, ceiling_r = by[HUB], by[CEILING]

    def ratio(a: float, b: float) -> float:
        return round(a / b, 2) if b else math.nan

    found = {key: value["median"] for key, value in round_ratios(all_results).items()}
    found["p99_at_1000_hub_over_ceiling"] = ratio(
        hub_r["rate_1000"]["p99_ms"], ceiling_r["rate_1000"]["p99_ms"]
    )
    found["p99_at_1000_hub_flooded_over_not"] = (
        ratio(hub_r["rate_1000_flood"]["p99_ms"], hub_r["rate_1000"]["p99_ms"])
        if "rate_1000_flood" in hub_r
        else math.nan
    )
    # Authenticated connects (a session lookup, a state and a hold read each) against bare
    # ones: the 10,000 tabs of the memory phase, connected 100 at a time.
    found["connect_rate_hub_over_ceiling"] = ratio(
        hub_r["idle"]["idle_connect_tabs_per_s"], ceiling_r["idle"]["idle_connect_tabs_per_s"]
    )
    for name, key in OTHERS.items():
        found[f"idle_memory_hub_over_{key}"] = ratio(
            hub_r["idle"]["rss_kib_per_idle_tab"], by[name]["idle"]["rss_kib_per_idle_tab"]
        )
    return found


def ratio_lines(all_results: list[dict[str, Any]]) -> str:
    """The ratios, each saturated one as its median over the rounds with its spread."""
    spread = round_ratios(all_results)
    lines = []
    for key, value in ratios(all_results).items():
        if key in spread:
            r = spread[key]
            lines.append(
                f"- {key}: **{value}** (rounds: {', '.join(map(str, r['rounds']))}; "
                f"spread {r['low']} to {r['high']})"
            )
        else:
            lines.append(f"- {key}: **{value}**")
    return "\n".join(lines)


COLORS = ("tab:blue", "tab:cyan", "tab:orange", "tab:red", "tab:purple", "tab:green")


def plot(all_results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 5), dpi=100)
    for r, color in zip(all_results, COLORS, strict=False):
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
NODE_CEILING = "ceiling (Node ws)"
PEER = "peer (python-socketio)"
NODE_PEER = "Socket.IO 4 (Node, defaults)"
NODE_TUNED = "Socket.IO 4 (Node, tuned)"
HUB = "hub (SQLite, synchronous=NORMAL)"
TARGETS: list[tuple[str, Callable[[int], Any]]] = [
    (CEILING, ceiling),
    (NODE_CEILING, node_ceiling),
    (PEER, peer),
    (NODE_PEER, node_socketio),
    (NODE_TUNED, node_socketio_tuned),
    (HUB, hub),
]
# The targets the hub is compared with, and their names in the ratios.
OTHERS = {
    CEILING: "ceiling",
    NODE_CEILING: "node_ws",
    PEER: "peer",
    NODE_PEER: "node_socketio",
    NODE_TUNED: "node_socketio_tuned",
}


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
            "targets": await measure(args),
        }
        # The raw figures first, after each part: a failure below must not lose a long run.
        raw_path = ROOT / "bench" / "results.json"
        if args.write:
            raw_path.write_text(json.dumps(raw, indent=1))
        raw["commits"] = await commits.main(
            argparse.Namespace(users=1000, duration=5, engine="sqlite")
        )
        if args.write:
            raw_path.write_text(json.dumps(raw, indent=1))
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
                rounds=arguments.get("rounds", 1),
                table=table(results),
                rates=rate_table(results),
                commits=commits.table(store),
                ratios=ratio_lines(results),
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
        (
            "saturated deliveries/s >= 1 x Socket.IO on Node (defaults)",
            found["deliveries_hub_over_node_socketio"],
            1,
        ),
        (
            "saturated deliveries/s >= 1 x Socket.IO on Node (tuned)",
            found["deliveries_hub_over_node_socketio_tuned"],
            1,
        ),
        ("durable switches/s on SQLite (NORMAL) >= 10,000", durable, 10_000),
        ("p99 at 1,000/s <= 10 ms", -hub_r["rate_1000"]["p99_ms"], -10),
        ("KiB per idle tab <= 20", -hub_r["idle"]["rss_kib_per_idle_tab"], -20),
        (
            "KiB per idle tab below every other target's (hub / lowest)",
            -max(found[f"idle_memory_hub_over_{key}"] for key in OTHERS.values()),
            -1,
        ),
        ("flooded p99 / p99 <= 2", -found["p99_at_1000_hub_flooded_over_not"], -2),
        (
            "connect rate >= 0.8 x ceiling (10,000 tabs)",
            found["connect_rate_hub_over_ceiling"],
            0.8,
        ),
    ]
    lines = ["| target | this run | |", "| --- | --- | --- |"]
    for name, value, bound in rows:
        status = "met" if value >= bound else "**missed**"
        lines.append(f"| {name} | {abs(value):g} | {status} |")
    return "\n".join(lines)


def versions(node: bool = True) -> str:
    found = (
        f"Python {platform.python_version()}, hub {__version__}, "
        f"uvicorn {uvicorn.__version__}, websockets {metadata.version('websockets')}, "
        f"python-socketio {metadata.version('python-socketio')}, "
        f"SQLAlchemy {sqlalchemy.__version__}, msgspec {msgspec.__version__}"
    )
    if node:
        packages = node_packages()
        found += ", " + ", ".join(f"{name} {version}" for name, version in packages.items())
    return found


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

Each phase ran against every target in turn before the next phase; saturation ran {rounds}
rounds of that, and each saturated ratio is the median of its rounds' ratios, with their
spread. The tables above show each target's median round.

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
    parser.add_argument(
        "--rounds", type=int, default=5, help="saturation rounds, every target in each"
    )
    parser.add_argument("--write", action="store_true")
    parser.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: rewrite RESULTS.md and the plot from bench/results.json",
    )
    asyncio.run(main(parser.parse_args()))
