"""A one-reader mailbox and a plain flag: uvicorn's asyncio.Queue and asyncio.Event, lean.

uvicorn gives each WebSocket connection an ``asyncio.Queue`` and an ``asyncio.Event`` (four
deques, 3.7 KiB together) for its whole life; a tab is mostly idle, and a process may hold
10,000. ``BoundedWebSocketProtocol`` (server/web/websocket_protocol.py) uses these instead:
what uvicorn calls of each, for one reader, holding nothing while empty.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

__all__ = ["Flag", "Mailbox"]


class Mailbox:
    """What uvicorn's protocol uses of asyncio.Queue, for its one reader, without the deques."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: collections.deque[Any] | None = None  # None while empty: most of the time
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items) if self._items else 0


class Flag:
    """What uvicorn's protocol uses of asyncio.Event (``writable``), without a deque."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return True
