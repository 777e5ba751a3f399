"""The peer a user would pick instead: python-socketio, one room per user, under uvicorn.

Same workload and same answers as the ceiling (bench/ceiling.py): an in-memory version
counter per user, no database. Tabs connect over plain WebSocket (Engine.IO 4, no polling)
with ?user=N&tab=T in the URL; events are the hub's message types: the server emits
"hello" on connect, answers "switch" with "switched" or "rejected", and emits "state" to
the user's room.

    python -m bench.peer --port 8200
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import parse_qs

import socketio
import uvicorn

from bench.ceiling import PLATFORMS


class Room:
    __slots__ = ("active", "version")

    def __init__(self) -> None:
        self.version = 0
        self.active = 1

    def state(self) -> dict[str, object]:
        return {"version": self.version, "active": self.active, "platforms": PLATFORMS}


rooms: dict[int, Room] = {}
server = socketio.AsyncServer(async_mode="asgi", transports=["websocket"])
app = socketio.ASGIApp(server)


@server.event
async def connect(sid: str, environ: dict[str, Any]) -> None:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    user = int(query["user"][0])
    tab = query.get("tab", ["t"])[0]
    await server.save_session(sid, {"user": user, "tab": tab})
    await server.enter_room(sid, f"user-{user}")
    room = rooms.setdefault(user, Room())
    await server.emit("hello", {"tab": tab, "state": room.state()}, to=sid)


@server.event
async def switch(sid: str, message: dict[str, Any]) -> None:
    session = await server.get_session(sid)
    user = session["user"]
    room = rooms[user]
    if message["base"] != room.version:
        reply = {"id": message["id"], "reason": "stale", "message": "stale", "state": room.state()}
        await server.emit("rejected", reply, to=sid)
        return
    room.version += 1
    room.active = message["platform"]
    await server.emit("switched", {"id": message["id"], "version": room.version}, to=sid)
    cause = {"kind": "switch", "tab": session["tab"], "request": message["id"]}
    await server.emit("state", {"state": room.state(), "cause": cause}, room=f"user-{user}")


@server.event
async def ping(sid: str, _message: Any = None) -> None:
    await server.emit("pong", {}, to=sid)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8200)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=parser.parse_args().port,
        log_level="warning",
        ws_per_message_deflate=False,
    )
