"""The host app's side of a load: platform changes and holds through the host API, recorded.

While tabs switch (tests/support/load.py), ``HostChanges`` renames users' platforms and
places and releases holds through the host API of whichever hub process answers (as a host
app behind the same proxy would), and records each call's window and answer in the same
History, for tests/support/history.py's checker: a rename is a write of its own version, a
hold a window in which no switch may be accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence

from platform_hub_client import AsyncHostClient, HostApiError, PlatformUpdate
from tests.support.recording import Change, History, HoldWindow

__all__ = ["HostChanges"]

HOLD_TTL_S = 5.0  # a hold whose release was never answered ends by then
CALL_TIMEOUT_S = 5.0
# After a call whose answer was lost, it may still land for about this long (the hub gives up
# on the database after its timeout, but a commit already sent can land later): the user is
# left alone until then, so no late release or placement blurs a later window.
UNSURE_S = CALL_TIMEOUT_S + HOLD_TTL_S + 1.0


class HostChanges:
    """Rename platforms and hold switches of ``users`` through any of ``urls``."""

    def __init__(
        self,
        history: History,
        urls: Sequence[str],
        api_key: str,
        users: dict[int, tuple[str, tuple[int, ...]]],  # id -> (name, platform ids)
        *,
        seed: int = 2,
    ) -> None:
        self.history, self.urls, self.api_key, self.users = history, list(urls), api_key, users
        self.random = random.Random(seed)
        self.counts: dict[str, int] = {}
        self._renames = 0
        self._hosts: dict[str, AsyncHostClient] = {}
        self._unsure_until: dict[int, float] = {}
        # Per platform, the renames answered (version, name), and those never answered.
        self._named: dict[int, list[tuple[int, str]]] = {}
        self._unsure_names: set[int] = set()

    async def run(self, stop: asyncio.Event, hold_share: float = 0.3) -> dict[str, int]:
        """Make changes one after another until ``stop`` is set; return what was done."""
        async with contextlib.AsyncExitStack() as stack:
            for url in self.urls:
                client = AsyncHostClient(url, self.api_key, timeout=CALL_TIMEOUT_S)
                self._hosts[url] = await stack.enter_async_context(client)
            while not stop.is_set():
                now = time.monotonic()
                sure = [u for u in sorted(self.users) if self._unsure_until.get(u, 0) <= now]
                if not sure:
                    await asyncio.sleep(0.1)
                    continue
                user = self.random.choice(sure)
                if self.random.random() < hold_share:
                    await self._hold(user)
                else:
                    await self._rename(user)
        return self.counts

    async def _call(self, make: str, user: int, *args: object) -> tuple[float, object | None]:
        """Call the host API through a random process, and the others while one is
        unreachable (nothing was sent); return when it was sent and the answer, or None
        when the call failed after sending (it may have been applied)."""
        name = self.users[user][0]
        for url in self.random.sample(self.urls, len(self.urls)):
            sent = time.monotonic()
            try:
                return sent, await getattr(self._hosts[url], make)(name, *args)
            except HostApiError as error:
                if error.code == "unreachable":
                    continue
                self._count(f"{make}: {error.code}")
                self._unsure_until[user] = time.monotonic() + UNSURE_S
                return sent, None
        self._count(f"{make}: no process answered")
        return time.monotonic(), None

    async def _rename(self, user: int) -> None:
        self._renames += 1
        platform = self.random.choice(self.users[user][1])
        change = PlatformUpdate(name=f"Renamed {self._renames}")
        sent, answer = await self._call("change_platform", user, platform, change)
        recorded = Change(f"rename {self._renames}", sent)
        if answer is None:
            self._unsure_names.add(platform)
        else:
            state = answer.state  # type: ignore[attr-defined]
            recorded.answered, recorded.version, recorded.active = (
                time.monotonic(),
                state.version,
                state.active,
            )
            self._named.setdefault(platform, []).append((state.version, change.name or ""))
            self._count("renamed")
        self.history.user(user).changes.append(recorded)

    async def _hold(self, user: int) -> None:
        placing, answer = await self._call("hold", user, "a job", HOLD_TTL_S)
        returned = time.monotonic()
        hold = HoldWindow(placing, returned if answer is not None else float("inf"))
        self.history.user(user).holds.append(hold)
        await asyncio.sleep(0.05)
        # Released until a process answers, so the window closes for the checker. The hold is
        # surely in force only until the first release was sent (an unanswered one may have
        # been applied) or its TTL ran out.
        hold.releasing = placing + HOLD_TTL_S
        while time.monotonic() < placing + HOLD_TTL_S:
            releasing, answer = await self._call("release", user)
            hold.releasing = min(hold.releasing, releasing)
            if answer is not None:
                hold.released = time.monotonic()
                if hold.placed == float("inf"):  # a lost placement may land after this
                    hold.released = max(hold.released, returned + UNSURE_S)
                self._count("held and released")
                return
            await asyncio.sleep(0.1)
        hold.released = returned + UNSURE_S  # its TTL ended it, however late it landed

    async def lost_renames(self, url: str) -> list[str]:
        """Compare each renamed platform's stored name, read through ``url``, with its last
        acknowledged rename (a platform with a rename never answered is left out)."""
        lost = []
        async with AsyncHostClient(url, self.api_key, timeout=CALL_TIMEOUT_S) as host:
            for name, platforms in self.users.values():
                stored = {p.id: p.name for p in (await host.platforms(name)).platforms}
                for platform in platforms:
                    named = self._named.get(platform)
                    if not named or platform in self._unsure_names:
                        continue
                    last = max(named)[1]
                    if stored.get(platform) != last:
                        lost.append(f"platform {platform}: {stored.get(platform)!r}, not {last!r}")
        return lost

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
