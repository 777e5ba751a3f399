"""A tab's outbox: bounded, coalescing and monotonic."""

from __future__ import annotations

from server.outbox import Outbox


def drain(outbox: Outbox) -> list[object]:
    items: list[object] = []
    while len(outbox):
        items.append(outbox.take())
    return items


def test_newer_state_replaces_older_unsent_state() -> None:
    """Queued states coalesce to the newest; replies keep their order."""
    outbox = Outbox(8)
    outbox.put_state(1, "s1")
    outbox.put("reply-a")
    outbox.put_state(2, "s2")
    outbox.put_state(3, "s3")
    assert drain(outbox) == ["reply-a", "s3"]
    assert outbox.coalesced == 2


def test_states_never_go_backwards() -> None:
    """A state at or below the newest queued or sent version is dropped."""
    outbox = Outbox(8)
    outbox.put_state(5, "s5")
    assert outbox.take() == "s5"
    outbox.put_state(4, "s4")
    outbox.put_state(5, "s5-again")
    outbox.put_state(6, "s6")
    assert drain(outbox) == ["s6"]


def test_hello_goes_first_and_drops_what_it_covers() -> None:
    """The hello jumps ahead of queued states and removes those not newer than itself."""
    outbox = Outbox(8)
    outbox.put_state(3, "s3")
    outbox.put_state(4, "s4")
    outbox.put_state(3, "hello3", first=True)
    assert drain(outbox) == ["hello3", "s4"]
    outbox.put_state(9, "s9")
    outbox.put_state(9, "hello9", first=True)
    assert drain(outbox) == ["hello9"]


def test_a_newer_state_never_replaces_the_unsent_hello() -> None:
    """A state newer than the queued hello goes after it: the hello is always the first frame."""
    outbox = Outbox(8)
    outbox.put_state(2, "hello2", first=True)
    outbox.put_state(3, "s3")
    outbox.put_state(4, "s4")
    assert drain(outbox) == ["hello2", "s4"]


def test_outbox_is_bounded_and_close_waits_behind_frames() -> None:
    """Past its size the outbox refuses frames; a close keeps or drops what is queued."""
    outbox = Outbox(2)
    assert outbox.put("a") and outbox.put("b")
    assert not outbox.put("c")
    outbox.close(4002, "abuse", drop=False)
    first, second, closing = outbox.take(), outbox.take(), outbox.take()
    assert (first, second) == ("a", "b")
    assert (closing.code, closing.reason) == (4002, "abuse")  # type: ignore[union-attr]

    dropped = Outbox(4)
    dropped.put("a")
    dropped.close(4001, "session logout", "ended")
    assert dropped.take() == "ended"
    assert (dropped.take()).code == 4001  # type: ignore[union-attr]


def test_the_outbox_calls_on_ready_for_whatever_it_queues() -> None:
    """Each frame or close queued calls on_ready (the tab starts a writer); nothing else does."""
    calls: list[int] = []
    outbox = Outbox(2, lambda: calls.append(len(outbox)))
    assert outbox.take() is None and calls == []
    outbox.put("x")
    outbox.put_state(3, "s3")
    outbox.put_state(2, "s2")  # older: dropped, nothing new to send
    assert calls == [1, 2]
    assert not outbox.put("y")  # full
    assert calls == [1, 2]
    outbox.close(4000, "bye", drop=False)
    assert calls == [1, 2, 2]
    assert drain(outbox) == ["x", "s3"]
    assert outbox.take().code == 4000  # type: ignore[union-attr]


def test_a_newer_presence_replaces_the_unsent_one_and_states_keep_theirs() -> None:
    """Presence coalesces to the newest unsent one, apart from states (each kind keeps its
    newest), and the hello drops a queued presence (its devices are newer). A full outbox
    refuses a presence it cannot replace."""
    outbox = Outbox(3)
    assert outbox.put_presence("p1")
    outbox.put_state(1, "s1")
    assert outbox.put_presence("p2")
    outbox.put_state(2, "s2")
    assert drain(outbox) == ["p2", "s2"]
    outbox.put_presence("p3")
    outbox.put("reply")
    outbox.put_state(3, "hello", first=True)
    assert drain(outbox) == ["hello", "reply"]
    for frame in ("a", "b", "c"):
        outbox.put(frame)
    assert not outbox.put_presence("p4")
    assert drain(outbox) == ["a", "b", "c"]
