"""Group reads: concurrent reads by key share one read transaction, as switches share commits.

A reconnect storm brings every tab of a process back at once, and each does the same reads: its
session by token, its user's state, its user's hold. One at a time, each costs a read
transaction (on SQLite a hop to a thread, BEGIN and COMMIT; on PostgreSQL a pooled connection
and round trips) for one row. Here callers queue by key; one reader task takes every key that
queued while the previous read ran (at most ``max_batch``), reads them all with one statement
per table in one transaction, and hands each caller its row. Under light load a read holds one
key and costs what it did; in a storm the cost of a transaction is shared by the batch.

Nothing waits on a timer to grow a batch (server/storage/commits.py's rule): a batch forms from
what arrived while the last read ran, so a read is at most one read behind. A read that fails
fails every caller of its batch with the same error; a caller that goes away (its tab
disconnected) leaves the others their answer.

The same batching serves one write: sliding the idle expiry of the sessions that handshakes
found last seen long ago (server/storage/expiry.py's ``extend``). Without it, a storm of
tabs whose sessions were idle past ``session_touch_s`` wrote once per tab, and the connect
rate fell to a third.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupRead"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class GroupRead(Generic[K, V]):
    """Read values by key in batches with ``fetch``, one transaction per batch.

    ``fetch`` receives distinct keys in arrival order and returns the values it found; a key
    it does not return reads as None.
    """

    def __init__(
        self, fetch: Callable[[Sequence[K]], Awaitable[Mapping[K, V]]], *, max_batch: int = 500
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._fetch = fetch
        self.max_batch = max_batch
        self._waiting: dict[K, list[asyncio.Future[V | None]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.reads = 0  # transactions, for tests and metrics
        self.keys = 0  # keys read

    async def get(self, key: K) -> V | None:
        """Return the value of ``key``, read with whatever else is asked meanwhile."""
        future: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        # A reader cancelled before its first step never ran its finally: start another.
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read_all())
        return await future

    async def _read_all(self) -> None:
        try:
            while self._waiting:
                keys = list(self._waiting)[: self.max_batch]
                batch = {key: self._waiting.pop(key) for key in keys}
                # Keys whose callers have all gone (the handshake of a peer that reset its
                # connection is cancelled) are not read.
                keys = [key for key in keys if not all(f.done() for f in batch[key])]
                if not keys:
                    continue
                try:
                    found = await self._fetch(keys)
                except Exception as error:
                    for futures in batch.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(error)
                    continue
                except BaseException:  # cancelled (shutdown): nobody is left waiting
                    for futures in [*batch.values(), *self._waiting.values()]:
                        for future in futures:
                            future.cancel()
                    self._waiting.clear()
                    raise
                self.reads += 1
                self.keys += len(keys)
                for key, futures in batch.items():
                    value = found.get(key)
                    for future in futures:
                        if not future.done():
                            future.set_result(value)
        finally:
            self._reader = None
