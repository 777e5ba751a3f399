"""server/web/uvicorn_protocols.py: the lean WebSocket protocol keeps nothing an idle tab does
not need.

The header deadline and the bounded reads are tested with the hostile input they stop
(tests/test_hostile.py); here, what a live connection keeps, and the small primitives that
replace asyncio's queue and event in it.
"""

from __future__ import annotations

import asyncio
import gc

from server.web.uvicorn_protocols import BoundedWebSocketProtocol, _Flag, _Mailbox
from tests.conftest import TIMEOUT, RunningHub, other_platform


def live_protocols() -> list[BoundedWebSocketProtocol]:
    # type(), not isinstance(): the heap holds dead weak proxies, which isinstance() touches.
    protocols = [o for o in gc.get_objects() if type(o) is BoundedWebSocketProtocol]
    return [
        p
        for p in protocols
        if p.handshake_complete and not p.close_sent and not p.transport.is_closing()
    ]


async def test_an_idle_tab_keeps_no_handshake_headers_and_still_works(
    running: RunningHub,
) -> None:
    """After the handshake, neither uvicorn, websockets' parser nor the scope keeps the
    headers; the tabs then switch and receive as before."""
    token = await running.login("alice")
    tabs = [await running.tab(token, f"t{i}") for i in range(3)]
    protocols = live_protocols()
    assert len(protocols) == 3
    for protocol in protocols:
        assert protocol.request is None and protocol.response is None
        assert protocol.scope["headers"] == []
        # websockets' parser generator keeps the parsed request as a local for good.
        parsed = protocol.conn.parser.gi_frame.f_locals["request"]  # type: ignore[union-attr]
        assert len(parsed.headers) == 0
        assert isinstance(protocol.queue, _Mailbox) and isinstance(protocol.writable, _Flag)
    answer = await tabs[0].switch("after-handshake", other_platform(tabs[0].hello["state"]))
    assert answer["type"] == "switched"
    for tab in tabs[1:]:
        assert (await tab.receive_type("state"))["state"]["version"] == answer["version"]


async def test_the_mailbox_delivers_in_order_and_survives_a_cancelled_reader() -> None:
    """Items come out in order; a reader cancelled while waiting loses nothing."""
    mailbox = _Mailbox()
    assert mailbox.empty() and mailbox.qsize() == 0
    waiting = asyncio.create_task(mailbox.get())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    mailbox.put_nowait("a")
    mailbox.put_nowait("b")
    assert mailbox.qsize() == 2 and not mailbox.empty()
    assert await mailbox.get() == "a"
    reader = asyncio.create_task(mailbox.get())
    assert await asyncio.wait_for(reader, TIMEOUT) == "b"
    assert mailbox.empty()
    late = asyncio.create_task(mailbox.get())
    await asyncio.sleep(0)
    assert not late.done()
    mailbox.put_nowait("c")
    assert await asyncio.wait_for(late, TIMEOUT) == "c"


async def test_the_flag_blocks_writers_until_set() -> None:
    """wait() returns at once while set, and blocks every waiter from clear() to set()."""
    flag = _Flag()
    flag.set()
    assert await asyncio.wait_for(flag.wait(), TIMEOUT)
    flag.clear()
    assert not flag.is_set()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    cancelled = asyncio.create_task(flag.wait())
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in [*waiters, cancelled])
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    flag.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), TIMEOUT) == [True, True, True]
