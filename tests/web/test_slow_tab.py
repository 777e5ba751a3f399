"""A tab that stops reading costs bounded memory, holds no one up, and catches up when it reads.

The hub runs in this process (real uvicorn, real sockets) so the slow tab's outbox can be
inspected directly: states coalesce there, newest wins, so it never holds a backlog.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

from websockets.asyncio.client import connect

from server.api import PlatformCreate
from server.storage import platforms
from server.storage.users import user_id_of
from tests.conftest import TIMEOUT, RunningHub, Tab, make_settings, other_platform, serve

SWITCHES = 1000


async def test_a_tab_that_stops_reading_gets_the_newest_state_when_it_reads_again(
    tmp_path: Path,
) -> None:
    # The switching tab may go faster than a person's per-tab rate limit.
    settings = make_settings(tmp_path, messages_per_second=10_000, message_burst=10_000)
    async with serve(settings) as running:
        await _slow_tab_scenario(running)


async def _slow_tab_scenario(running: RunningHub) -> None:
    # Forty more platforms make each state frame about 6 KB, so 1,000 of them are more than
    # the kernel's socket buffers can absorb: the hub must feel the push-back.
    alice = await user_id_of(running.database, "alice")
    assert alice is not None
    for n in range(40):
        extra = PlatformCreate(
            name=f"Extra {n}",
            kind="mastodon",
            instance_url=f"https://extra{n}.example",
            username="alice",
        )
        await platforms.add(running.database, alice, extra)
    token = await running.login("alice")
    switcher = await running.tab(token, "switcher")
    observers = [await running.tab(token, f"observer-{n}") for n in range(3)]

    # The slow tab: a one-frame queue and a fixed 64 KiB receive buffer (set before connecting,
    # so autotuning cannot grow it to tens of MB), so once it stops reading TCP pushes back.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    sock.connect(("127.0.0.1", running.port))
    slow = await connect(
        f"ws://127.0.0.1:{running.port}/ws?tab=slow",
        sock=sock,
        additional_headers={"Authorization": f"Bearer {token}"},
        max_queue=1,
        ping_interval=None,
    )
    hello = json.loads(await slow.recv())
    assert hello["type"] == "hello"
    slow_tab = next(t for t in running.hub.tabs() if t.id == "slow")

    deepest = 0
    state = switcher.hello["state"]
    for n in range(SWITCHES):
        answer = await switcher.switch(f"r{n}", other_platform(state), base=state["version"])
        assert answer["type"] == "switched", answer
        state = {**state, "version": answer["version"], "active": other_platform(state)}
        deepest = max(deepest, len(slow_tab.outbox))
    finished = time.monotonic()

    # Everyone else converges.
    async def catch_up(tab: Tab) -> None:
        while tab.version < SWITCHES:
            await tab.receive()

    await asyncio.wait_for(asyncio.gather(*(catch_up(t) for t in observers)), TIMEOUT)
    converged_s = time.monotonic() - finished

    # The slow tab's outbox stayed at most one state deep and replaced many unsent ones.
    assert deepest <= 1
    assert slow_tab.outbox.coalesced > 0
    # /metrics' hub_states_coalesced_total reads this: the live tabs' counts and the gone's.
    assert running.hub.coalesced() >= slow_tab.outbox.coalesced

    # Reading again, it gets the newest state, in strictly increasing versions.
    versions = [hello["state"]["version"]]
    async with asyncio.timeout(TIMEOUT * 4):
        while versions[-1] < SWITCHES:
            message = json.loads(await slow.recv())
            if message["type"] == "state":
                assert message["state"]["version"] > versions[-1], (versions[-1], message)
                versions.append(message["state"]["version"])
    assert len(versions) - 1 < SWITCHES  # states were coalesced, not queued
    print(
        f"\nslow tab: {SWITCHES} switches, {len(versions) - 1} states delivered to it, "
        f"{slow_tab.outbox.coalesced} coalesced; observers converged {converged_s:.3f} s "
        "after the last switch"
    )
    await slow.close()
