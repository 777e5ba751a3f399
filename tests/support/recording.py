"""What tabs did and saw: switches with their answers, reads and deliveries, per user.

``TabRecorder`` records one live tab into a ``History`` (the tests' tabs, the load harness,
the benchmark); tests/support/history.py's ``check`` judges a History.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Answer",
    "Change",
    "Delivery",
    "History",
    "HoldWindow",
    "Operation",
    "Read",
    "TabRecorder",
    "UserHistory",
]

Outcome = Literal["switched", "rejected"]

# Rejections the hub writes to the switch log, so a resend gets them again; the others
# (rate_limited, unavailable, busy, bad_request) leave no row and a resend is decided anew.
_LOGGED_REJECTIONS = frozenset({"stale", "unknown_platform", "inactive_platform"})
# Answers that confirm nothing: the database did not answer in time, and the transaction may
# still commit once it does (docs/protocol.md); such a switch may or may not have happened.
_UNCONFIRMED = frozenset({"unavailable"})


@dataclass(frozen=True)
class Answer:
    """A decision as a tab heard it: the version if switched, the reason if rejected."""

    outcome: Outcome
    version: int | None = None
    reason: str | None = None

    @property
    def decided(self) -> bool:
        """Tell whether the hub logged this decision, so that every resend must get it again."""
        return self.outcome == "switched" or self.reason in _LOGGED_REJECTIONS

    def __str__(self) -> str:
        if self.outcome == "switched":
            return f"switched at {self.version}"
        return f"rejected ({self.reason})"


@dataclass
class Operation:
    """One switch request, from its first send to its answer (if any)."""

    tab: str
    request: str
    base: int
    platform: int
    sent: float
    answered: float | None = None
    outcome: Outcome | None = None  # None: no answer, so it may or may not have happened
    version: int | None = None  # switched: the version; rejected: the state's version, if any
    active: int | None = None  # rejected: the state's active platform
    reason: str | None = None
    repeats: list[Answer] = field(default_factory=list)  # answers to resends after the first

    @property
    def end(self) -> float:
        return math.inf if self.answered is None or self.unconfirmed else self.answered

    @property
    def unconfirmed(self) -> bool:
        """Tell whether the answer leaves open whether the switch happened (unavailable)."""
        return self.outcome is None or (self.outcome == "rejected" and self.reason in _UNCONFIRMED)

    @property
    def answer(self) -> Answer | None:
        """Return the first answer heard, or None while there is none."""
        if self.outcome == "switched":
            return Answer("switched", version=self.version)
        return None if self.outcome is None else Answer("rejected", reason=self.reason)

    @property
    def decided(self) -> bool:
        """Tell whether the hub logged this answer, so that every resend must get it again."""
        return self.answer is not None and self.answer.decided


@dataclass
class Read:
    """A linearizable read: the state was (``version``, ``active``) at an instant of the window."""

    tab: str
    start: float
    end: float
    version: int
    active: int | None
    what: str = "hello"


@dataclass
class Delivery:
    """A state a tab received (hello or broadcast), on its ``connection``-th connection."""

    tab: str
    connection: int
    at: float
    version: int
    active: int | None
    platforms: tuple[int, ...]


@dataclass
class Change:
    """A write that is no switch, a platform change (through a page or the host API), from its
    call to its answer: the state it made. Unanswered (``version`` None) it may or may not have
    happened, and at any version."""

    what: str
    sent: float
    answered: float | None = None
    version: int | None = None
    active: int | None = None

    @property
    def end(self) -> float:
        return math.inf if self.answered is None else self.answered


@dataclass
class HoldWindow:
    """A hold on the user's switches: placed by a call over [placing, placed] and released by
    one over [releasing, released]. It is surely in force over [placed, releasing] (``placed``
    is infinite when the placement's answer was lost), and maybe over [placing, released]."""

    placing: float
    placed: float
    releasing: float = math.inf
    released: float = math.inf


@dataclass
class UserHistory:
    """Everything recorded for one user."""

    user: int
    platforms: set[int] = field(default_factory=set)
    initial_active: int | None = None
    operations: list[Operation] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    holds: list[HoldWindow] = field(default_factory=list)
    # The database's state after the run, and the accepted rows of its switch log.
    final: tuple[int, int | None] | None = None
    log: dict[str, int] | None = None  # request id -> version (a no-op's is its base)
    # Tabs still connected at the end: each must show the final state.
    open_tabs: set[str] = field(default_factory=set)


@dataclass
class History:
    users: dict[int, UserHistory] = field(default_factory=dict)

    def user(self, user: int) -> UserHistory:
        return self.users.setdefault(user, UserHistory(user))


class TabRecorder:
    """Record one tab's switches and received frames into a History (for tests and bench)."""

    def __init__(
        self, history: History, user: int, tab: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.user = history.user(user)
        self.tab = tab
        self.clock = clock
        self.connection = 0
        self.operations: dict[str, Operation] = {}  # by request id, answered or not
        self._connect_started = clock()

    def connecting(self) -> None:
        """A (re)connection attempt starts now; its hello is a read within [now, hello]."""
        self._connect_started = self.clock()

    def sent(self, request: str, base: int, platform: int) -> None:
        """A switch went out; a resend with the same id stays one operation."""
        if request not in self.operations:
            op = Operation(self.tab, request, base, platform, sent=self.clock())
            self.operations[request] = op
            self.user.operations.append(op)

    def received(self, message: dict[str, Any]) -> None:
        now = self.clock()
        kind = message.get("type")
        if kind in {"hello", "state"}:
            state = message["state"]
            if kind == "hello":
                self.connection += 1
                self.user.platforms.update(p["id"] for p in state["platforms"])
                self.user.reads.append(
                    Read(self.tab, self._connect_started, now, state["version"], state["active"])
                )
            self.user.deliveries.append(
                Delivery(
                    self.tab,
                    self.connection,
                    now,
                    state["version"],
                    state["active"],
                    tuple(p["id"] for p in state["platforms"]),
                )
            )
        elif kind in {"switched", "rejected"}:
            op = self.operations.get(message["id"])
            if op is None:
                return
            if op.decided:  # the answer to a resend: check_user compares it with the first
                op.repeats.append(_answer(message))
                return
            # Unanswered so far, or refused without a log row (a resend is decided anew).
            op.answered, op.outcome = now, kind
            op.version = op.active = op.reason = None
            if kind == "switched":
                op.version = message["version"]
            else:
                op.reason = message["reason"]
                if message.get("state"):
                    op.version = message["state"]["version"]
                    op.active = message["state"]["active"]

    def unanswered(self) -> list[Operation]:
        """Switches with no answer yet: after a lost connection, they may or may not be applied."""
        return [op for op in self.operations.values() if op.outcome is None]


def _answer(message: dict[str, Any]) -> Answer:
    """Return the decision a ``switched`` or ``rejected`` frame carries."""
    if message["type"] == "switched":
        return Answer("switched", version=message["version"])
    return Answer("rejected", reason=message["reason"])
