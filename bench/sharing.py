"""What a shared connection saves: each user's tabs on a socket each, against one socket per
user carrying the others (``attach``, navigation.js's ``shareConnection``; issue 17).

    .venv/bin/python -m bench.sharing [--users 200] [--tabs 5] [--switches 20] [--rounds 2]

Each round runs both modes, own sockets then shared, each against a fresh hub on SQLite with
its real settings (bench.targets.hub), and reports for each: the connections the hub holds
(``hub_connections``) and the tabs it counts (``hub_tabs``); the hub's memory per user (its
RSS once every tab is connected and the hub idle, less before); and the hub's CPU per 1,000
deliveries while one tab of each user switches ``--switches`` times, 5 a second (a delivery:
one tab told of a new state; every tab of the user is told of each switch, in both modes,
whether down a socket of its own or down the shared one, relayed by its leader). Reported
too: the frames the hub sent for those deliveries. The figures of each round and the medians
over the rounds are printed as JSON lines; the client tabs (Python websockets, in this
process) are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bench.targets import cpu_seconds, hub, rss_kib, settle

PACE_S = 0.2  # between a user's switches: 5 a second, under the hub's rate limit (20)


@dataclass
class User:
    """One user's sockets: every tab's own, or one carrying the rest."""

    id: int
    sockets: list[ClientConnection] = field(default_factory=list)
    states: int = 0  # state frames received, on all its sockets
    version: int = 0
    platforms: list[int] = field(default_factory=list)


async def _open(user: User, url: str, token: str, tab: str) -> ClientConnection:
    connection = await connect(
        f"{url}?tab={tab}",
        additional_headers={"Authorization": f"Bearer {token}"},
        compression=None,
        max_queue=None,
        ping_interval=None,
    )
    hello = json.loads(await connection.recv())
    assert hello["type"] == "hello", hello
    user.version = hello["state"]["version"]
    user.platforms = [platform["id"] for platform in hello["state"]["platforms"]]
    return connection


async def _connect(user: User, url: str, token: str, tabs: int, shared: bool) -> None:
    if not shared:
        for n in range(tabs):
            user.sockets.append(await _open(user, url, token, f"u{user.id}t{n}"))
        return
    leader = await _open(user, url, token, f"u{user.id}t0")
    user.sockets.append(leader)
    for n in range(1, tabs):
        await leader.send(json.dumps({"type": "attach", "tab": f"u{user.id}t{n}"}))
        while json.loads(await leader.recv())["type"] != "hello":
            pass


async def _read(user: User, socket: ClientConnection, answers: asyncio.Queue[Any]) -> None:
    async for frame in socket:
        message = json.loads(frame)
        if message["type"] == "state":
            user.states += 1
            user.version = max(user.version, message["state"]["version"])
        elif message["type"] in {"switched", "rejected"} and "tab" not in message:
            await answers.put(message)


async def _switch(user: User, switches: int, answers: asyncio.Queue[Any]) -> None:
    for n in range(switches):
        base = user.version
        platform = user.platforms[(n + 1) % len(user.platforms)]
        request = {"type": "switch", "id": f"s{n}", "platform": platform, "base": base}
        await user.sockets[0].send(json.dumps(request))
        answer = await answers.get()
        if answer["type"] == "switched":
            user.version = max(user.version, answer["version"])
        await asyncio.sleep(PACE_S)


async def _metric(base: str, name: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{base}/metrics")).text
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " "))


async def measure(users: int, tabs: int, switches: int, shared: bool) -> dict[str, Any]:
    """One mode against a fresh hub."""
    async with hub(users) as target:
        tokens = json.loads(await asyncio.to_thread(Path(str(target.tokens)).read_text))
        base = target.url.replace("ws://", "http://").removesuffix("/ws")
        await settle(target.pid)
        before = rss_kib(target.pid)
        people = [User(int(u)) for u in tokens]
        for chunk in range(0, len(people), 50):
            batch = people[chunk : chunk + 50]
            url = target.url
            await asyncio.gather(
                *(_connect(u, url, tokens[str(u.id)], tabs, shared) for u in batch)
            )
        await settle(target.pid)
        after = rss_kib(target.pid)
        connections = await _metric(base, "hub_connections")
        counted = await _metric(base, "hub_tabs")
        queues = {user.id: asyncio.Queue[Any]() for user in people}
        readers = [
            asyncio.create_task(_read(user, socket, queues[user.id]))
            for user in people
            for socket in user.sockets
        ]
        cpu = cpu_seconds(target.pid)
        started = time.monotonic()
        await asyncio.gather(*(_switch(user, switches, queues[user.id]) for user in people))
        await asyncio.sleep(0.5)  # the last broadcasts
        cpu = cpu_seconds(target.pid) - cpu
        elapsed = time.monotonic() - started
        frames = sum(user.states for user in people)
        versions = sum(user.version for user in people)  # each started at 0
        for reader in readers:
            reader.cancel()
        for user in people:
            for socket in user.sockets:
                await socket.close()
    deliveries = versions * tabs  # every tab of the user told of each new version
    return {
        "mode": "shared" if shared else "own",
        "users": users,
        "tabs_per_user": tabs,
        "hub_connections": int(connections),
        "hub_tabs": int(counted),
        "rss_kib_per_user": round((after - before) / users, 1),
        "versions": versions,
        "deliveries": deliveries,
        "state_frames_sent": frames,
        "cpu_ms_per_1000_deliveries": round(1000 * cpu / deliveries * 1000, 1),
        "seconds": round(elapsed, 1),
    }


async def main(args: argparse.Namespace) -> None:
    results: dict[str, list[dict[str, Any]]] = {"own": [], "shared": []}
    for _ in range(args.rounds):
        for shared in (False, True):
            result = await measure(args.users, args.tabs, args.switches, shared)
            results[result["mode"]].append(result)
            print(json.dumps(result), flush=True)
    medians = {
        mode: {
            key: statistics.median(r[key] for r in runs)
            for key in ("hub_connections", "rss_kib_per_user", "cpu_ms_per_1000_deliveries")
        }
        for mode, runs in results.items()
    }
    own, one = medians["own"], medians["shared"]
    print(
        json.dumps(
            {
                "medians": medians,
                "connections_ratio": round(one["hub_connections"] / own["hub_connections"], 2),
                "memory_ratio": round(one["rss_kib_per_user"] / own["rss_kib_per_user"], 2),
                "cpu_ratio": round(
                    one["cpu_ms_per_1000_deliveries"] / own["cpu_ms_per_1000_deliveries"], 2
                ),
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--tabs", type=int, default=5)
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    asyncio.run(main(parser.parse_args()))
