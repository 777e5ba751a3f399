"""The hub's pure parts, on the memory store; over real sockets: test_switch.py, test_app.py."""

from __future__ import annotations

import asyncio

import msgspec
from pytest import LogCaptureFixture, MonkeyPatch

from server.catchup import CatchUp
from server.errors import StoreUnavailable
from server.events import StateChanged, shard_of
from server.hub import Hub
from server.protocol import (
    PLATFORMS_CAUSE,
    Cause,
    Hello,
    PlatformView,
    PresenceMessage,
    RejectReason,
    SessionEndReason,
    StateMessage,
    StateView,
    Switch,
    UserInfo,
)
from server.rules import Accepted, describe
from server.store import Joining
from server.tab import Tab
from tests.conftest import TIMEOUT
from tests.support.memory import MemoryStore
from tests.support.processes import wait_until
from tests.support.transport import RecordingTransport


class _HeldReads(MemoryStore):
    """The memory store (tests/storage/test_store.py holds it to the real ones' contract), with
    state reads that wait until the test lets them go."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def load_state(self, user_id: int) -> StateView:
        self.reading.set()
        await self.release.wait()
        return await super().load_state(user_id)


def test_rejections_are_described_in_plain_words() -> None:
    """Each reason has a sentence; stale names the platform that won."""
    state = StateView(
        version=3,
        active=7,
        platforms=(
            PlatformView(
                id=7,
                name="Pixelfed",
                kind="pixelfed",
                instance_url="https://p.example",
                username="alice",
                is_default=True,
            ),
        ),
    )
    assert describe(RejectReason.STALE, state) == "Switched to Pixelfed @alice in another tab."
    nothing_active = msgspec.structs.replace(state, active=None)
    assert describe(RejectReason.STALE, nothing_active) == (
        "Another tab changed the active platform first."
    )
    for reason in RejectReason:
        assert describe(reason, None).endswith(".")


async def test_a_broadcast_during_a_join_goes_out_after_the_hello() -> None:
    """A state published while a joining tab's snapshot is read waits behind its hello."""
    store = _HeldReads()
    user, _ = store.add_user([("Pixelfed", True), ("Mastodon", False)])
    session = store.open_session(user)
    hub = Hub(store)
    transport = RecordingTransport()
    try:
        current = await MemoryStore.load_state(store, user)
        joining = asyncio.create_task(
            hub.join(
                transport,
                tab_id="t",
                user=UserInfo(id=user, name="alice"),
                session_id=session,
                expires_at="2100-01-01T00:00:00Z",
            )
        )
        await asyncio.wait_for(store.reading.wait(), TIMEOUT)
        newer = msgspec.structs.replace(current, version=current.version + 1)
        hub.publish(user, newer, Cause(kind="switch", tab="other", request="r"))
        await asyncio.sleep(0.01)
        assert transport.messages == []  # nothing may go out before the hello
        store.release.set()
        tab = await asyncio.wait_for(joining, TIMEOUT)
        await asyncio.wait_for(transport.sent.wait(), TIMEOUT)
        await asyncio.sleep(0.01)  # anything queued behind the hello goes out too
        messages = transport.messages
        assert isinstance(messages[0], Hello)
        # The hello already carries the newer state (the hub remembered it), or it follows.
        assert [m.state.version for m in messages] in (  # type: ignore[union-attr]
            [newer.version],
            [current.version, newer.version],
        )
        await hub.leave(tab)
    finally:
        await hub.close()
        await store.close()


class _CountedReads(MemoryStore):
    """The memory store, counting the reads a join makes."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    async def load_state(self, user_id: int) -> StateView:
        self.reads.append("state")
        return await super().load_state(user_id)

    async def load_joining(self, user_id: int) -> Joining:
        self.reads.append("joining")
        state = await MemoryStore.load_state(self, user_id)  # not counted again
        return state, await self.load_hold(user_id), list(await self.load_devices(user_id))


async def test_a_further_tab_of_a_user_here_is_greeted_without_a_read() -> None:
    """The first tab of a user reads state, hold and devices at once, as does the first tab
    of a device signed in since; any other tab reads nothing, and its hello carries the
    newest state the room was told. Once every tab has left, the next first tab reads again."""
    store = _CountedReads()
    user, _ = store.add_user([("Pixelfed", True), ("Mastodon", False)])
    laptop, phone = store.open_session(user), store.open_session(user)
    hub = Hub(store)
    alice = UserInfo(id=user, name="alice")

    async def join(tab_id: str, session: int) -> tuple[Tab, RecordingTransport]:
        transport = RecordingTransport()
        tab = await hub.join(
            transport,
            tab_id=tab_id,
            user=alice,
            session_id=session,
            expires_at="2100-01-01T00:00:00Z",
        )
        await asyncio.wait_for(transport.sent.wait(), TIMEOUT)
        return tab, transport

    try:
        first, _ = await join("a", laptop)
        assert store.reads == ["joining"]
        current = await MemoryStore.load_state(store, user)
        newer = msgspec.structs.replace(current, version=current.version + 1)
        hub.publish(user, newer, Cause(kind="switch", tab="a", request="r"))
        second, seen = await join("b", laptop)
        assert store.reads == ["joining"]  # nothing read for it
        hello = seen.messages[0]
        assert isinstance(hello, Hello) and hello.state.version == newer.version
        assert [d.tabs for d in hello.devices if d.current] == [2]
        third, _ = await join("c", phone)  # its row came with the first read
        assert store.reads == ["joining"]
        tablet = store.open_session(user)  # signed in since: read
        fourth, _ = await join("d", tablet)
        assert store.reads == ["joining", "joining"]
        for tab in (first, second, third, fourth):
            await hub.leave(tab)
        again, _ = await join("e", laptop)
        assert store.reads == ["joining", "joining", "joining"]
        await hub.leave(again)
    finally:
        await hub.close()
        await store.close()


class _Outage(MemoryStore):
    """The memory store, whose state reads fail while ``down``."""

    down = False

    async def load_state(self, user_id: int) -> StateView:
        if self.down:
            raise StoreUnavailable("the database is down")
        return await super().load_state(user_id)


async def test_a_reload_that_gave_up_makes_the_next_tab_read(
    monkeypatch: MonkeyPatch, caplog: LogCaptureFixture
) -> None:
    """Another process renames a platform while the database is down through the whole
    reload, which gives up: the room's state lacks the rename. The next tab to join reads
    the store instead of taking the room's state, and the room's older tab gets it too."""
    monkeypatch.setattr(CatchUp, "retry_base_s", 0.0001)
    store = _Outage()
    user, (pixelfed, _) = store.add_user([("Pixelfed", True), ("Mastodon", False)])
    laptop = store.open_session(user)
    hub = Hub(store)
    alice = UserInfo(id=user, name="alice")
    seen = [RecordingTransport(), RecordingTransport()]
    try:
        first = await hub.join(
            seen[0], tab_id="a", user=alice, session_id=laptop, expires_at="2100-01-01T00:00:00Z"
        )
        version = store.rename(user, pixelfed, "Renamed")
        store.down = True
        hub.apply(StateChanged(user=user, version=version, active=None, cause=PLATFORMS_CAUSE))
        gave_up = lambda: any("given up" in r.getMessage() for r in caplog.records)  # noqa: E731
        await wait_until(gave_up, TIMEOUT, "the reload gives up")
        assert hub.state_of(user).version < version  # type: ignore[union-attr]
        store.down = False
        second = await hub.join(
            seen[1], tab_id="b", user=alice, session_id=laptop, expires_at="2100-01-01T00:00:00Z"
        )
        await wait_until(lambda: len(seen[0].messages) >= 2, TIMEOUT, "the first tab is told")
        hello = seen[1].messages[0]
        assert isinstance(hello, Hello) and hello.state.version == version
        assert hello.state.platforms[0].name == "Renamed"
        told = seen[0].messages[-1]
        assert isinstance(told, StateMessage) and told.state.version == version
        assert told.state.platforms[0].name == "Renamed"
        await hub.leave(first)
        await hub.leave(second)
    finally:
        await hub.close()
        await store.close()


async def test_the_hub_hosts_the_feed_shards_of_its_users_and_tells_of_a_new_one() -> None:
    """The users with tabs here and their shards, kept as tabs come and go; the hook is told
    when a shard gets its first user, and only then (the listener LISTENs on it)."""
    store = MemoryStore()
    first, _ = store.add_user([("Pixelfed", True)])
    second, _ = store.add_user([("Pixelfed", True)])
    hub = Hub(store)
    told: list[list[int]] = []
    hub.interest.on_new = lambda: told.append(sorted(hub.interest.shards()))
    tabs = []
    try:
        for user, name in ((first, "a"), (first, "b"), (second, "c")):
            session = store.open_session(user)
            tabs.append(
                await hub.join(
                    RecordingTransport(),
                    tab_id=name,
                    user=UserInfo(id=user, name=f"user{user}"),
                    session_id=session,
                    expires_at="2100-01-01T00:00:00Z",
                )
            )
        shards = sorted({shard_of(first), shard_of(second)})
        assert sorted(hub.interest.shards()) == shards
        assert told == ([[shard_of(first)], shards] if len(shards) == 2 else [shards])
        await hub.leave(tabs[0])
        assert sorted(hub.interest.shards()) == shards  # "b" still has tabs of the first user
        assert hub.interest.users() == {first, second}
        await hub.leave(tabs[1])
        assert hub.interest.shards() == [shard_of(second)]
        assert hub.interest.users() == {second}
        await hub.leave(tabs[2])
        assert hub.interest.shards() == []
        assert hub.interest.users() == set()
    finally:
        await hub.close()
        await store.close()


class SlowFirstRead(MemoryStore):
    """A store whose state reads take their snapshot at once and return when released, as
    a query's snapshot is taken before its result reaches the event loop."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def load_state(self, user_id: int) -> StateView:
        state = await super().load_state(user_id)
        self.reading.set()
        await self.release.wait()
        return state


async def test_a_change_from_another_process_during_a_first_join_reaches_the_tab() -> None:
    """The first tab's state read has taken its snapshot when another process commits a
    switch, and the listener hands it over before the read returns (the room has no state
    yet): the state is read anew, and the tab ends on the new version, not the snapshot's."""
    store = SlowFirstRead()
    user, platforms = store.add_user([("Pixelfed", True), ("Mastodon", False)])
    hub = Hub(store)
    transport = RecordingTransport()
    joining = asyncio.create_task(
        hub.join(
            transport,
            tab_id="t",
            user=UserInfo(id=user, name="a"),
            session_id=store.open_session(user),
            expires_at="2100-01-01T00:00:00Z",
        )
    )
    try:
        await asyncio.wait_for(store.reading.wait(), 5)
        other = store.open_session(user)  # another process's tab commits a switch
        decision = await store.switch(
            user, other, Switch(id="r1", platform=platforms[1], base=0), "elsewhere"
        )
        assert isinstance(decision, Accepted), decision
        hub.apply(
            StateChanged(
                user=user,
                version=decision.version,
                active=platforms[1],
                cause=Cause(kind="switch", tab="elsewhere", request="r1"),
            )
        )
        store.release.set()
        tab = await asyncio.wait_for(joining, 5)

        def versions() -> list[int]:
            return [
                m.state.version for m in transport.messages if isinstance(m, Hello | StateMessage)
            ]

        await wait_until(lambda: decision.version in versions(), 5.0, "the new version at the tab")
        await hub.leave(tab)
    finally:
        store.release.set()
        await hub.close()
        await store.close()


async def test_presence_is_told_once_for_tabs_joining_together_and_per_session() -> None:
    """Five tabs of the phone joining in one go reach the laptop's tab as one presence
    message (not five), counting them; each tab is told which device is its own; a tab
    leaving and a session ending are told too, and another user hears nothing."""
    store = MemoryStore()
    alice, _ = store.add_user([("Pixelfed", True)])
    bob, _ = store.add_user([("Pixelfed", True)])
    laptop, phone, bobs = (
        store.open_session(alice),
        store.open_session(alice),
        store.open_session(bob),
    )
    hub = Hub(store)
    hub.presence.delay_s = 0.05
    user = UserInfo(id=alice, name="alice")
    watcher, bystander = RecordingTransport(), RecordingTransport()
    try:
        tabs = [
            await hub.join(watcher, tab_id="w", user=user, session_id=laptop, expires_at="x"),
            await hub.join(
                bystander,
                tab_id="b",
                user=UserInfo(id=bob, name="bob"),
                session_id=bobs,
                expires_at="x",
            ),
        ]
        hello = watcher.messages[0]
        assert isinstance(hello, Hello)
        assert [(int(d.session[1:]), d.tabs, d.current) for d in hello.devices] == [
            (phone, 0, False),
            (laptop, 1, True),
        ]
        phones = [RecordingTransport() for _ in range(5)]
        tabs += await asyncio.gather(
            *(
                hub.join(t, tab_id=f"p{n}", user=user, session_id=phone, expires_at="x")
                for n, t in enumerate(phones)
            )
        )
        await asyncio.sleep(0.2)
        told = [m for m in watcher.messages if isinstance(m, PresenceMessage)]
        assert [[(int(d.session[1:]), d.tabs, d.current) for d in m.devices] for m in told] == [
            [(phone, 5, False), (laptop, 1, True)]
        ]
        # Each phone tab hears its own device as current, once the last has joined.
        for transport in phones:
            seen = [m for m in transport.messages if isinstance(m, PresenceMessage | Hello)]
            assert [(d.tabs, d.current) for d in seen[-1].devices] == [(5, True), (1, False)]
        for tab in tabs[2:5]:
            await hub.leave(tab)
        hub.end_session(laptop, SessionEndReason.REVOKED)
        await asyncio.sleep(0.2)
        last = [m for m in phones[4].messages if isinstance(m, PresenceMessage)][-1]
        assert [(int(d.session[1:]), d.tabs, d.current) for d in last.devices] == [(phone, 2, True)]
        assert [type(m) for m in bystander.messages] == [Hello]
        for tab in tabs:
            await hub.leave(tab)
    finally:
        await hub.close()
