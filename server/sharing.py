"""Shared connections: one WebSocket carrying several tabs of one browser.

A browser's tabs may share one connection (navigation.js's ``shareConnection``): the tab that
holds it attaches the others (``attach``), and the hub counts each member as a tab of its own
(presence, ``max_tabs_per_user``), decides each member's switches under the member's own rate
limit, and tags what is one member's alone (its hello, its switch's answer) with its id; what
every tab of the user gets (states, holds, presence, session notices) goes down the
connection once.

A member is of the connection's login session by construction: the connection authenticated
it, and the hub takes the member's word for nothing else. A tab id is carried by one
connection at a time: attached elsewhere, or connecting with a socket of its own, it leaves the
connection that had it (``detached``), as a reused tab id replaces an older socket (4005).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from server.limits import TokenBucket
from server.protocol import (
    PROTOCOL_VERSION,
    ClientMessage,
    CloseCode,
    Detached,
    Device,
    Error,
    ErrorCode,
    Hello,
    RejectReason,
    SessionInfo,
    Switch,
    encode,
)
from server.rooms import Room
from server.tab import Tab

if TYPE_CHECKING:
    from server.hub import Hub

__all__ = ["Carried", "Member", "Sharing", "carrier", "member_of", "width"]


class Member:
    """A tab carried by another tab's connection: its own rate limit."""

    __slots__ = ("bucket", "excess")

    def __init__(self, rate: float, burst: int) -> None:
        self.bucket = TokenBucket(rate, burst)
        self.excess = 0  # frames over the rate limit, in a row


class Carried(dict[str, Member]):
    """A shared connection's members, and one budget for all their frames: as many tabs'
    rate as it carries, one tab's burst. A member detached and attached again (or a new id
    each time) starts with a full bucket of its own, but never with a fresh budget: a
    connection that churned ids got 440 switches decided in a second, where a tab gets 60."""

    __slots__ = ("budget",)

    def __init__(self, rate: float, burst: int) -> None:
        super().__init__()
        self.budget = TokenBucket(rate, burst)

    def add(self, member_id: str, rate: float, burst: int) -> None:
        """Carry a member: its own bucket, and the budget's rate one tab's more."""
        self[member_id] = Member(rate, burst)
        self.budget.set_rate(rate * len(self))

    def drop(self, member_id: str, rate: float) -> bool:
        """Stop carrying a member (the budget's rate one tab's less); tell whether it was."""
        if self.pop(member_id, None) is None:
            return False
        self.budget.set_rate(rate * max(1, len(self)))
        return True


def member_of(tab: Tab, request: Switch) -> str | None:
    """Return the member a switch on ``tab``'s connection names (None: the connection's own)."""
    return request.tab if request.tab not in (None, tab.id) else None


def width(room: Room) -> int:
    """Count a room's open tabs, members included."""
    return sum(tab.width for tab in room.tabs.values() if not tab.closing)


def carrier(room: Room, tab_id: str, but: Tab | None = None) -> Tab | None:
    """Return the open connection of the room that carries ``tab_id`` as a member, if any."""
    for tab in room.tabs.values():
        if tab is not but and tab.members and tab_id in tab.members and not tab.closing:
            return tab
    return None


class Sharing:
    """Attach and detach the members of shared connections, and admit their frames."""

    def __init__(self, hub: Hub, rooms: dict[int, Room]) -> None:
        self._hub = hub
        self._rooms = rooms

    def attach(self, tab: Tab, member_id: str) -> None:
        """Carry ``member_id`` on ``tab``'s connection and queue its hello (again, if it is
        already carried: a new leader re-attaches every tab)."""
        hub, room = self._hub, self._rooms[tab.user.id]
        if member_id == tab.id:
            self._refuse(tab, member_id, ErrorCode.BAD_MESSAGE, "A connection carries its own tab.")
            return
        if tab.members is None or member_id not in tab.members:
            replaced = room.tabs.get(member_id)
            # A tab moving here from a socket of its own or another connection: not one more.
            moving = replaced is not None and not replaced.closing
            moving = moving or carrier(room, member_id, but=tab) is not None
            if width(room) - moving >= hub.max_tabs_per_user:
                limit = f"at most {hub.max_tabs_per_user} tabs per user"
                self._refuse(tab, member_id, ErrorCode.TAB_LIMIT, limit)
                return
            if replaced is not None:
                replaced.close(CloseCode.TAB_REPLACED, "tab id taken by a shared connection")
            self.release(room, member_id)
            if tab.members is None:
                tab.members = Carried(hub.messages_per_second, hub.message_burst)
            tab.members.add(member_id, hub.messages_per_second, hub.message_burst)
        tab.send(self.hello(room, tab, member_id, hub.presence.join(room, tab.user.id, tab)))

    def hello(self, room: Room, tab: Tab, tab_id: str, devices: tuple[Device, ...]) -> str:
        """Return the hello of ``tab_id``, carried by ``tab``'s connection (its own, or a
        member's): the room's state and hold, the devices given."""
        assert room.state is not None  # read (or followed) by the connection's own join
        hello = Hello(
            protocol=PROTOCOL_VERSION,
            tab=tab_id,
            user=tab.user,
            state=room.state,
            session=SessionInfo(expires_at=tab.expires_at),
            heartbeat_s=self._hub.heartbeat_s,
            hold=room.hold,
            devices=devices,
        )
        return encode(hello)

    def detach(self, tab: Tab, member_id: str) -> bool:
        """Stop carrying ``member_id``; tell whether it was carried (unknown: nothing to do)."""
        if tab.members is None or not tab.members.drop(member_id, self._hub.messages_per_second):
            return False
        self._hub.presence.mark(tab.user.id)
        return True

    def release(self, room: Room, tab_id: str) -> None:
        """Take ``tab_id`` off any connection of the room that carries it, telling it so."""
        for carrier in room.tabs.values():
            if self.detach(carrier, tab_id):
                carrier.send(encode(Detached(tab=tab_id)))

    def asker(self, tab: Tab, message: ClientMessage) -> Member | Literal[False] | None:
        """Return the member a switch is for (None: the connection's own tab), or False when
        it names a tab the connection does not carry: answered ``not_attached`` (the tab may
        have just moved to another connection; a retry there with the same id is decided
        once), not counted as a bad message."""
        if not isinstance(message, Switch) or (member_id := member_of(tab, message)) is None:
            return None
        member = tab.members.get(member_id) if tab.members else None
        if member is None:
            state = self._hub.state_of(tab.user.id)
            reason = RejectReason.NOT_ATTACHED
            tab.send(encode(self._hub._rejection(message, reason, state, member_id)))
            return False
        return member

    def admit(self, tab: Tab, member: Member) -> bool:
        """Take a token of a member's rate limit and of its connection's budget; as
        Tab.admit, a connection whose members keep sending past them is closed (4002)."""
        assert tab.members is not None
        if member.bucket.take():
            if tab.members.budget.take():
                member.excess = 0
                return True
            member.bucket.give()
        member.excess += 1
        if member.excess > self._hub.max_bad_messages and not tab.closing:
            tab.close_for_abuse("too many messages")
        return False

    @staticmethod
    def _refuse(tab: Tab, member_id: str, code: ErrorCode, message: str) -> None:
        tab.send(encode(Error(code=code, message=message, tab=member_id)))
