"""Per-user state, tabs and fan-out. Pure asyncio: no Starlette, no SQL.

The hub never awaits a tab: it queues frames in each tab's outbox (server/tab.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from server.catchup import CatchUp
from server.errors import BadMessage, HubError, StoreUnavailable
from server.events import DevicesChanged, Event, HoldChanged, SessionsEnded, StateChanged
from server.limits import Cooldown, HttpSwitchLimit
from server.logs import bound
from server.presence import Presence
from server.protocol import (
    PLATFORMS_CAUSE,
    Attach,
    Cause,
    CloseCode,
    Detach,
    Error,
    ErrorCode,
    HoldView,
    Ping,
    Pong,
    Rejected,
    RejectReason,
    SessionEndReason,
    StateView,
    Switch,
    Switched,
    UserInfo,
    decode,
    encode,
)
from server.rooms import Interest, Room, SessionIndex
from server.rules import Accepted, Decision, Refused, SessionGone, describe
from server.sharing import Sharing, carrier, member_of, width
from server.store import Store
from server.tab import Tab, Transport

__all__ = [
    "Hub",
    "Store",
    "TabLimitReached",
]

logger = logging.getLogger("hub")


class TabLimitReached(HubError):
    """The user already has the maximum number of tabs connected."""


class Hub:
    """Own every connected tab, grouped by user, and every user's latest committed state."""

    def __init__(
        self,
        store: Store,
        *,
        heartbeat_s: float = 25,
        idle_timeout_s: float = 75,
        max_tabs_per_user: int = 100,
        messages_per_second: float = 20,
        message_burst: int = 40,
        max_bad_messages: int = 10,
        outbox_size: int = 64,
        close_timeout_s: float = 5,
    ) -> None:
        self.store = store
        self.close_timeout_s = close_timeout_s
        self.heartbeat_s = heartbeat_s
        self.idle_timeout_s = idle_timeout_s
        self.max_tabs_per_user = max_tabs_per_user
        self.messages_per_second = messages_per_second
        self.message_burst = message_burst
        self.max_bad_messages = max_bad_messages
        self.outbox_size = outbox_size
        # Told of every decided switch: its result ("accepted" or the reason) and the
        # seconds from its arrival to its broadcast (-1 when it made no new version).
        self.on_switch: Callable[[str, float], None] | None = None
        # Since start, for metrics: tabs closed for not keeping up; states replaced in an
        # outbox by a newer one before they went out (of tabs gone; live ones add theirs);
        # login sessions ended here, by reason.
        self.slow_closed = 0
        self._coalesced_gone = 0
        self.sessions_ended: dict[str, int] = {}
        self._rooms: dict[int, Room] = {}
        # The feed shards of the users with tabs here: those this process reads.
        self.interest = Interest()
        # The same tabs by login session, so session events cost O(tabs of the session).
        self._sessions = SessionIndex()
        # Login sessions whose tab was closed for abuse (4002) wait until its rate limit
        # would have refilled before they may have a tab again: see cooldown().
        self._cooling = Cooldown(message_burst / messages_per_second)
        # The rate limit of switches over HTTP (POST /api/switch): server/limits.py.
        self.http_switches = HttpSwitchLimit(messages_per_second, message_burst)
        # Catching up with other processes' commits: see server/catchup.py.
        self._catchup = CatchUp(self._rooms, store)
        # Each user's devices, told to their tabs: see server/presence.py.
        self.presence = Presence(self._rooms, store)
        # Connections that carry several tabs of a browser: see server/sharing.py.
        self._sharing = Sharing(self, self._rooms)

    # Tabs joining and leaving.

    async def join(
        self,
        transport: Transport,
        *,
        tab_id: str,
        user: UserInfo,
        session_id: int,
        expires_at: str,
    ) -> Tab:
        """Register a tab and queue its hello; raise TabLimitReached when the user is full."""
        room = self._rooms.get(user.id) or self._open_room(user.id)
        previous = room.tabs.get(tab_id) or carrier(room, tab_id)  # one that moves: no more
        if previous is None and width(room) >= self.max_tabs_per_user:
            self._forget_if_empty(user.id)
            raise TabLimitReached(f"at most {self.max_tabs_per_user} tabs per user")
        if previous is not None and previous.id == tab_id:
            previous.close(CloseCode.TAB_REPLACED, "tab id reused by a newer connection")
        self._sharing.release(room, tab_id)  # a member that now has a connection of its own
        tab = Tab(self, transport, tab_id=tab_id, user=user, session_id=session_id)
        tab.expires_at = expires_at
        # Registered before the snapshot is read, so no broadcast can fall between the two;
        # the outbox drops whatever the snapshot already covers.
        room.tabs[tab_id] = tab
        self._sessions.add(tab)
        try:
            if (
                room.state is not None
                and not room.stale
                and room.hold_known
                and self.presence.knows(room, tab.session_id)
            ):
                # Another tab of the user's is here: the room has followed every commit since
                # its first read, and this tab, registered above, gets every one after.
                state = room.state
            else:  # the user's first tab here (or a new device): all it needs in one read
                asked = room.device_changes
                state, hold, found = await self.store.load_joining(user.id)
                if not room.hold_known:  # then follow events
                    room.set_hold(hold)
                self.presence.install(user.id, room, found, asked)
                if room.stale and state.version >= room.reload_until:
                    room.stale = False  # and the room's other tabs get what was missed
                    if room.state is None or state.version >= room.state.version:
                        room.publish(state, PLATFORMS_CAUSE)
            devices = self.presence.join(room, user.id, tab)
        except BaseException:
            self._remove(tab)
            raise
        room.remember(state)
        state = room.state or state
        tab.open(self._sharing.hello(room, tab, tab_id, devices), state.version)
        return tab

    async def drain(self, tab: Tab, within: float = 5.0) -> None:
        """Wait (at most ``within`` seconds) for a closing tab's writer to send the close."""
        if tab.writer is not None:
            await asyncio.wait([tab.writer], timeout=within)

    async def leave(self, tab: Tab) -> None:
        """Forget a tab whose connection has ended, and stop its writer."""
        self._remove(tab)
        self._coalesced_gone += tab.outbox.coalesced  # leave runs once per tab
        writer = tab.end()
        if writer is not None and not writer.done():
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    def coalesced(self) -> int:
        """Return how many states were replaced by newer ones before going out, since start."""
        return self._coalesced_gone + sum(tab.outbox.coalesced for tab in self.tabs())

    def tabs(self, user_id: int | None = None) -> list[Tab]:
        """Return the connected tabs, of one user or of all."""
        if user_id is not None:
            room = self._rooms.get(user_id)
            return list(room.tabs.values()) if room else []
        return [tab for room in self._rooms.values() for tab in room.tabs.values()]

    def state_of(self, user_id: int) -> StateView | None:
        """Return the newest state the hub has seen for a user with tabs."""
        room = self._rooms.get(user_id)
        return room.state if room else None

    def cooldown(self, session_id: int) -> float:
        """Return how long a new tab of this session must wait: a tab of it was just closed
        for abuse (4002), and the wait is the time its rate limit takes to refill (a flooder
        reconnecting at once got a fresh burst each time: docs/performance.md, "Flood")."""
        return self._cooling.left(session_id)

    # Messages from tabs.

    async def receive(self, tab: Tab, frame: str | bytes) -> None:
        """Handle one frame from a tab."""
        tab.last_heard = time.monotonic()
        if tab.closing:
            return
        try:
            if isinstance(frame, bytes):
                raise BadMessage("Binary frames are not supported; send JSON text frames")
            message = decode(frame)
            member = self._sharing.asker(tab, message)  # a switch of a shared connection's
        except BadMessage as error:
            self._bad_message(tab, str(error))
            return
        if member is False:
            return  # answered: the tab it names is not carried here
        if not (self._sharing.admit(tab, member) if member else tab.admit()):
            if tab.closing:
                return
            if isinstance(message, Switch):
                self._reply_rejected(tab, message, RejectReason.RATE_LIMITED)
            else:  # an attach refused names its tab (a ping has none)
                named = getattr(message, "tab", None)
                tab.send(encode(Error(ErrorCode.RATE_LIMITED, _RATE_MESSAGE, named)))
            return
        match message:
            case Ping():
                tab.send(_PONG)
            case Attach(tab=member_id):
                self._sharing.attach(tab, member_id)
            case Detach(tab=member_id):
                self._sharing.detach(tab, member_id)
            case Switch():
                await self.switch(tab.user.id, tab.session_id, message, tab=tab)

    async def switch(
        self, user_id: int, session_id: int, request: Switch, *, tab: Tab | None = None
    ) -> Switched | Rejected | None:
        """Decide a switch, answer ``tab`` if given, broadcast any new version, return the answer
        (None: the login session had ended). Without a tab (over HTTP), the session's own
        bucket rate-limits it, as a tab's bucket limits its WebSocket (Hub.receive)."""
        refusal = None if tab is not None else await self.http_switches.refusal(session_id)
        if refusal is not None:
            state = self.state_of(user_id)
            if state is None and refusal is RejectReason.RATE_LIMITED:
                with contextlib.suppress(StoreUnavailable):
                    state = await self.store.load_state(user_id)
            return self._rejection(request, refusal, state)
        # Over a shared connection, the member that asked (Hub.receive checked it is one).
        member = member_of(tab, request) if tab is not None else None
        tab_id = member or (tab.id if tab else None)
        arrived = time.monotonic()
        with bound(request=request.id):
            try:
                decision = await self.store.switch(user_id, session_id, request, tab_id)
            except StoreUnavailable as error:
                logger.warning("switch to platform %s: %s", request.platform, error)
                decision = Refused(RejectReason.UNAVAILABLE, self.state_of(user_id))
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("switch to platform %s: %s", request.platform, _result(decision))
        reply: Switched | Rejected
        match decision:
            case SessionGone(reason=ended):
                self.end_session(session_id, ended)
                return None
            case Accepted():
                reply = Switched(id=request.id, version=decision.version, tab=member)
            case Refused():
                message = describe(decision.reason, decision.state, decision.detail)
                reply = Rejected(
                    id=request.id,
                    reason=decision.reason,
                    message=message,
                    state=decision.state,
                    tab=member,
                )
        # The asking tab hears its decision before the broadcast of what it caused.
        if tab is not None and not tab.closing:
            tab.send(encode(reply))
        broadcast_after = -1.0
        if isinstance(decision, Accepted) and decision.event is not None:
            self.apply(decision.event, decision.state)
            broadcast_after = time.monotonic() - arrived
        elif decision.state is not None and (room := self._rooms.get(user_id)) is not None:
            room.remember(decision.state)
        if self.on_switch is not None:
            self.on_switch(_result(decision), broadcast_after)
        return reply

    def apply(self, event: Event, state: StateView | None = None) -> None:
        """Take a committed change to this process's tabs: this process's own (with the
        ``state`` it committed) and other processes' (from the backplane) alike."""
        match event:
            case StateChanged(user=user, version=version, cause=cause):
                if state is not None:
                    self.publish(user, state, cause)
                elif cause.kind == "platforms":
                    self._catchup.reload(user, version)  # the event names no platforms
                else:
                    self._catchup.advance(user, version, event.active, cause)
            case HoldChanged(user=user, hold=hold):
                self.hold(user, hold)
            case SessionsEnded(sessions=ended, reason=reason):
                for session_id in ended:
                    self.end_session(session_id, reason)
            case DevicesChanged(user=user):
                self.presence.changed(user)

    def publish(self, user_id: int, state: StateView, cause: Cause) -> None:
        """Send a committed state to every tab of its user; never waits for a tab."""
        room = self._rooms.get(user_id)
        if room is not None:
            room.publish(state, cause)

    def resync_soon(self) -> None:
        """Resync every user with tabs here in the background (a late commit landed)."""
        self._catchup.resync_soon()

    async def resync(self) -> None:
        """Read and publish the state of every user with tabs here (notifications were lost)."""
        await self._catchup.resync()

    # Holds.

    def hold(self, user_id: int, hold: HoldView | None) -> None:
        """Tell the user's tabs here that a hold started (``hold``) or ended (None)."""
        room = self._rooms.get(user_id)
        if room is not None:
            room.set_hold(hold)

    # Sessions.

    def session_ids(self) -> dict[int, str]:
        """Return each login session with tabs here, with the expiry its tabs were told."""
        return self._sessions.expiries()

    def open_tabs(self, *, user_id: int | None = None, session_id: int | None = None) -> int:
        """Return how many tabs of a user, or of a login session, are open (not closing):
        counted before the sessions are revoked, since the commit itself may close them."""
        if session_id is not None:
            return self._sessions.count(session_id)
        return sum(tab.width for tab in self.tabs(user_id) if not tab.closing)

    def session_opened(self, user_id: int, displaced: Sequence[int] = ()) -> None:
        """A login session of the user was opened, ending ``displaced`` (the oldest, past
        max_sessions_per_user): end their tabs, and tell the user's tabs of the new device."""
        for session_id in displaced:
            self.end_session(session_id, SessionEndReason.REVOKED)
        self.presence.changed(user_id)

    def end_session(self, session_id: int, reason: SessionEndReason) -> int:
        """Send session_ended to every tab of a login session and close each with 4001."""
        ended = self._sessions.end(session_id, reason)
        self.presence.ended(session_id)
        if ended:
            self.sessions_ended[reason.value] = self.sessions_ended.get(reason.value, 0) + 1
        return ended

    def warn_session(self, session_id: int, expires_at: str) -> None:
        """Tell the tabs of a session that it expires soon, once per expiry time."""
        self._sessions.warn(session_id, expires_at)

    def extend_session(self, session_id: int, expires_at: str) -> None:
        """Record a later expiry for the tabs of a session, so it may warn again later."""
        self._sessions.extend(session_id, expires_at)

    # Housekeeping.

    def close_idle(self) -> int:
        """Close every tab that sent nothing for the idle timeout; return how many."""
        deadline = time.monotonic() - self.idle_timeout_s
        idle = [tab for tab in self.tabs() if tab.last_heard < deadline and not tab.closing]
        for tab in idle:
            tab.close(CloseCode.IDLE_TIMEOUT, "no message within the idle timeout")
        return len(idle)

    async def close(self, code: int = CloseCode.SERVICE_RESTART) -> None:
        """Close every tab with ``code`` and wait briefly for the closes to go out."""
        await self._catchup.close()
        await self.presence.close()
        tabs = self.tabs()
        for tab in tabs:
            tab.close(code, "hub shutting down")
        if writers := [tab.writer for tab in tabs if tab.writer is not None]:
            await asyncio.wait(writers, timeout=2)

    # Internals.

    def _spend(self, tab: Tab) -> None:
        self._cooling.start(tab.session_id)

    def _bad_message(self, tab: Tab, detail: str) -> None:
        tab.bad_messages += 1
        if tab.bad_messages > self.max_bad_messages:
            tab.close_for_abuse("too many malformed messages")
            return
        tab.send(encode(Error(code=ErrorCode.BAD_MESSAGE, message=detail)))

    def _reply_rejected(self, tab: Tab, request: Switch, reason: RejectReason) -> None:
        state = self.state_of(tab.user.id)
        tab.send(encode(self._rejection(request, reason, state, member_of(tab, request))))

    @staticmethod
    def _rejection(
        request: Switch, reason: RejectReason, state: StateView | None, tab: str | None = None
    ) -> Rejected:
        message = describe(reason, state)
        return Rejected(id=request.id, reason=reason, message=message, state=state, tab=tab)

    def _remove(self, tab: Tab) -> None:
        self._sessions.remove(tab)
        room = self._rooms.get(tab.user.id)
        if room is not None and room.tabs.get(tab.id) is tab:
            del room.tabs[tab.id]
            self.presence.mark(tab.user.id)
            self._forget_if_empty(tab.user.id)

    def _open_room(self, user_id: int) -> Room:
        room = self._rooms[user_id] = Room()
        self.interest.add(user_id)
        return room

    def _forget_if_empty(self, user_id: int) -> None:
        room = self._rooms.get(user_id)
        if room is not None and not room.tabs:
            room.cancel_timer()
            self.presence.forget(room)
            del self._rooms[user_id]
            self.interest.remove(user_id)


_PONG = encode(Pong())


def _result(decision: Decision) -> str:
    # For metrics and logs: "accepted", the reason refused, or "ended".
    match decision:
        case Accepted():
            return "accepted"
        case Refused(reason=reason):
            return reason.value
        case SessionGone():
            return "ended"


_RATE_MESSAGE = "Too many messages; slow down"
