"""Presence: a person's devices (live login sessions) and their open tabs, told to each tab.

Each room (server/rooms.py) keeps its user's devices, with the tabs other processes hold of
each: read when the user's first tab joins this process (a group read, so a reconnect storm
shares it), and again when a tab of a session it does not know joins or the devices change
(a session opened, another process's tabs came or went: ``changed``). A tab counts on its
device here from its join to its leave. A change marks the user; within ``delay_s`` every
marked user's tabs get one ``presence`` message, encoded once per session (``current``
differs), and a tab's outbox keeps only the newest unsent one (server/outbox.py): a
reconnect storm is not a message storm. With several processes, ``report`` carries this
process's counts to the others (server/storage/presence.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from server.errors import StoreUnavailable
from server.protocol import Device, PresenceMessage, encode
from server.rooms import Room
from server.tab import Tab, TabState

__all__ = ["DeviceStore", "Presence"]

logger = logging.getLogger("hub.presence")


class DeviceStore(Protocol):
    """Where a user's live sessions are read from (server/storage/devices.py)."""

    async def load_devices(self, user_id: int) -> Sequence[tuple[int, Device]]:
        """The user's live sessions: each one's id, and its device as a page sees it."""
        ...


class Presence:
    """Keep each room's devices and tell its tabs when a device or tab comes or goes."""

    def __init__(self, rooms: dict[int, Room], store: DeviceStore, delay_s: float = 0.1) -> None:
        self._rooms = rooms
        self._store = store
        self.delay_s = delay_s
        # The user of each session in a room's devices here, to find the room when the
        # session ends (it may have no tab here).
        self._owners: dict[int, int] = {}
        self._due: set[int] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._reloads: dict[int, asyncio.Task[None]] = {}
        # Sessions ended lately: a read that began before the end must not bring one back.
        self._ended: dict[int, None] = {}
        # Users whose reload failed (the database was unavailable): read again soon.
        self._failed: set[int] = set()
        self._retry: asyncio.TimerHandle | None = None
        self.retry_s = 2.0
        # With several processes: told (user, session, tabs here) when a count changes.
        self.report: Callable[[int, int, int], None] | None = None
        self._reported: dict[int, dict[int, int]] = {}  # user: session: tabs here, as told

    def knows(self, room: Room, session_id: int) -> bool:
        """Tell whether the room's devices are read and hold this session."""
        return room.devices is not None and session_id in room.devices

    def install(
        self, user_id: int, room: Room, devices: Sequence[tuple[int, Device]], asked: int
    ) -> None:
        """Take devices read for a joining tab (with its state, by the hub), the room's count
        of changes ``asked`` before the read; changed since, they are read again."""
        if self._install(user_id, room, devices, asked) and user_id not in self._reloads:
            self._start_reload(user_id, room)

    def join(self, room: Room, user_id: int, tab: Tab) -> tuple[Device, ...]:
        """Count a joining tab (its devices installed); return its hello's list."""
        assert room.devices is not None
        self.mark(user_id)
        devices = self._view(room, _counts(room), tab.session_id)
        tab.devices = devices
        return devices

    def mark(self, user_id: int) -> None:
        """Tell the user's tabs their devices within ``delay_s`` (a tab came or went)."""
        self._due.add(user_id)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay_s, self._flush)

    def ended(self, session_id: int) -> None:
        """Drop an ended session from its person's devices here."""
        self._ended[session_id] = None
        if len(self._ended) > _ENDED_KEPT:
            del self._ended[next(iter(self._ended))]
        user_id = self._owners.pop(session_id, None)
        if user_id is None:
            return
        room = self._rooms.get(user_id)
        if room is not None:
            room.device_changes += 1  # a read in flight began before: it must not count
            if room.devices is not None:
                room.devices.pop(session_id, None)
                self.mark(user_id)

    def changed(self, user_id: int) -> None:
        """Read the user's devices anew in the background, if the user has tabs here: a
        session of theirs was opened, or another process's count of their tabs moved."""
        room = self._rooms.get(user_id)
        if room is None:
            return
        room.device_changes += 1
        # A read in flight (a first tab's, or a reload) sees the count move and reads again.
        if room.devices is not None and user_id not in self._reloads:
            self._start_reload(user_id, room)

    def refresh_elsewhere(self) -> None:
        """Read anew the devices of the users with tabs on other processes (a process that
        died stops counting once its heartbeat is old: server/storage/presence.py)."""
        for user_id, room in self._rooms.items():
            if room.devices and any(device.tabs for device in room.devices.values()):
                self.changed(user_id)

    def forget(self, room: Room) -> None:
        """Drop what the hub kept for a room it forgets (its user has no tab here)."""
        for session_id in room.devices or ():
            self._owners.pop(session_id, None)

    async def close(self) -> None:
        """Stop the timer and any reads in flight."""
        for timer in (self._timer, self._retry):
            if timer is not None:
                timer.cancel()
        self._timer = self._retry = None
        for task in list(self._reloads.values()):
            task.cancel()
        await asyncio.gather(*self._reloads.values(), return_exceptions=True)

    def _start_reload(self, user_id: int, room: Room) -> None:
        task = asyncio.get_running_loop().create_task(self._reload(user_id, room))
        self._reloads[user_id] = task
        task.add_done_callback(lambda _: self._reloads.pop(user_id, None))

    async def _reload(self, user_id: int, room: Room) -> None:
        try:
            while await self._load(user_id, room):
                pass  # changed during the read: read again
        except StoreUnavailable as error:
            logger.debug("devices of user %d not read: %s", user_id, error)
            self._failed.add(user_id)
            if self._retry is None:
                self._retry = asyncio.get_running_loop().call_later(self.retry_s, self._again)
        self.mark(user_id)

    def _again(self) -> None:
        self._retry = None
        failed, self._failed = self._failed, set()
        for user_id in failed:
            self.changed(user_id)

    async def _load(self, user_id: int, room: Room) -> bool:
        """Read the user's devices into the room; return whether they changed meanwhile."""
        asked = room.device_changes
        return self._install(user_id, room, await self._store.load_devices(user_id), asked)

    def _install(
        self, user_id: int, room: Room, devices: Sequence[tuple[int, Device]], asked: int
    ) -> bool:
        if self._rooms.get(user_id) is not room:
            # Every tab left meanwhile; a new room reads its own.
            room.devices = room.devices or {}
            return False
        self.forget(room)
        room.devices = {id_: device for id_, device in devices if id_ not in self._ended}
        for session_id in room.devices:
            self._owners[session_id] = user_id
        return room.device_changes != asked

    def _flush(self) -> None:
        self._timer = None
        due, self._due = self._due, set()
        for user_id in due:
            room = self._rooms.get(user_id)
            counts = _counts(room) if room is not None else Counter[int]()
            if self.report is not None:
                self._report(self.report, user_id, counts)
            if room is None or room.devices is None:
                continue
            views: dict[int, tuple[Device, ...]] = {}
            frames: dict[int, str] = {}
            for tab in list(room.tabs.values()):
                if tab.state is not TabState.OPEN or tab.closing:
                    continue  # a joining tab's hello carries the list
                if (devices := views.get(tab.session_id)) is None:
                    devices = views[tab.session_id] = self._view(room, counts, tab.session_id)
                if devices == tab.devices:
                    continue
                if (frame := frames.get(tab.session_id)) is None:
                    frame = frames[tab.session_id] = encode(PresenceMessage(devices=devices))
                tab.devices = devices
                tab.send_presence(frame)

    def _report(
        self, report: Callable[[int, int, int], None], user_id: int, counts: Counter[int]
    ) -> None:
        """Tell ``report`` each session whose count here changed since last told."""
        told = self._reported.pop(user_id, {})
        for session_id in told.keys() - counts.keys():
            report(user_id, session_id, 0)
        for session_id, tabs in counts.items():
            if told.get(session_id) != tabs:
                report(user_id, session_id, tabs)
        if counts:
            self._reported[user_id] = dict(counts)

    @staticmethod
    def _view(room: Room, counts: Counter[int], current: int) -> tuple[Device, ...]:
        """The devices as a tab of ``current`` sees them: ``tabs`` elsewhere plus here."""
        devices = room.devices or {}
        return tuple(
            msgspec.structs.replace(
                device, tabs=device.tabs + counts[session_id], current=session_id == current
            )
            for session_id, device in sorted(
                devices.items(), key=lambda item: (item[1].signed_in_at, item[0]), reverse=True
            )
        )


# How many ended sessions are remembered, for reads that began before they ended.
_ENDED_KEPT = 10_000


def _counts(room: Room) -> Counter[int]:
    """Count each session's open tabs in a room, a shared connection's members included."""
    counts: Counter[int] = Counter()
    for tab in room.tabs.values():
        if not tab.closing:
            counts[tab.session_id] += tab.width
    return counts
