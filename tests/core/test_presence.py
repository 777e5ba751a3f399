"""Presence on the memory store (no sockets): reads of a user's devices that race with the
changes they should show (sign-ins, revocations, outages), found by an attack on the first
version. Over real sockets and both engines: tests/web/test_presence.py; across processes on
PostgreSQL: tests/storage/test_presence.py."""

from __future__ import annotations

import asyncio

from server.errors import StoreUnavailable
from server.hub import Hub
from server.protocol import Device, Hello, PresenceMessage, SessionEndReason, UserInfo
from server.tab import Tab
from tests.support.memory import MemoryStore
from tests.support.transport import RecordingTransport


class SlowDevices(MemoryStore):
    """load_devices reads the store at once (its snapshot), then takes a while to return."""

    def __init__(self) -> None:
        super().__init__()
        self.delay = 0.0

    async def load_devices(self, user_id: int) -> list[tuple[int, Device]]:
        snapshot = await super().load_devices(user_id)
        await asyncio.sleep(self.delay)
        return snapshot


def _last(transport: RecordingTransport) -> list[tuple[int, int, bool]]:
    seen = [m for m in transport.messages if isinstance(m, PresenceMessage | Hello)]
    # The memory store's handles are "s" and the session's id.
    return [(int(d.session[1:]), d.tabs, d.current) for d in seen[-1].devices]


def _alice(store: MemoryStore) -> tuple[Hub, int, int]:
    """alice with one platform and a laptop session, on a hub that tells presence in 10 ms."""
    alice, _ = store.add_user([("Pixelfed", True)])
    laptop = store.open_session(alice)
    hub = Hub(store)
    hub.presence.delay_s = 0.01
    return hub, alice, laptop


async def _join(hub: Hub, alice: int, laptop: int, transport: RecordingTransport) -> Tab:
    """alice's laptop tab "w" joins."""
    user = UserInfo(id=alice, name="alice")
    return await hub.join(transport, tab_id="w", user=user, session_id=laptop, expires_at="x")


async def test_a_sign_in_during_a_reload_is_read_again() -> None:
    """Two sign-ins 10 ms apart while the reads take 50 ms: the second, told while the
    first reload was reading, is read again and shows."""
    store = SlowDevices()
    hub, alice, laptop = _alice(store)
    t = RecordingTransport()
    tab = await _join(hub, alice, laptop, t)
    store.delay = 0.05
    phone = store.open_session(alice)
    hub.session_opened(alice)  # reload 1 starts, reads {laptop, phone}
    await asyncio.sleep(0.01)
    tablet = store.open_session(alice)
    hub.session_opened(alice)  # reload 1 in flight: it reads again
    await asyncio.sleep(0.5)
    try:
        assert _last(t) == [(tablet, 0, False), (phone, 0, False), (laptop, 1, True)], _last(t)
    finally:
        await hub.leave(tab)
        await hub.close()


async def test_a_read_in_flight_does_not_bring_a_revoked_session_back() -> None:
    """A read that began before a revocation lands after it: the revoked device stays gone."""
    store = SlowDevices()
    hub, alice, laptop = _alice(store)
    t = RecordingTransport()
    tab = await _join(hub, alice, laptop, t)
    store.delay = 0.05
    phone = store.open_session(alice)
    hub.session_opened(alice)  # a reload starts, reads {laptop, phone}
    await asyncio.sleep(0.01)
    store.end_session(phone, SessionEndReason.REVOKED)
    hub.end_session(phone, SessionEndReason.REVOKED)  # drops the phone for good
    await asyncio.sleep(0.5)
    try:
        assert _last(t) == [(laptop, 1, True)], _last(t)
    finally:
        await hub.leave(tab)
        await hub.close()


async def test_a_reload_that_changed_nothing_sends_nothing() -> None:
    """A reload that finds the devices as they were (another process's heartbeat refresh)
    sends no presence: last_active_at is the store's, never stamped here."""
    store = MemoryStore()
    hub, alice, laptop = _alice(store)
    t = RecordingTransport()
    tab = await _join(hub, alice, laptop, t)
    await asyncio.sleep(0.05)
    hub.presence.changed(alice)  # e.g. another process's heartbeat refresh: nothing changed
    await asyncio.sleep(0.1)
    try:
        times = [
            m.devices[0].last_active_at
            for m in t.messages
            if isinstance(m, Hello | PresenceMessage)
        ]
        assert len(times) == 1, times
    finally:
        await hub.leave(tab)
        await hub.close()


async def test_a_sign_in_during_a_first_join_is_read_again() -> None:
    """A change told while a user's first tab reads its devices (before the room has any)
    is read again once that read lands."""
    store = SlowDevices()
    hub, alice, laptop = _alice(store)
    store.delay = 0.05
    t = RecordingTransport()
    joining = asyncio.create_task(_join(hub, alice, laptop, t))
    await asyncio.sleep(0.01)
    phone = store.open_session(alice)
    hub.session_opened(alice)  # the first read is in flight: read again after it
    tab = await joining
    await asyncio.sleep(0.3)
    try:
        assert _last(t) == [(phone, 0, False), (laptop, 1, True)], _last(t)
    finally:
        await hub.leave(tab)
        await hub.close()


class FlakyDevices(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.fail = 0

    async def load_devices(self, user_id: int) -> list[tuple[int, Device]]:
        if self.fail:
            self.fail -= 1
            raise StoreUnavailable("blip")
        return await super().load_devices(user_id)


async def test_a_reload_that_meets_an_outage_is_tried_again() -> None:
    """One failed read after a sign-in: tried again after retry_s, and the device shows."""
    store = FlakyDevices()
    hub, alice, laptop = _alice(store)
    hub.presence.retry_s = 0.1
    t = RecordingTransport()
    tab = await _join(hub, alice, laptop, t)
    phone = store.open_session(alice)
    store.fail = 1
    hub.session_opened(alice)
    await asyncio.sleep(1.0)
    try:
        assert _last(t) == [(phone, 0, False), (laptop, 1, True)], _last(t)
    finally:
        await hub.leave(tab)
        await hub.close()
