"""Every rate limit: token buckets, the cooldown after abuse, the failed-login throttle.

Tabs, the HTTP fallback and pings take tokens from buckets; a session whose tab was closed
for abuse waits out a cooldown; failed logins are throttled per name and per address, and
password checks queue behind a semaphore.

Each is kept in memory, per process. With several processes on PostgreSQL the failed-login
throttle and the HTTP switch bucket are also shared (``SharedBuckets``, kept in the database
by server/storage/buckets.py), so an attacker spread across N processes meets one budget, not
N; the in-memory ones stay in front, refusing a flood through one process without a
database round trip. A tab's own rate limit needs no sharing: a tab is on one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from server.errors import Overloaded, StoreUnavailable
from server.protocol import RejectReason

__all__ = [
    "Bucket",
    "Cooldown",
    "HttpSwitchLimit",
    "LoginThrottle",
    "SharedBuckets",
    "TokenBucket",
    "TokenBuckets",
]


@dataclass(frozen=True, slots=True)
class Bucket:
    """One shared limit on one key: ``rate`` tokens a second, at most ``burst`` saved up."""

    key: str
    rate: float
    burst: int


class SharedBuckets(Protocol):
    """Token buckets every process of a database shares (server/storage/buckets.py)."""

    async def take(self, buckets: Sequence[Bucket]) -> float:
        """Take a token from every bucket or from none; return 0 or the seconds to wait."""
        ...

    async def give(self, buckets: Sequence[Bucket]) -> None:
        """Give back a token taken from each bucket."""
        ...


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        """Take a token if there is one; tell whether there was."""
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def give(self) -> None:
        """Put back a token taken for what turned out not to count (never past the burst)."""
        self._refill()
        self.tokens = min(float(self.burst), self.tokens + 1)

    def wait(self) -> float:
        """Return the seconds until a token is there (0 if one is)."""
        self._refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def set_rate(self, rate: float) -> None:
        """Refill at ``rate`` from now on (what was saved up so far stays)."""
        self._refill()
        self.rate = rate

    def full(self) -> bool:
        """Tell whether the bucket has refilled to its burst (a fresh one is no different)."""
        self._refill()
        return self.tokens >= self.burst

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now


class TokenBuckets:
    """A bucket per key, made on first use; full ones are forgotten when the map grows."""

    def __init__(self, rate: float, burst: int, *, most: int = 10_000) -> None:
        self.rate, self.burst, self.most = rate, burst, most
        self._buckets: dict[object, TokenBucket] = {}

    def get(self, key: object) -> TokenBucket:
        """Return the key's bucket, making a full one if it has none."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.most:
                for stale in [k for k, b in self._buckets.items() if b.full()]:
                    del self._buckets[stale]
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
        return bucket

    def __len__(self) -> int:
        return len(self._buckets)


class HttpSwitchLimit:
    """The rate limit of switches over HTTP (POST /api/switch): a bucket per login session
    here and, with several processes, in the buckets they share (``shared``), as a tab's own
    bucket limits its WebSocket, so the fallback is no way around the limit."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._here = TokenBuckets(rate, burst)
        self.shared: SharedBuckets | None = None

    async def refusal(self, session_id: int) -> RejectReason | None:
        """Take a token for a switch: here, then in the shared buckets if any; return why
        not, if not (the token taken here is given back when the shared one refuses, as a
        login's is)."""
        here = self._here.get(session_id)
        if not here.take():
            return RejectReason.RATE_LIMITED
        if self.shared is None:
            return None
        try:
            wait = await self.shared.take([Bucket(f"switch:{session_id}", self.rate, self.burst)])
        except StoreUnavailable:
            here.give()
            return RejectReason.UNAVAILABLE  # the switch would meet the same outage
        if wait > 0:
            here.give()
            return RejectReason.RATE_LIMITED
        return None


class Cooldown:
    """Keys (login sessions) that must wait ``seconds`` before their next try, each from when
    it was last started; only keys still waiting are held."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._until: dict[object, float] = {}

    def start(self, key: object) -> None:
        """Make ``key`` wait ``seconds`` from now (forgetting keys whose wait is over)."""
        now = time.monotonic()
        for done in [k for k, until in self._until.items() if until <= now]:
            del self._until[done]
        self._until[key] = now + self.seconds

    def left(self, key: object) -> float:
        """Return how long ``key`` must still wait (0 if it need not)."""
        until = self._until.get(key)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            del self._until[key]
            return 0.0
        return left


class LoginThrottle:
    """Failed logins, counted per user name and per client address (in this process), and
    the password checks running at once.

    A login is charged before its password is checked and refunded if it succeeds, so
    concurrent guesses meet the same limit as sequential ones: each one takes its token
    before the first has been checked (``charge``, which awaits nothing).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        concurrency: int = 0,
        shared: SharedBuckets | None = None,
    ) -> None:
        self.rate, self.burst, self.shared = rate, burst, shared
        self._names = TokenBuckets(rate, burst)
        self._addresses = TokenBuckets(5 * rate, 5 * burst)
        self.concurrency = concurrency or os.cpu_count() or 1
        self._checks = asyncio.Semaphore(self.concurrency)
        self._waiting = 0

    async def charge(self, name: str, address: str | None) -> float:
        """Charge one login to the name and the address, here and in the shared buckets if
        any; return 0, or the seconds until one may be tried (and then charge nothing).

        The charge here awaits nothing, so concurrent guesses through this process meet
        the limit as sequential ones do; the shared take is atomic in the database.
        """
        wait = self._charge_here(name, address)
        if wait > 0 or self.shared is None:
            return wait
        try:
            wait = await self.shared.take(self._shared(name, address))
        except BaseException:
            self._refund_here(name, address)
            raise
        if wait > 0:
            self._refund_here(name, address)
        return wait

    async def refund(self, name: str, address: str | None, *, shared: bool = True) -> None:
        """Give back what a login was charged (it succeeded, or it was never checked): here,
        and in the shared buckets unless ``shared`` is false (the database just failed: a
        second wait for it would double the answer's time). A shared refund the database
        cannot take is dropped: it only leaves that budget smaller for a while."""
        self._refund_here(name, address)
        if shared and self.shared is not None:
            with contextlib.suppress(StoreUnavailable):
                await self.shared.give(self._shared(name, address))

    def _shared(self, name: str, address: str | None) -> list[Bucket]:
        buckets = [Bucket(f"login-name:{name}", self.rate, self.burst)]
        if address is not None:
            buckets.append(Bucket(f"login-address:{address}", 5 * self.rate, 5 * self.burst))
        return buckets

    def _charge_here(self, name: str, address: str | None) -> float:
        buckets = [self._names.get(name)]
        if address is not None:
            buckets.append(self._addresses.get(address))
        wait = max(bucket.wait() for bucket in buckets)
        if wait > 0:
            return wait
        for bucket in buckets:
            bucket.take()
        return 0.0

    def _refund_here(self, name: str, address: str | None) -> None:
        self._names.get(name).give()
        if address is not None:
            self._addresses.get(address).give()

    @contextlib.asynccontextmanager
    async def checking(self) -> AsyncIterator[None]:
        """Hold one of the password checks that may run at once; raise Overloaded when
        too many logins wait already."""
        if self._checks.locked() and self._waiting >= 8 * self.concurrency:
            raise Overloaded("Too many logins at once; try again in a moment.")
        self._waiting += 1
        try:
            await self._checks.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._checks.release()
