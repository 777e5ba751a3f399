"""A tab: one browser tab's connection, its life as an explicit state, its outbox and writer.

The hub never awaits a tab: it puts frames in the tab's bounded outbox (server/outbox.py),
and a writer task of that tab drains it, running only while the outbox holds something.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import TYPE_CHECKING, Protocol

from server.errors import HubError
from server.limits import TokenBucket
from server.outbox import Close, Outbox
from server.protocol import CloseCode, Device, UserInfo

if TYPE_CHECKING:
    from server.hub import Hub
    from server.sharing import Carried

__all__ = ["Tab", "TabState", "Transport", "TransportClosed"]

logger = logging.getLogger("hub")


class TransportClosed(HubError):
    """The connection under a tab is gone."""


class Transport(Protocol):
    """The connection a tab writes to."""

    async def send_text(self, data: str) -> None: ...

    def send_now(self, data: str) -> bool:
        """Write ``data`` at once if the connection takes it without waiting; else False."""
        ...

    async def close(self, code: int, reason: str) -> None: ...

    def abort(self) -> None:
        """Drop the connection now, with whatever it has not sent."""
        ...


class TabState(enum.Enum):
    """Where a tab is in its life; a queued close is the outbox's (``Tab.closing``)."""

    JOINING = "joining"  # registered while its hello's snapshot is read: no writer yet
    OPEN = "open"  # its hello is queued: frames go out as they come
    GONE = "gone"  # its connection ended or failed: nothing goes out any more


# The only moves a tab makes; gone is final, and reached again without harm (a writer that
# found the connection lost, then leave).
_MOVES = {
    TabState.JOINING: {TabState.OPEN, TabState.GONE},
    TabState.OPEN: {TabState.GONE},
    TabState.GONE: {TabState.GONE},
}


class Tab:
    """One browser tab's connection: its identity, state, outbox and writer."""

    def __init__(
        self, hub: Hub, transport: Transport, *, tab_id: str, user: UserInfo, session_id: int
    ) -> None:
        self.id = tab_id
        self.user = user
        self.session_id = session_id
        self.transport = transport
        self._hub = hub
        self.outbox = Outbox(hub.outbox_size, self._wake)
        self.bucket = TokenBucket(hub.messages_per_second, hub.message_burst)
        self.bad_messages = 0
        self.excess_messages = 0  # messages over the rate limit, in a row
        self.last_heard = time.monotonic()
        self.warned_for: str | None = None
        # The devices this tab was last told of (server/presence.py).
        self.devices: tuple[Device, ...] = ()
        # The other tabs this connection carries (a shared connection: server/sharing.py).
        self.members: Carried | None = None
        self.expires_at: str = ""
        # Runs only while the outbox holds something: an idle tab has no task.
        self.writer: asyncio.Task[None] | None = None
        # No writer before the hello is queued (JOINING): a broadcast that lands while the
        # hello's snapshot is read must wait behind it, never go out first.
        self.state = TabState.JOINING
        self.abort_timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    @property
    def closing(self) -> bool:
        """Tell whether the tab is being closed."""
        return self.outbox.closing

    @property
    def width(self) -> int:
        """Return how many tabs this connection is: its own and its members."""
        return 1 + len(self.members) if self.members else 1

    @property
    def gone(self) -> bool:
        """Tell whether the tab's connection has ended."""
        return self.state is TabState.GONE

    def open(self, hello: str, version: int) -> None:
        """Queue the hello ahead of anything queued meanwhile, and start sending."""
        self.outbox.put_state(version, hello, first=True)
        self._enter(TabState.OPEN)
        self._wake()  # sends the hello, and whatever queued behind it meanwhile

    def end(self) -> asyncio.Task[None] | None:
        """Mark the connection ended: cancel the close deadline; return the writer to stop."""
        self._enter(TabState.GONE)
        if self.abort_timer is not None:
            self.abort_timer.cancel()
            self.abort_timer = None
        return self.writer

    def _enter(self, state: TabState) -> None:
        if state not in _MOVES[self.state]:
            raise RuntimeError(
                f"tab {self.id} is {self.state.value}: it cannot become {state.value}"
            )
        self.state = state

    def send(self, frame: str) -> None:
        """Queue a frame; a tab that cannot keep up is closed instead."""
        if not self.outbox.put(frame):
            logger.warning("closing slow tab %s of user %s", self.id, self.user.id)
            self._hub.slow_closed += 1
            self.outbox.close(CloseCode.SLOW_CONSUMER, "outbox overflow")

    def send_presence(self, frame: str) -> None:
        """Queue a presence frame in place of any unsent one; as ``send`` when full."""
        if not self.outbox.put_presence(frame):
            self.send(frame)  # full: closes the tab as slow

    def close(self, code: int, reason: str, last: str | None = None, *, drop: bool = True) -> None:
        """Close the tab after sending ``last``, without waiting; past the hub's close
        deadline, drop its connection and whatever it has not sent."""
        if not self.outbox.closing and not self.gone:
            # A peer that reads nothing would keep the close (and the buffers ahead of it)
            # unsent forever: the transport's own close waits for its buffer to drain.
            self.abort_timer = self._loop.call_later(self._hub.close_timeout_s, self._abort)
        self.outbox.close(code, reason, last, drop=drop)

    def admit(self) -> bool:
        """Take a token of the tab's rate limit for one frame (a control frame too); a tab
        that keeps sending past its burst is closed (4002) and its session cooled down."""
        if self.bucket.take():
            self.excess_messages = 0
            return True
        # Past its burst, a tab that keeps flooding is closed like one that sends garbage
        # (4002), before its answers could pile up unread.
        self.excess_messages += 1
        if self.excess_messages > self._hub.max_bad_messages and not self.closing:
            self.close_for_abuse("too many messages")
        return False

    def close_for_abuse(self, reason: str) -> None:
        """Close the tab with 4002 after what is queued (its errors say what it did wrong),
        and cool its session down (Hub.cooldown)."""
        self._hub._spend(self)
        self.close(CloseCode.PROTOCOL_ABUSE, reason, drop=False)

    def overflowed(self) -> None:
        """Close a tab whose connection holds more unsent than it may (4008)."""
        if not self.closing:
            logger.warning("closing tab %s of user %s: too much unsent", self.id, self.user.id)
            self._hub.slow_closed += 1
            self.close(CloseCode.SLOW_CONSUMER, "too much unsent")

    def _abort(self) -> None:
        self.abort_timer = None
        if not self.gone:
            logger.info("dropping tab %s of user %s: its close was not sent", self.id, self.user.id)
            self.transport.abort()

    def _wake(self) -> None:
        if self.writer is not None or self.state is not TabState.OPEN:
            return
        # What the connection takes without waiting is written now, in order: no task, no
        # await. The rest, and the close, go to a writer task.
        outbox = self.outbox
        while (frame := outbox.peek()) is not None and self.transport.send_now(frame):
            outbox.take()
        if len(outbox) or outbox.closing:
            self.writer = self._loop.create_task(self._write())

    async def _write(self) -> None:
        try:
            while (item := self.outbox.take()) is not None:
                if isinstance(item, Close):
                    await self.transport.close(item.code, item.reason)
                    return
                await self.transport.send_text(item)
        except TransportClosed:
            self._enter(TabState.GONE)
        finally:
            self.writer = None
