"""The load generator: a separate process with real WebSocket tabs; prints JSON results.

    python -m bench.load --target ws://127.0.0.1:8100/ws[,ws://...] --users 500 --tabs 5 \
        --mode rate --rate 1000 --duration 10 [--tokens tokens.json]

With --tokens (a JSON object user id -> session token) tabs authenticate as the hub expects;
without, they name their user in the URL (?user=N), as the ceiling and the peer expect.
--protocol socketio speaks Engine.IO 4 / Socket.IO 5 over WebSocket to bench/peer.py, with
the same messages carried as events.

Modes:
- rate: open loop, switches at a fixed rate from random tabs; reports the latency from
  sending each accepted switch to the moment every tab of its user has its state;
- saturate: closed loop, one switch in flight per user; reports accepted switches and
  deliveries per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import resource
import secrets
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.load import RawFlood

RUN_ID = secrets.token_hex(4)
HELLO_WITHIN_S = 60.0  # every tab's hello after its connection, or the run fails


@dataclass
class BenchTab:
    user: int
    name: str
    connection: ClientConnection | None = None
    version: int = 0
    active: int = 1
    platforms: tuple[int, ...] = (1, 2, 3)
    seen: dict[int, float] = field(default_factory=dict)  # version -> first receipt
    deliveries: int = 0
    pending: set[str] = field(default_factory=set)  # request ids sent, not yet answered
    close_code: int | None = None


@dataclass
class Run:
    tabs: list[BenchTab]
    by_user: dict[int, list[BenchTab]]
    sent: dict[str, tuple[int, int, float]] = field(default_factory=dict)  # -> user, base, t
    accepted: list[tuple[int, int, float]] = field(default_factory=list)  # user, version, t
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    answers: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    readers: list[asyncio.Task[None]] = field(default_factory=list)
    socketio: bool = False
    # Hellos naming another tab than the one that connected: a target that mixed up its
    # tabs (and so, likely, its users' rooms), whose figures would mean nothing.
    misnamed: int = 0


async def reader(run: Run, tab: BenchTab) -> None:
    assert tab.connection is not None
    try:
        await _read(run, tab)
    finally:
        # A closed tab answers nothing more: release whoever waits on its requests, which
        # stay in run.sent and are reported as unanswered, beside the close code.
        tab.close_code = tab.connection.close_code
        for request in tab.pending:
            _settle(run, request)


async def _read(run: Run, tab: BenchTab) -> None:
    assert tab.connection is not None
    async for frame in tab.connection:
        assert isinstance(frame, str)  # the hub and the peer send text frames only
        now = time.perf_counter()
        if run.socketio:
            if frame == "2":  # Engine.IO ping
                with contextlib.suppress(ConnectionClosed):
                    await tab.connection.send("3")
                continue
            if not frame.startswith("42"):  # the namespace's connect ack, and the like
                continue
            event, message = json.loads(frame[2:])
            message["type"] = event
        else:
            message = json.loads(frame)
        kind = message["type"]
        if kind in {"hello", "state"}:
            state = message["state"]
            tab.deliveries += kind == "state"
            if kind == "hello":
                tab.platforms = tuple(p["id"] for p in state["platforms"])
                run.misnamed += message.get("tab", tab.name) != tab.name
            if state["version"] >= tab.version:
                tab.version, tab.active = state["version"], state["active"]
            tab.seen.setdefault(state["version"], now)
        elif kind == "switched":
            tab.pending.discard(message["id"])
            user, base, sent_at = run.sent.pop(message["id"])
            if message["version"] > base:  # not a no-op
                run.accepted.append((user, message["version"], sent_at))
            _settle(run, message["id"])
        elif kind == "rejected":
            tab.pending.discard(message["id"])
            run.sent.pop(message["id"], None)
            run.rejected += 1
            run.reasons[message["reason"]] = run.reasons.get(message["reason"], 0) + 1
            if message.get("state"):
                state = message["state"]
                if state["version"] > tab.version:
                    tab.version, tab.active = state["version"], state["active"]
            _settle(run, message["id"])


def _settle(run: Run, request: str) -> None:
    future = run.answers.pop(request, None)
    if future is not None and not future.done():
        future.set_result(None)


async def open_tabs(
    target: str,
    users: list[int],
    tabs: int,
    tokens: dict[str, str] | None,
    *,
    socketio: bool = False,
) -> tuple[Run, float]:
    every = [BenchTab(user, f"u{user}t{n}") for user in users for n in range(tabs)]
    by_user: dict[int, list[BenchTab]] = {}
    for tab in every:
        by_user.setdefault(tab.user, []).append(tab)
    run = Run(every, by_user, socketio=socketio)
    # Several targets (comma-separated: hub processes sharing one database): the tabs of each
    # user are spread over them, so every switch is also delivered across processes.
    targets = target.split(",")
    gate = asyncio.Semaphore(100)

    async def one(tab: BenchTab) -> None:
        index = int(tab.name.rsplit("t", 1)[1])
        base = targets[index % len(targets)]
        joiner = "&" if "?" in base else "?"
        if tokens:
            url, headers = (
                f"{base}?tab={tab.name}",
                {"Authorization": f"Bearer {tokens[str(tab.user)]}"},
            )
        else:
            url, headers = f"{base}{joiner}user={tab.user}&tab={tab.name}", {}
        async with gate:
            tab.connection = await connect(
                url,
                additional_headers=headers,
                compression=None,
                ping_interval=None,
                open_timeout=60,
                max_queue=None,
            )
            if socketio:
                await tab.connection.recv()  # Engine.IO open packet
                await tab.connection.send("40")  # connect to the default namespace
        run.readers.append(asyncio.create_task(reader(run, tab)))

    started = time.perf_counter()
    await asyncio.gather(*(one(tab) for tab in every))
    # Until every hello is in. A tab closed before its hello (the target refused it, 1013
    # when its database did not answer in time) fails the run with its close code: waiting
    # on would hang the generator while the other tabs idle out.
    deadline = time.perf_counter() + HELLO_WITHIN_S
    while not all(tab.seen for tab in every):
        lost = [tab.close_code for tab in every if not tab.seen and tab.close_code is not None]
        if lost or time.perf_counter() > deadline:
            missing = sum(not tab.seen for tab in every)
            raise RuntimeError(
                f"{missing} of {len(every)} tabs have no hello; closed before it with codes "
                f"{sorted(set(map(str, lost)))}"
            )
        await asyncio.sleep(0.01)
    return run, len(every) / (time.perf_counter() - started)


async def send_switch(run: Run, tab: BenchTab, rng: random.Random) -> asyncio.Future[None]:
    # Unique across runs: the hub remembers request ids (idempotent retries), so an id from
    # an earlier phase would be answered with its old decision instead of being decided.
    request = f"{tab.name}-{RUN_ID}-{rng.getrandbits(40):010x}"
    platform = rng.choice([p for p in tab.platforms if p != tab.active])
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    run.answers[request] = future
    run.sent[request] = (tab.user, tab.version, time.perf_counter())
    tab.pending.add(request)
    assert tab.connection is not None
    message = {"id": request, "platform": platform, "base": tab.version}
    try:
        if run.socketio:
            await tab.connection.send("42" + json.dumps(["switch", message]))
        else:
            await tab.connection.send(json.dumps({"type": "switch", **message}))
    except ConnectionClosed:
        _settle(run, request)  # never answered: it counts as unanswered
    return future


def latencies(run: Run, since: float = 0.0) -> list[float]:
    """Per accepted switch sent after ``since``: until every tab of its user had its version."""
    out = []
    for user, version, sent_at in run.accepted:
        if sent_at < since:
            continue
        times = []
        for tab in run.by_user[user]:
            got = [t for v, t in tab.seen.items() if v >= version and t >= sent_at]
            if not got:
                break
            times.append(min(got))
        else:
            out.append(max(times) - sent_at)
    return out


async def idle(
    args: argparse.Namespace, users: list[int], tokens: dict[str, str] | None
) -> dict[str, Any]:
    """Connect every tab, say so on stdout, and hold them until stdin closes."""
    run, connect_rate = await open_tabs(
        args.target, users, args.tabs, tokens, socketio=args.protocol == "socketio"
    )
    print(json.dumps({"connected": len(run.tabs), "connect_tabs_per_s": round(connect_rate)}))
    sys.stdout.flush()
    await asyncio.to_thread(sys.stdin.read)
    for tab in run.tabs:
        if tab.connection is not None:
            await tab.connection.close()
    return {"mode": "idle", "tabs": len(run.tabs), "connect_tabs_per_s": round(connect_rate)}


async def flood(args: argparse.Namespace, tokens: dict[str, str] | None) -> dict[str, Any]:
    """One tab of the last user floods switches as fast as TCP takes them; reconnects at once.

    The hostile tab of the benchmark: run as its own process beside a rate phase, it shows
    what one abusive tab costs everyone else. It never backs off, and it is cheap (frames are
    built once and written in blocks, tests/support/load.py's RawFlood), so on a shared 2-core
    machine the flooder's own CPU does not stand in for the target's cost: a websockets client
    framing each message took a whole core.
    """
    user = list(tokens)[-1] if tokens else str(args.users + 1)
    if tokens:
        url, headers = f"{args.target}?tab=flood", {"Authorization": f"Bearer {tokens[user]}"}
    else:
        joiner = "&" if "?" in args.target else "?"
        url, headers = f"{args.target}{joiner}user={user}&tab=flood", {}
    counts = {"written_bytes": 0, "received_bytes": 0, "connections": 0, "refused": 0}
    deadline = time.perf_counter() + args.duration
    # Until stdin closes, or --duration at the latest.
    stop = asyncio.create_task(asyncio.to_thread(sys.stdin.read))
    stop.add_done_callback(lambda _: counts.__setitem__("stopped", 1))

    def over() -> bool:
        return stop.done() or time.perf_counter() >= deadline

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    while not over():
        raw = RawFlood(url, headers)
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            if await raw.run(over):
                counts["connections"] += 1
            else:
                counts["refused"] += 1
                await asyncio.sleep(0.001)
        counts["written_bytes"] += raw.written
        counts["received_bytes"] += len(raw.received)
    stop.cancel()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    # The flooder shares the 2 cores with the target and the measured tabs: what it burns
    # (mostly the kernel's side of writing into TCP) is CPU the target did not get.
    cpu = {
        "cpu_user_s": round(cpu1.ru_utime - cpu0.ru_utime, 2),
        "cpu_system_s": round(cpu1.ru_stime - cpu0.ru_stime, 2),
    }
    return {"mode": "flood", **counts, **cpu}


def _close_codes(tabs: list[BenchTab]) -> dict[str, int]:
    """How many tabs the target closed during the phase, by close code."""
    codes: dict[str, int] = {}
    for tab in tabs:
        if tab.close_code is not None:
            codes[str(tab.close_code)] = codes.get(str(tab.close_code), 0) + 1
    return codes


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    values = sorted(values)
    return {
        "p50_ms": round(statistics.median(values) * 1000, 2),
        "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))] * 1000, 2),
        "max_ms": round(values[-1] * 1000, 2),
    }


def mark(name: str) -> None:
    """Tell the bench (a line on stdout) where the measured phase starts and ends, so it reads
    the target's CPU over the phase alone, not over the connects before it."""
    print(json.dumps({"mark": name}), flush=True)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tokens: dict[str, str] | None = args.token_map
    users = [int(u) for u in tokens] if tokens else list(range(1, args.users + 1))
    users = users[: args.users]
    rng = random.Random(7)
    if args.mode == "idle":
        return await idle(args, users, tokens)
    if args.mode == "flood":
        return await flood(args, tokens)
    run, connect_rate = await open_tabs(
        args.target, users, args.tabs, tokens, socketio=args.protocol == "socketio"
    )
    # What exists now lives for the whole run: keep it out of the collector's way, so
    # the generator's own pauses do not pass for the target's latency.
    gc.freeze()
    mark("start")  # the phase's window starts: the bench reads the target's CPU now
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    if args.mode == "rate":
        interval = 1.0 / args.rate
        count = int(args.rate * args.duration)
        for n in range(count):
            due = started + n * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tab = rng.choice(run.tabs)
            await send_switch(run, tab, rng)
    else:
        deadline = started + args.duration

        async def driver(user: int) -> None:
            while time.perf_counter() < deadline:
                live = [tab for tab in run.by_user[user] if tab.close_code is None]
                if not live:
                    return
                await asyncio.wait_for(await send_switch(run, rng.choice(live), rng), 30)

        await asyncio.gather(*(driver(u) for u in users))
    elapsed = time.perf_counter() - started
    await asyncio.sleep(1.0)  # let the last states arrive
    mark("end")  # and ends, with the deliveries counted
    deliveries = sum(tab.deliveries for tab in run.tabs)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "mode": args.mode,
        "tabs": len(run.tabs),
        "connect_tabs_per_s": round(connect_rate),
        "elapsed_s": round(elapsed, 2),
        "accepted": len(run.accepted),
        "rejected": run.rejected,
        "reasons": dict(run.reasons),
        "unanswered": len(run.sent),
        "closed": _close_codes(run.tabs),
        "misnamed_hellos": run.misnamed,
        "accepted_per_s": round(len(run.accepted) / elapsed),
        "deliveries_per_s": round(deliveries / elapsed),
        "load_cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 2),
        # The first second warms the target up (caches, buffers, its allocator).
        **summary(latencies(run, since=started + args.warmup)),
    }
    for tab in run.tabs:
        if tab.connection is not None:
            await tab.connection.close()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--tabs", type=int, default=5)
    parser.add_argument("--mode", choices=["rate", "saturate", "idle", "flood"], default="rate")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--tokens")
    parser.add_argument("--protocol", choices=["hub", "socketio"], default="hub")
    arguments = parser.parse_args()
    arguments.token_map = (
        json.loads(Path(arguments.tokens).read_text()) if arguments.tokens else None
    )
    print(json.dumps(asyncio.run(main(arguments))))
