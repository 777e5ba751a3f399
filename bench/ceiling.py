"""The ceiling: a bare `websockets` server doing the hub's fan-out with an in-memory counter.

Same wire protocol as the hub for what the benchmark uses (hello, switch, switched, rejected,
state), no database, no Starlette, no sessions. A tab connects to /ws?user=N&tab=T.

    python -m bench.ceiling --port 8100
"""

from __future__ import annotations

import argparse
import asyncio
import json
from urllib.parse import parse_qs, urlparse

from websockets.asyncio.server import ServerConnection, broadcast, serve

PLATFORMS = [
    {
        "id": i,
        "name": f"P{i}",
        "kind": "mastodon",
        "instance_url": "https://x.example",
        "username": "u",
        "is_default": i == 1,
    }
    for i in (1, 2, 3)
]


class Room:
    __slots__ = ("active", "tabs", "version")

    def __init__(self) -> None:
        self.version = 0
        self.active = 1
        self.tabs: set[ServerConnection] = set()

    def state(self) -> dict[str, object]:
        return {"version": self.version, "active": self.active, "platforms": PLATFORMS}


rooms: dict[int, Room] = {}


async def handler(connection: ServerConnection) -> None:
    assert connection.request is not None  # the handshake is done before the handler runs
    query = parse_qs(urlparse(connection.request.path).query)
    user = int(query["user"][0])
    tab = query.get("tab", ["t"])[0]
    room = rooms.setdefault(user, Room())
    room.tabs.add(connection)
    try:
        await connection.send(json.dumps({"type": "hello", "tab": tab, "state": room.state()}))
        async for frame in connection:
            message = json.loads(frame)
            if message.get("type") == "ping":
                await connection.send('{"type":"pong"}')
                continue
            if message["base"] != room.version:
                reply = {
                    "type": "rejected",
                    "id": message["id"],
                    "reason": "stale",
                    "message": "stale",
                    "state": room.state(),
                }
                await connection.send(json.dumps(reply))
                continue
            room.version += 1
            room.active = message["platform"]
            await connection.send(
                json.dumps({"type": "switched", "id": message["id"], "version": room.version})
            )
            frame_out = json.dumps(
                {
                    "type": "state",
                    "state": room.state(),
                    "cause": {"kind": "switch", "tab": tab, "request": message["id"]},
                }
            )
            broadcast(room.tabs, frame_out)  # encoded once, never awaits a slow tab
    finally:
        room.tabs.discard(connection)


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None, max_queue=64):
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8100)
    asyncio.run(main(parser.parse_args().port))
