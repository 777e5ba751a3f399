"""Catching up with what other processes committed: versions, platforms, lost notices.

A notification names a user's new version and active platform, and the hub publishes it from
the platforms its room knows (``advance``); a platform change names no platforms, so they are
read anew (``reload``); after notifications were lost, every user with tabs here is read
again (``resync``). Versions make all of it idempotent: a tab never goes backwards.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from server.errors import StoreUnavailable
from server.protocol import PLATFORMS_CAUSE, Cause, StateView
from server.rooms import Room

if TYPE_CHECKING:
    from server.store import Store

__all__ = ["CatchUp"]

logger = logging.getLogger("hub")

_RESYNC = Cause(kind="resync", tab=None, request="")


class CatchUp:
    """Bring the rooms of this process up to what the store holds."""

    retry_base_s = 0.1  # a reload's first wait after a failed read, doubling up to 16x

    def __init__(self, rooms: dict[int, Room], store: Store) -> None:
        self._rooms = rooms
        self.store = store
        self._resyncing: asyncio.Task[None] | None = None

    def advance(self, user_id: int, version: int, active: int | None, cause: Cause) -> None:
        """Publish a version another process committed, to this process's tabs of the user.

        Nothing happens without tabs of the user here, or for a version older than the one
        already published here (notifications arrive in commit order; a newer one follows).
        While the room's first state read is in flight, that read may have begun before this
        commit: the state is read anew after it (``reload``), so the tab cannot stay behind.
        """
        room = self._rooms.get(user_id)
        if room is not None and room.reloading is not None:
            # Its platforms are being read anew: the read covers this version, or reads again.
            room.reload_until = max(room.reload_until, version)
            return
        if room is None:
            return
        state = room.state
        if state is None:
            self.reload(user_id, version)
            return
        if version < state.version:
            return
        if version > state.version:
            state = StateView(version=version, active=active, platforms=state.platforms)
        room.publish(state, cause)

    def reload(self, user_id: int, version: int) -> None:
        """Read anew and publish the state of a user whose platforms another process changed
        (at ``version``); the notification names no platforms, so the cache cannot serve."""
        room = self._rooms.get(user_id)
        if room is None:
            return
        room.reload_until = max(room.reload_until, version)
        if room.reloading is None:
            room.reloading = asyncio.get_running_loop().create_task(
                self._reload(user_id, room), name=f"reload-{user_id}"
            )

    async def _reload(self, user_id: int, room: Room) -> None:
        try:
            for attempt in range(20):
                wanted = room.reload_until
                try:
                    state = await self.store.load_state(user_id)
                except StoreUnavailable as error:
                    logger.warning("reloading user %s: %s", user_id, error)
                    await asyncio.sleep(self.retry_base_s * 2 ** min(attempt, 4))
                    continue
                if self._rooms.get(user_id) is not room:
                    return
                if room.state is None or state.version >= room.state.version:
                    room.publish(state, PLATFORMS_CAUSE)
                if state.version >= max(wanted, room.reload_until):
                    return
            # Given up (about 27 s): the room's state may lack the change until the user's
            # next commit here, which no event forces; the next tab to join reads it.
            logger.warning("reloading user %s: given up; the next tab to join reads", user_id)
            room.stale = True
        finally:
            room.reloading = None

    def resync_soon(self) -> None:
        """Resync every user with tabs here in the background (once, if asked again meanwhile):
        a commit the hub gave up waiting for (server/db.py) landed after all."""
        if self._resyncing is not None and not self._resyncing.done():
            return

        async def resync() -> None:
            try:
                await self.resync()
            except StoreUnavailable as error:
                logger.warning("resync after a late commit failed: %s", error)

        self._resyncing = asyncio.get_running_loop().create_task(resync(), name="resync")

    async def resync(self) -> None:
        """Read the state of every user with tabs here and publish it, unless older than what
        was published here meanwhile (after notifications were lost; outboxes drop what a
        tab has already)."""
        users = list(self._rooms)
        # Asked all at once, so the store reads them in batches (server/storage/reads.py);
        # the holds too, whose changes may be lost as well.
        states, holds = await asyncio.gather(
            asyncio.gather(*(self.store.load_state(user_id) for user_id in users)),
            asyncio.gather(*(self.store.load_hold(user_id) for user_id in users)),
        )
        for user_id, state, hold in zip(users, states, holds, strict=True):
            room = self._rooms.get(user_id)
            if room is None:
                continue
            room.set_hold(hold)
            if room.state is not None and state.version < room.state.version:
                continue
            room.stale = False
            room.publish(state, _RESYNC)

    async def close(self) -> None:
        """Stop every reload and resync under way."""
        tasks = [room.reloading for room in self._rooms.values() if room.reloading is not None]
        if self._resyncing is not None:
            tasks.append(self._resyncing)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
