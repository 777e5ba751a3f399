"""The hub's durable side as the hub sees it: the reads a tab's join needs, and switches.

server/storage/switches.py's SqlStore is it on SQLite and PostgreSQL; tests/support/memory.py's
MemoryStore in memory (tests/storage/test_store.py holds all three to one contract).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from server.protocol import Device, HoldView, StateView, Switch
from server.rules import Decision

__all__ = ["Joining", "Store"]

# What a user's first tab on a process reads at once: its state, hold, and devices by
# session id.
Joining = tuple[StateView, HoldView | None, Sequence[tuple[int, Device]]]


class Store(Protocol):
    """The durable side of the hub: it decides switches and holds the state."""

    async def load_state(self, user_id: int) -> StateView: ...

    async def load_hold(self, user_id: int) -> HoldView | None: ...

    async def load_devices(self, user_id: int) -> Sequence[tuple[int, Device]]: ...

    async def load_joining(self, user_id: int) -> Joining:
        """State, hold and devices at once: what a user's first tab here needs."""
        ...

    async def switch(
        self, user_id: int, session_id: int, request: Switch, tab_id: str | None
    ) -> Decision: ...

    async def close(self) -> None: ...
