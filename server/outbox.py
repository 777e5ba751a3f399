"""A tab's outbox: bounded, with states coalesced and never going backwards.

A newer state replaces an older unsent one, and a newer presence an older unsent presence,
so a slow tab costs one frame of each, not a backlog.
The outbox does no waiting itself: it calls ``on_ready`` when something is queued, and the
tab starts a writer then (server/hub.py), so an idle tab holds no task and no future.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

__all__ = ["PRESENCE", "Close", "Outbox"]

# The kind of a presence frame in an outbox (states are keyed by their version, >= 0).
PRESENCE = -1


@dataclasses.dataclass(frozen=True, slots=True)
class Close:
    """The last item of an outbox: close the connection with this code and reason."""

    code: int
    reason: str


class Outbox:
    """Hold a tab's unsent frames: bounded, with states coalesced and never going backwards."""

    __slots__ = ("_close", "_frames", "_on_ready", "_size", "coalesced", "version")

    def __init__(self, size: int, on_ready: Callable[[], None] = lambda: None) -> None:
        # A list, not a deque: it is almost always empty, and an empty deque keeps a 0.5 KiB
        # block per tab where an empty list keeps none.
        # Each frame with its kind: a state's version, PRESENCE, or None for any other.
        self._frames: list[tuple[int | None, str]] = []
        self._size = size
        self._on_ready = on_ready
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
        self._on_ready()
        return True

    def put_state(self, version: int, frame: str, *, first: bool = False) -> None:
        """Queue a state frame, replacing any older unsent state.

        ``first`` is for the hello: it goes in front, and the queued states and presence it
        covers are dropped.
        A newer state never replaces the hello (it is the tab's first frame, whatever follows).
        """
        if self._close is not None:
            return
        if first:
            covered = self._frames
            self._frames = [(None, frame)]
            # A queued presence is older than the hello's devices too: dropped.
            self._frames += [f for f in covered if f[0] is None or f[0] > version]
            self.version = max(self.version, version)
        else:
            if version <= self.version:
                return
            if self._frames:  # usually empty: the writer keeps up
                kept = [f for f in self._frames if f[0] is None or f[0] < 0]
                self.coalesced += len(self._frames) - len(kept)
                self._frames = kept
            self._frames.append((version, frame))
            self.version = version
        self._on_ready()

    def put_presence(self, frame: str) -> bool:
        """Queue a presence frame, replacing any unsent one; return False if it was full."""
        if self._close is not None:
            return True
        kept = [f for f in self._frames if f[0] != PRESENCE]
        if len(kept) >= self._size:
            return False
        self._frames = kept
        self._frames.append((PRESENCE, frame))
        self._on_ready()
        return True

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
        self._on_ready()

    def peek(self) -> str | None:
        """Return the next frame without taking it, or None if no frame is queued."""
        return self._frames[0][1] if self._frames else None

    def take(self) -> str | Close | None:
        """Return the next frame, else the close once every frame is out, else None."""
        if self._frames:
            return self._frames.pop(0)[1]
        return self._close

    def __len__(self) -> int:
        return len(self._frames)
