"""Reconnect storms: every tab of a process comes back at once after a restart.

    .venv/bin/python -m bench.storm [--tabs 10000] [--per-user 4] [--within 60]
                                    [--target hub|hub-pg|ceiling|both] [--client node|python]
                                    [--reconnect-rate TABS_PER_S]

A target holds --tabs tabs (--per-user of each user); then it gets SIGTERM and, once it has
exited, is started again on the same port. The tabs reconnect as the shipped client does
(client/navigation.js): after a loss, a delay drawn uniformly from [0, min(20 s, 0.5 s x
2^attempt)), or over the window a restart's 1012 names (HUB_RECONNECT_RATE) when that is
wider, the attempt counted up by every failed try; a tab never gives up. The tabs are a
separate process on the same machine's monotonic clock: bench/node/storm-tabs.mjs (Node's ws,
the default), or ``python -m bench.storm tabs`` (``--client python``). 10,000 tabs in one
Python process took a whole core of the 2 here and were the limit of every figure; in Node
they take a fraction of it, leaving the target the rest, as browsers on other machines would.

Reported for each target: the initial connect rate; the shutdown (SIGTERM to exit); the
start-up (spawn to the first hello, and to /healthz for the hub); seconds from SIGTERM and
from the spawn until every tab had a hello again; handshake errors by kind (connections
refused while nothing listened are counted apart: they are the restart, not an error); and
the tabs not back within --within seconds. The hub runs on SQLite with its real settings;
the ceiling is bench/ceiling.py (no authentication, no database).

``hub-pg`` is the hub on PostgreSQL (a fresh database) with a second hub process beside the
restarted one, holding the two tabs of a witness user. The witness switches --witness-rate
times a second, each switch after the last one's answer, and each is timed until both its
tabs have the new version; reported: p50, p99 and max of those times before the SIGTERM and
from it until every tab is back, with the switches not answered within 5 s.
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

from bench.targets import NODE, ROOT, node_packages, settle, spawn, wait_port
from server.protocol import CloseCode, restart_window_ms
from server.settings import Settings
from tests.support.population import populate
from tests.support.postgres import fresh_database
from tests.support.processes import HubProcess, free_port

BASE_S, CAP_S = 0.5, 20.0  # client/navigation.js's baseDelayMs and maxDelayMs
HEARTBEAT_S = 20.0  # under the hub's heartbeat (25 s): a tab pings, as the client does
BASELINE_S = 5.0  # the witness switches this long before the SIGTERM


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
    attempt, window = 0, 0.0
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
                if connection.close_code == CloseCode.SERVICE_RESTART:
                    # The window the restart asked for, as the client draws over it.
                    window = restart_window_ms(connection.close_reason or "") / 1000
        await asyncio.sleep(random.random() * min(CAP_S, max(window, BASE_S * 2**attempt)))
        attempt, window = attempt + 1, 0.0


@dataclass
class Witness:
    """A user whose two tabs stay connected to another process, switching through the storm."""

    sent: list[tuple[float, float]] = field(default_factory=list)  # (sent at, seconds to all)
    unanswered: list[float] = field(default_factory=list)  # sent at, not done within 5 s
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)

    def summary(self, start: float, end: float) -> dict[str, Any]:
        times = sorted(t for at, t in self.sent if start <= at < end)
        lost = sum(start <= at < end for at in self.unanswered)

        def ms(q: float) -> float | None:
            if not times:
                return None
            return round(1000 * times[min(len(times) - 1, int(q * len(times)))], 1)

        return {
            "switches": len(times),
            "p50_ms": ms(0.5),
            "p99_ms": ms(0.99),
            "max_ms": ms(1.0),
            "unanswered": lost,
        }


async def witness(url: str, token: str, rate: float, out: Witness) -> None:
    """Switch the witness user from one of its tabs until cancelled; time each switch until
    both tabs have its version."""
    headers = {"Authorization": f"Bearer {token}"}
    seen: list[dict[int, float]] = [{}, {}]
    answers: dict[str, asyncio.Future[dict[str, Any]]] = {}
    arrived = asyncio.Event()  # set whenever a tab sees a new version (no polling: the
    # witness shares the 2 cores with what it measures)
    async with contextlib.AsyncExitStack() as stack:
        tabs = [
            await stack.enter_async_context(
                connect(f"{url}?tab=witness{n}", additional_headers=headers, max_queue=None)
            )
            for n in range(2)
        ]
        hello = json.loads(await tabs[0].recv())
        platforms = [p["id"] for p in hello["state"]["platforms"]]
        state = {"version": hello["state"]["version"], "active": hello["state"]["active"]}

        async def read(n: int) -> None:
            async for frame in tabs[n]:
                message = json.loads(frame)
                if message["type"] in {"hello", "state"}:
                    seen[n].setdefault(message["state"]["version"], time.monotonic())
                    arrived.set()
                    if n == 0 and message["state"]["version"] > state["version"]:
                        state.update(message["state"])
                elif message["type"] == "switched":
                    seen[n].setdefault(message["version"], time.monotonic())
                    arrived.set()
                    if message["id"] in answers:
                        answers.pop(message["id"]).set_result(message)
                elif message.get("id") in answers:
                    answers.pop(message["id"]).set_result(message)

        readers = [asyncio.create_task(read(n)) for n in range(2)]
        stack.callback(lambda: [reader.cancel() for reader in readers])
        number = 0
        while True:
            number += 1
            request = f"w{number}-{random.getrandbits(32):08x}"
            target = next(p for p in platforms if p != state["active"])
            answers[request] = asyncio.get_running_loop().create_future()
            sent = time.monotonic()
            await tabs[0].send(
                json.dumps(
                    {"type": "switch", "id": request, "platform": target, "base": state["version"]}
                )
            )
            try:
                async with asyncio.timeout(5):
                    answer = await answers[request]
                    if answer["type"] == "rejected":
                        out.rejected[answer["reason"]] += 1
                        if answer.get("state"):
                            state.update(answer["state"])
                    else:
                        version = answer["version"]
                        if version > state["version"]:
                            state.update(version=version, active=target)
                        while not all(version in tab for tab in seen):
                            arrived.clear()
                            await arrived.wait()
                        out.sent.append((sent, max(tab[version] for tab in seen) - sent))
            except TimeoutError:
                answers.pop(request, None)
                out.unanswered.append(sent)
            await asyncio.sleep(max(0.0, sent + 1 / rate - time.monotonic()))


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
    """Start the tabs' process against ``url``: bench/node/storm-tabs.mjs, or with
    ``--client python`` this module's ``tabs`` role."""
    if args.client == "node":
        node_packages()
        command = ["node", str(NODE / "storm-tabs.mjs"), "--target", url]
    else:
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
    async with contextlib.AsyncExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        port = free_port()
        tokens: Path | None = None
        hub: HubProcess | None = None
        watch: tuple[str, str] | None = None  # the witness's URL and token
        if kind in {"hub", "hub-pg"}:
            url = f"sqlite+aiosqlite:///{tmp}/hub.db"
            if kind == "hub-pg":
                url = await stack.enter_async_context(fresh_database())
            settings = Settings(database_url=url, log_level="warning")
            if args.reconnect_rate is not None:
                settings = settings.replace(reconnect_rate=args.reconnect_rate)
            population = await populate(settings, args.tabs // args.per_user + (kind == "hub-pg"))
            found_tokens = {str(u): t for u, t in population.tokens.items()}
            if kind == "hub-pg":
                other = await HubProcess(settings, tmp / "other.log").start()
                stack.callback(other.stop)
                watch = (f"ws://127.0.0.1:{other.port}/ws", found_tokens.pop(max(found_tokens)))
            tokens = tmp / "tokens.json"
            tokens.write_text(json.dumps(found_tokens))
            hub = await HubProcess(settings, tmp / "hub.log", port=port).start()
            assert hub.process is not None
            process: subprocess.Popen[bytes] = hub.process
        else:
            process = spawn("bench.ceiling", port)
            await wait_port(port)
        tabs = start_tabs(f"ws://127.0.0.1:{port}/ws", args, tokens)
        assert tabs.stdin is not None and tabs.stdout is not None
        seen = Witness()
        try:
            connected = json.loads(await asyncio.to_thread(tabs.stdout.readline))
            await settle(process.pid)
            if watch is not None:
                watching = asyncio.create_task(witness(*watch, args.witness_rate, seen))
                stack.callback(watching.cancel)
                await asyncio.sleep(BASELINE_S)
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
    result = {
        "target": kind,
        "reconnect_rate": settings.reconnect_rate if hub is not None else None,
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
    if watch is not None:
        result["witness_before"] = seen.summary(term - BASELINE_S, term)
        result["witness_storm"] = seen.summary(term, last or time.monotonic())
        result["witness_rejected"] = dict(seen.rejected)
    return result


async def main(args: argparse.Namespace) -> None:
    kinds = ["ceiling", "hub"] if args.target == "both" else args.target.split(",")
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
    parser.add_argument("--witness-rate", type=float, default=20.0)
    parser.add_argument("--client", choices=["node", "python"], default="node")
    # The hub's HUB_RECONNECT_RATE (0: a bare 1012, the tabs' backoff alone).
    parser.add_argument("--reconnect-rate", type=float)
    arguments = parser.parse_args()
    arguments.token_map = (
        json.loads(Path(arguments.tokens).read_text()) if arguments.tokens else None
    )
    asyncio.run(tabs_main(arguments) if arguments.role == "tabs" else main(arguments))
