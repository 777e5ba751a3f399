"""A tab's outbox: bounded, coalescing and monotonic."""

from __future__ import annotations

import asyncio

from server.outbox import Outbox


async def drain(outbox: Outbox) -> list[object]:
    items = []
    while len(outbox):
        items.append(await outbox.get())
    return items


async def test_newer_state_replaces_older_unsent_state() -> None:
    """Queued states coalesce to the newest; replies keep their order."""
    outbox = Outbox(8)
    outbox.put_state(1, "s1")
    outbox.put("reply-a")
    outbox.put_state(2, "s2")
    outbox.put_state(3, "s3")
    assert await drain(outbox) == ["reply-a", "s3"]
    assert outbox.coalesced == 2


async def test_states_never_go_backwards() -> None:
    """A state at or below the newest queued or sent version is dropped."""
    outbox = Outbox(8)
    outbox.put_state(5, "s5")
    assert await outbox.get() == "s5"
    outbox.put_state(4, "s4")
    outbox.put_state(5, "s5-again")
    outbox.put_state(6, "s6")
    assert await drain(outbox) == ["s6"]


async def test_hello_goes_first_and_drops_what_it_covers() -> None:
    """The hello jumps ahead of queued states and removes those not newer than itself."""
    outbox = Outbox(8)
    outbox.put_state(3, "s3")
    outbox.put_state(4, "s4")
    outbox.put_state(3, "hello3", first=True)
    assert await drain(outbox) == ["hello3", "s4"]
    outbox.put_state(9, "s9")
    outbox.put_state(9, "hello9", first=True)
    assert await drain(outbox) == ["hello9"]


async def test_a_newer_state_never_replaces_the_unsent_hello() -> None:
    """A state newer than the queued hello goes after it: the hello is always the first frame."""
    outbox = Outbox(8)
    outbox.put_state(2, "hello2", first=True)
    outbox.put_state(3, "s3")
    outbox.put_state(4, "s4")
    assert await drain(outbox) == ["hello2", "s4"]


async def test_outbox_is_bounded_and_close_waits_behind_frames() -> None:
    """Past its size the outbox refuses frames; a close keeps or drops what is queued."""
    outbox = Outbox(2)
    assert outbox.put("a") and outbox.put("b")
    assert not outbox.put("c")
    outbox.close(4002, "abuse", drop=False)
    first, second, closing = await outbox.get(), await outbox.get(), await outbox.get()
    assert (first, second) == ("a", "b")
    assert (closing.code, closing.reason) == (4002, "abuse")  # type: ignore[union-attr]

    dropped = Outbox(4)
    dropped.put("a")
    dropped.close(4001, "session logout", "ended")
    assert await dropped.get() == "ended"
    assert (await dropped.get()).code == 4001  # type: ignore[union-attr]


async def test_get_waits_for_a_frame() -> None:
    """A writer waiting on an empty outbox wakes when a frame arrives."""
    outbox = Outbox(2)
    waiting = asyncio.create_task(outbox.get())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    outbox.put("x")
    assert await asyncio.wait_for(waiting, 1) == "x"
