"""Reconnect storms: every tab of a process comes back at once after a restart.

    .venv/bin/python -m bench.storm [--tabs 10000] [--per-user 4] [--target hub|ceiling|both]
                                    [--within 60]

A target holds --tabs tabs (--per-user of each user); then it gets SIGTERM and, once it has
exited, is started again on the same port. The tabs reconnect as the shipped client does
(client/navigation.js): after a loss, a delay drawn uniformly from [0, min(20 s, 0.5 s x
2^attempt)), the attempt counted up by every failed try; a tab never gives up. The tabs are a
separate process (``python -m bench.storm tabs``), on the same machine's monotonic clock.

Reported for each target: the initial connect rate; the shutdown (SIGTERM to exit); the
start-up (spawn to the first hello, and to /healthz for the hub); seconds from SIGTERM and
from the spawn until every tab had a hello again; handshake errors by kind (connections
refused while nothing listened are counted apart: they are the restart, not an error); and
the tabs not back within --within seconds. The hub runs on SQLite with its real settings;
the ceiling is bench/ceiling.py (no authentication, no database).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bench.targets import ROOT, settle, spawn, wait_port
from server.settings import Settings
from tests.support.population import populate
from tests.support.processes import HubProcess, free_port

BASE_S, CAP_S = 0.5, 20.0  # client/navigation.js's baseDelayMs and maxDelayMs
HEARTBEAT_S = 20.0  # under the hub's heartbeat (25 s): a tab pings, as the client does


@dataclass
class StormTab:
    user: int
    name: str
    hellos: list[float] = field(default_factory=list)  # monotonic times of each hello


@dataclass
class Storm:
    tabs: list[StormTab]
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    refused: int = 0  # connections refused: nothing listened (the restart itself)


async def hold(storm: Storm, tab: StormTab, url: str, headers: dict[str, str]) -> None:
    """Keep one tab connected for ever, reconnecting with the client's backoff."""
    attempt = 0
    while True:
        try:
            connection = await connect(
                url,
                additional_headers=headers,
                compression=None,
                ping_interval=None,
                open_timeout=10,
                max_queue=None,
            )
        except ConnectionRefusedError:
            storm.refused += 1
        except InvalidStatus as error:
            storm.errors[f"http {error.response.status_code}"] += 1
        except (OSError, TimeoutError) as error:
            storm.errors[type(error).__name__] += 1
        else:
            try:
                async with asyncio.timeout(10):
                    await connection.recv()  # the hello
            except ConnectionClosed as error:
                code = error.rcvd.code if error.rcvd else "abnormal"
                storm.errors[f"closed before its hello ({code})"] += 1
            except TimeoutError:
                storm.errors["no hello within 10 s"] += 1
                await connection.close()
            else:
                tab.hellos.append(time.monotonic())
                attempt = 0  # it stays up longer than the client's healthyAfterMs
                with contextlib.suppress(ConnectionClosed):  # the restart: not an error
                    while True:
                        try:
                            async with asyncio.timeout(HEARTBEAT_S):
                                await connection.recv()
                        except TimeoutError:
                            await connection.send('{"type":"ping"}')
        await asyncio.sleep(random.random() * min(CAP_S, BASE_S * 2**attempt))
        attempt += 1


async def tabs_main(args: argparse.Namespace) -> None:
    """The tabs' process: connect them all, say so, and on a line "<t>" on stdin (the
    SIGTERM's time) report when every tab had a hello after it, or --within passed."""
    tokens: dict[str, str] | None = args.token_map
    users = [int(u) for u in tokens] if tokens else list(range(1, args.tabs // args.per_user + 1))
    storm = Storm([StormTab(u, f"u{u}t{n}") for u in users for n in range(args.per_user)])
    storm.tabs = storm.tabs[: args.tabs]

    def address(tab: StormTab) -> tuple[str, dict[str, str]]:
        if tokens:
            headers = {"Authorization": f"Bearer {tokens[str(tab.user)]}"}
            return f"{args.target}?tab={tab.name}", headers
        return f"{args.target}?user={tab.user}&tab={tab.name}", {}

    started = time.monotonic()
    holders = [asyncio.create_task(hold(storm, tab, *address(tab))) for tab in storm.tabs]
    while not all(tab.hellos for tab in storm.tabs):  # noqa: ASYNC110 (polls the tabs)
        await asyncio.sleep(0.05)
    connect_rate = len(storm.tabs) / (time.monotonic() - started)
    storm.errors.clear()
    storm.refused = 0
    print(json.dumps({"connected": len(storm.tabs), "connect_tabs_per_s": round(connect_rate)}))
    sys.stdout.flush()
    line = await asyncio.to_thread(sys.stdin.readline)
    term = float(line)
    deadline = time.monotonic() + args.within

    def back(tab: StormTab) -> float | None:
        return next((t for t in tab.hellos if t > term), None)

    while time.monotonic() < deadline and not all(back(tab) for tab in storm.tabs):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    returned = sorted(t for tab in storm.tabs if (t := back(tab)) is not None)
    print(
        json.dumps(
            {
                "back": len(returned),
                "first_hello": returned[0] if returned else None,
                "last_hello": returned[-1] if returned else None,
                "median_hello": returned[len(returned) // 2] if returned else None,
                "refused": storm.refused,
                "errors": dict(storm.errors),
            }
        )
    )
    sys.stdout.flush()
    for holder in holders:
        holder.cancel()


def start_tabs(url: str, args: argparse.Namespace, tokens: Path | None) -> subprocess.Popen[str]:
    """Start the tabs' process (``python -m bench.storm tabs``) against ``url``."""
    command = [sys.executable, "-m", "bench.storm", "tabs", "--target", url]
    command += ["--tabs", str(args.tabs), "--per-user", str(args.per_user)]
    command += ["--within", str(args.within)]
    if tokens is not None:
        command += ["--tokens", str(tokens)]
    return subprocess.Popen(
        command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


async def restart(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """Measure one target's restart under its tabs."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        tokens: Path | None = None
        hub: HubProcess | None = None
        if kind == "hub":
            settings = Settings(
                database_url=f"sqlite+aiosqlite:///{tmp}/hub.db", log_level="warning"
            )
            population = await populate(settings, args.tabs // args.per_user)
            tokens = Path(tmp) / "tokens.json"
            tokens.write_text(json.dumps({str(u): t for u, t in population.tokens.items()}))
            hub = await HubProcess(settings, Path(tmp) / "hub.log", port=port).start()
            assert hub.process is not None
            process: subprocess.Popen[bytes] = hub.process
        else:
            process = spawn("bench.ceiling", port)
            await wait_port(port)
        tabs = start_tabs(f"ws://127.0.0.1:{port}/ws", args, tokens)
        assert tabs.stdin is not None and tabs.stdout is not None
        try:
            connected = json.loads(await asyncio.to_thread(tabs.stdout.readline))
            await settle(process.pid)
            term = time.monotonic()
            process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(process.wait, 60)
            down = time.monotonic()
            tabs.stdin.write(f"{term}\n")
            tabs.stdin.flush()
            spawned = time.monotonic()
            if hub is not None:
                await hub.start(within=60)
                assert hub.process is not None
                process = hub.process
            else:
                process = spawn("bench.ceiling", port)
            ready = time.monotonic()
            found = json.loads(await asyncio.to_thread(tabs.stdout.readline))
        finally:
            for running in (tabs, process):
                running.kill()
                running.wait()
            for pipe in (tabs.stdin, tabs.stdout):
                pipe.close()
    first, last = found.pop("first_hello"), found.pop("last_hello")
    median = found.pop("median_hello")
    return {
        "target": kind,
        "tabs": connected["connected"],
        "connect_tabs_per_s": connected["connect_tabs_per_s"],
        "shutdown_s": round(down - term, 2),
        "startup_to_ready_s": round(ready - spawned, 2) if hub is not None else None,
        "startup_to_first_hello_s": round(first - spawned, 2) if first else None,
        "all_back_after_sigterm_s": round(last - term, 2) if last else None,
        "all_back_after_spawn_s": round(last - spawned, 2) if last else None,
        "half_back_after_spawn_s": round(median - spawned, 2) if median else None,
        **found,
        "gave_up_or_late": connected["connected"] - found["back"],
    }


async def main(args: argparse.Namespace) -> None:
    kinds = ["ceiling", "hub"] if args.target == "both" else [args.target]
    for kind in kinds:
        print(json.dumps(await restart(kind, args)), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", nargs="?", choices=["restart", "tabs"], default="restart")
    parser.add_argument("--tabs", type=int, default=10_000)
    parser.add_argument("--per-user", type=int, default=4)
    parser.add_argument("--within", type=float, default=60.0)
    parser.add_argument("--target", default="both")
    parser.add_argument("--tokens")
    arguments = parser.parse_args()
    arguments.token_map = (
        json.loads(Path(arguments.tokens).read_text()) if arguments.tokens else None
    )
    asyncio.run(tabs_main(arguments) if arguments.role == "tabs" else main(arguments))
