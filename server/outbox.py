"""A tab's outbox: bounded, with states coalesced and never going backwards.

A newer state replaces an older unsent one, so a slow tab costs one frame, not a backlog.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses

__all__ = ["Close", "Outbox"]


@dataclasses.dataclass(frozen=True, slots=True)
class Close:
    """The last item of an outbox: close the connection with this code and reason."""

    code: int
    reason: str


class Outbox:
    """Hold a tab's unsent frames: bounded, with states coalesced and never going backwards."""

    def __init__(self, size: int) -> None:
        self._frames: collections.deque[tuple[int | None, str]] = collections.deque()
        self._size = size
        self._ready = asyncio.Event()
        self._close: Close | None = None
        # Highest state version queued or sent; states at or below it are dropped.
        self.version = -1
        self.coalesced = 0

    def put(self, frame: str) -> bool:
        """Queue a frame; return False if the outbox is full or closing."""
        if self._close is not None:
            return True
        if len(self._frames) >= self._size:
            return False
        self._frames.append((None, frame))
        self._ready.set()
        return True

    def put_state(self, version: int, frame: str, *, first: bool = False) -> None:
        """Queue a state frame, replacing any older unsent state.

        ``first`` is for the hello: it goes in front, and queued states it covers are dropped.
        A newer state never replaces the hello (it is the tab's first frame, whatever follows).
        """
        if self._close is not None:
            return
        if first:
            self._frames = collections.deque(
                f for f in self._frames if f[0] is None or f[0] > version
            )
            self._frames.appendleft((None, frame))
            self.version = max(self.version, version)
        else:
            if version <= self.version:
                return
            before = len(self._frames)
            self._frames = collections.deque(f for f in self._frames if f[0] is None)
            self.coalesced += before - len(self._frames)
            self._frames.append((version, frame))
            self.version = version
        self._ready.set()

    @property
    def closing(self) -> bool:
        """Tell whether a close is queued."""
        return self._close is not None

    def close(self, code: int, reason: str, last: str | None = None, *, drop: bool = True) -> None:
        """Queue ``last`` if given, then the close; ``drop`` discards what is unsent first."""
        if self._close is not None:
            return
        if drop:
            self._frames.clear()
        if last is not None:
            self._frames.append((None, last))
        self._close = Close(code, reason)
        self._ready.set()

    async def get(self) -> str | Close:
        """Wait for the next frame, or the close once every frame is out."""
        while not self._frames:
            if self._close is not None:
                return self._close
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()[1]

    def __len__(self) -> int:
        return len(self._frames)
