"""The history checker: it accepts what a correct hub can produce and catches planted bugs.

Random histories come from a simulated register whose switches take effect at random instants
inside their windows, so they are linearizable by construction, and they come with the switch
log the hub would keep (no-ops at their base) and resends answered as the first time. Mutations
plant bugs. On small histories the linear-time check and the brute-force search must always
agree, and the switch log never hides a bug.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.history import brute_force, check, check_user
from tests.support.recording import (
    Answer,
    Change,
    Delivery,
    History,
    HoldWindow,
    Operation,
    Read,
    TabRecorder,
    UserHistory,
)

PLATFORMS = (1, 2, 3)


@dataclass
class Planned:
    """An event of the simulation: its window and the instant it takes effect."""

    start: int
    length: int
    offset: int  # where in the window it takes effect
    kind: str  # "switch" or "read"
    platform: int
    stale_by: int  # a switch's base is this many versions behind its moment, at most
    answered: bool
    resent: bool  # resent with the same id after its answer

    @property
    def point(self) -> float:
        # Distinct instants: ties broken by the start, a fraction apart.
        return self.start + min(self.offset, self.length) + self.start / 1000


planned = st.builds(
    Planned,
    start=st.integers(0, 20),
    length=st.integers(0, 8),
    offset=st.integers(0, 8),
    kind=st.sampled_from(["switch", "switch", "read"]),
    platform=st.sampled_from(PLATFORMS),
    stale_by=st.integers(0, 2),
    answered=st.booleans(),
    resent=st.booleans(),
)


def simulate(events: list[Planned]) -> UserHistory:
    """Run a correct versioned compare-and-set register; record what clients would see."""
    user = UserHistory(user=1, platforms=set(PLATFORMS), initial_active=1, log={})
    assert user.log is not None
    version, active = 0, 1
    for number, event in enumerate(sorted(events, key=lambda e: e.point)):
        end = float(event.start + event.length)
        if event.kind == "read":
            user.reads.append(Read("t", float(event.start), end, version, active))
            continue
        base = max(0, version - event.stale_by)
        op = Operation("t", f"r{number}", base, event.platform, sent=float(event.start))
        if base == version and event.platform == active:
            op.outcome, op.version = "switched", version  # already active: a no-op
        elif base == version:
            version, active = version + 1, event.platform
            op.outcome, op.version = "switched", version
        else:
            op.outcome, op.reason, op.version, op.active = "rejected", "stale", version, active
        if op.outcome == "switched":
            user.log[op.request] = op.version
        if event.answered:
            op.answered = end
            if event.resent and op.answer:
                op.repeats.append(op.answer)
        else:
            op.outcome = op.version = op.active = op.reason = None
        user.operations.append(op)
    user.final = (version, active)
    return user


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(planned, min_size=1, max_size=6))
def test_correct_histories_pass_both_checkers(events: list[Planned]) -> None:
    user = simulate(events)
    assert check_user(user) == []
    assert check_user(bare(user)) == []
    assert brute_force(user)


def bare(user: UserHistory) -> UserHistory:
    """Return a copy without what brute_force does not judge: the switch log and resends."""
    user = copy.deepcopy(user)
    user.log = None
    for op in user.operations:
        op.repeats.clear()
    return user


MUTATIONS = [
    "version",
    "read",
    "reorder",
    "final",
    "platform",
    "duplicate",
    "answer",
    "forget_write",
]


def mutate(user: UserHistory, how: str, pick: int, amount: int) -> UserHistory:
    """Plant one bug (or a harmless change) in a copy of the history."""
    user = copy.deepcopy(user)
    answered = [op for op in user.operations if op.outcome is not None]
    if how == "version" and answered:
        op = answered[pick % len(answered)]
        op.version = max(0, (op.version or 0) + amount)
    elif how == "read" and user.reads:
        read = user.reads[pick % len(user.reads)]
        read.version = max(0, read.version + amount)
    elif how == "reorder" and answered:
        op = answered[pick % len(answered)]
        op.sent, op.answered = op.sent + 10 * amount, (op.answered or 0) + 10 * amount
        op.sent, op.answered = min(op.sent, op.answered), max(op.sent, op.answered)
    elif how == "final" and user.final:
        user.final = (max(0, user.final[0] + amount), user.final[1])
    elif how == "platform" and answered:
        op = answered[pick % len(answered)]
        op.platform = PLATFORMS[(PLATFORMS.index(op.platform) + 1) % len(PLATFORMS)]
    elif how == "duplicate" and answered:
        twin = copy.deepcopy(answered[pick % len(answered)])
        twin.request += "-twin"
        user.operations.append(twin)
    elif how == "answer" and user.operations:
        op = user.operations[pick % len(user.operations)]
        if op.outcome is None:
            op.outcome, op.answered, op.version = "switched", op.sent + 1, op.base + 1
    elif how == "forget_write" and answered:
        op = answered[pick % len(answered)]
        op.outcome = op.version = op.active = op.reason = op.answered = None
    return user


# A small history, a mutation of it, where, and by how much.
MUTATED = (
    st.lists(planned, min_size=1, max_size=5),
    st.sampled_from(MUTATIONS),
    st.integers(0, 10),
    st.sampled_from([-2, -1, 1, 2]),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(*MUTATED)
def test_the_fast_checker_agrees_with_brute_force(
    events: list[Planned], how: str, pick: int, amount: int
) -> None:
    user = mutate(bare(simulate(events)), how, pick, amount)
    assert (check_user(user) == []) == brute_force(user), check_user(user)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(*MUTATED)
def test_the_switch_log_never_hides_a_bug(
    events: list[Planned], how: str, pick: int, amount: int
) -> None:
    user = mutate(simulate(events), how, pick, amount)
    if not brute_force(bare(user)):
        assert check_user(user) != []


def switch(
    request: str, base: int, platform: int, sent: float, answered: float, version: int
) -> Operation:
    return Operation(
        "t", request, base, platform, sent, answered, outcome="switched", version=version
    )


def two_writes() -> UserHistory:
    return UserHistory(
        user=1,
        platforms={1, 2},
        initial_active=1,
        operations=[switch("a", 0, 2, 0, 1, 1), switch("b", 1, 1, 2, 3, 2)],
        final=(2, 1),
    )


def test_planted_duplicated_version_is_caught() -> None:
    user = two_writes()
    user.operations[1] = switch("b", 0, 1, 2, 3, 1)
    user.final = (1, 2)
    assert any("acknowledged twice" in v for v in check_user(user))
    assert not brute_force(user)


def test_planted_lost_acknowledged_write_is_caught() -> None:
    user = two_writes()
    user.final = (1, 2)  # the database lost version 2, acknowledged to b
    assert any("beyond the final version" in v for v in check_user(user))
    assert not brute_force(user)


def test_planted_regression_is_caught() -> None:
    user = two_writes()
    user.deliveries = [
        Delivery("t", 1, 1.5, 1, 2, (1, 2)),
        Delivery("t", 1, 3.5, 2, 1, (1, 2)),
        Delivery("t", 1, 4.0, 1, 2, (1, 2)),
    ]
    assert any("went from version 2 to 1" in v for v in check_user(user))


def test_planted_stale_read_in_the_wrong_order_is_caught() -> None:
    user = two_writes()
    # Sent after b was acknowledged at version 2, yet told the current version is 1.
    late = Operation("u", "c", 0, 2, 5, 6, "rejected", version=1, active=2, reason="stale")
    user.operations.append(late)
    assert any("not linearizable" in v for v in check_user(user))
    assert not brute_force(user)


def test_cross_user_delivery_and_a_tab_left_behind_are_caught() -> None:
    alice, bob = two_writes(), UserHistory(user=2, platforms={7}, initial_active=7, final=(0, 7))
    alice.deliveries = [Delivery("t", 1, 3.5, 2, 1, (1, 2, 7))]
    bob.deliveries = [Delivery("b", 1, 0.5, 0, 7, (7,))]
    alice.open_tabs = {"t"}
    bob.open_tabs = {"b"}
    history = History(users={1: alice, 2: bob})
    report = check(history)
    assert any("other users' platforms {7}" in v for v in report.violations)
    assert report.summary().startswith("1 violations")

    behind = two_writes()
    behind.deliveries = [Delivery("t", 1, 1.5, 1, 2, (1, 2))]
    behind.open_tabs = {"t"}
    assert any("ends on (1, 2)" in v for v in check_user(behind))


def test_the_switch_log_must_match_the_answers() -> None:
    user = two_writes()
    user.log = {"a": 1, "b": 2}
    assert check_user(user) == []
    user.log = {"a": 1, "b": 2, "c": 3}
    assert any("switch log holds versions" in v for v in check_user(user))
    user.operations.append(
        Operation("t", "c", 0, 2, 4, 5, "rejected", version=2, active=1, reason="stale")
    )
    assert any("c was rejected but the log has it" in v for v in check_user(user))


def test_the_recorder_turns_frames_into_a_checkable_history() -> None:
    ticks = iter(range(100))
    history = History()
    tab = TabRecorder(history, user=1, tab="t1", clock=lambda: float(next(ticks)))
    platforms = [{"id": 1}, {"id": 2}]
    tab.received({"type": "hello", "state": {"version": 0, "active": 1, "platforms": platforms}})
    tab.sent("r1", 0, 2)
    tab.sent("r1", 0, 2)  # a resend: the same operation
    tab.received({"type": "switched", "id": "r1", "version": 1})
    tab.received({"type": "state", "state": {"version": 1, "active": 2, "platforms": platforms}})
    tab.sent("r2", 0, 1)
    tab.received(
        {
            "type": "rejected",
            "id": "r2",
            "reason": "stale",
            "message": "...",
            "state": {"version": 1, "active": 2, "platforms": platforms},
        }
    )
    tab.sent("r3", 1, 1)
    assert [op.request for op in tab.unanswered()] == ["r3"]
    user = history.user(1)
    user.final, user.open_tabs = (1, 2), {"t1"}
    report = check(history)
    assert report.ok, report.violations
    assert (report.operations, report.acknowledged, report.rejected, report.unanswered) == (
        3,
        1,
        1,
        1,
    )
    assert brute_force(user)


# No-op switches (to the platform already active, from the current base) are answered
# `switched` at the unchanged version and logged there: reads, not writes.


def with_noops() -> UserHistory:
    """Two writes and three no-ops, one of them unanswered but in the switch log."""
    user = two_writes()
    user.operations += [
        switch("z", 0, 1, 0, 0.5, 0),  # platform 1 is active at version 0
        Operation("t", "m", 1, 2, 1.5),  # lost: the log says it was a no-op at version 1
        switch("n", 2, 1, 4, 5, 2),  # platform 1 is active at version 2
    ]
    user.log = {"a": 1, "b": 2, "z": 0, "m": 1, "n": 2}
    return user


def test_a_correct_history_with_noops_in_the_log_passes() -> None:
    user = with_noops()
    assert check_user(user) == []
    assert brute_force(user)
    history = History(users={1: user})
    report = check(history)
    assert report.ok and (report.acknowledged, report.noops, report.unanswered) == (4, 2, 1)


def test_planted_noop_showing_a_platform_not_active_at_its_base_is_caught() -> None:
    user = with_noops()
    user.operations[-1] = switch("n", 2, 2, 4, 5, 2)  # version 2 shows platform 1, not 2
    assert any("version 2 shows platform 2" in v for v in check_user(user))
    assert not brute_force(user)


def test_planted_noop_read_out_of_its_versions_window_is_caught() -> None:
    user = with_noops()
    # Sent after b was acknowledged at version 2, yet a no-op at version 0.
    user.operations[2] = switch("z", 0, 1, 3.5, 4, 0)
    assert any("not linearizable at version 1" in v for v in check_user(user))
    assert not brute_force(user)


def test_planted_duplicated_version_alongside_noops_is_caught() -> None:
    user = with_noops()
    user.operations.append(switch("c", 1, 1, 2.5, 3.5, 2))  # a second real write of version 2
    assert user.log is not None
    user.log["c"] = 2
    problems = check_user(user)
    assert any("version 2 acknowledged twice (b and c)" in v for v in problems)
    assert any("switch log holds versions [1, 2, 2]" in v for v in problems)
    assert not brute_force(user)


def test_planted_lost_write_alongside_noops_is_caught() -> None:
    user = with_noops()
    user.final = (1, 2)  # the database lost version 2, acknowledged to b
    assert user.log is not None
    del user.log["b"]
    problems = check_user(user)
    assert any("beyond the final version" in v for v in problems)
    assert any("b acknowledged at 2, logged at None" in v for v in problems)
    assert not brute_force(user)


def test_the_log_must_hold_noops_at_their_base() -> None:
    user = with_noops()
    assert user.log is not None
    user.log["n"] = 3  # a no-op logged as if it had written version 3
    problems = check_user(user)
    assert any("n acknowledged at 2, logged at 3" in v for v in problems)
    assert any("switch log holds versions [1, 2, 3]" in v for v in problems)

    user = with_noops()
    assert user.log is not None
    del user.log["z"]
    assert any("z acknowledged at 0, logged at None" in v for v in check_user(user))

    # A lost switch the log has at its base was a no-op: its platform was the active one.
    user = with_noops()
    user.operations[3] = Operation("t", "m", 1, 1, 1.5)  # version 1 shows platform 2
    assert any("version 1 shows platform 1" in v for v in check_user(user))


def test_with_the_log_a_lost_switch_not_in_it_wrote_nothing() -> None:
    user = with_noops()
    user.operations[1] = Operation("t", "b", 1, 1, 2)  # b's answer was lost
    assert check_user(user) == []  # the log has b at version 2: b wrote it
    assert user.log is not None
    del user.log["b"]
    assert any("no switch could have written version 2" in v for v in check_user(user))


def test_a_resend_must_get_the_first_decision_again() -> None:
    user = with_noops()
    user.operations[0].repeats.append(Answer("switched", version=1))
    user.operations[2].repeats.append(Answer("switched", version=0))
    # Refused before the log was read (the database locked): no decision, nothing to compare.
    user.operations[2].repeats.append(Answer("rejected", reason="unavailable"))
    assert check_user(user) == []
    user.operations[2].repeats.append(Answer("switched", version=1))  # applied on the resend
    assert any("z was switched at 0, then switched at 1 when resent" in v for v in check_user(user))


def test_the_recorder_keeps_noops_and_resends() -> None:
    ticks = iter(range(100))
    history = History()
    tab = TabRecorder(history, user=1, tab="t1", clock=lambda: float(next(ticks)))
    platforms = [{"id": 1}, {"id": 2}]
    tab.received({"type": "hello", "state": {"version": 0, "active": 1, "platforms": platforms}})
    tab.sent("r1", 0, 1)  # platform 1 is active: a no-op
    tab.received({"type": "switched", "id": "r1", "version": 0})
    tab.sent("r1", 0, 1)  # resent after its answer: the same decision again
    tab.received({"type": "switched", "id": "r1", "version": 0})
    tab.sent("r2", 0, 2)
    tab.received({"type": "switched", "id": "r2", "version": 1})
    tab.received({"type": "state", "state": {"version": 1, "active": 2, "platforms": platforms}})
    tab.sent("r3", 1, 1)
    refused = {"type": "rejected", "id": "r3", "reason": "unavailable", "message": "..."}
    tab.received(refused)
    tab.sent("r3", 1, 1)  # no log row for "unavailable": the resend is decided anew
    tab.received({"type": "switched", "id": "r3", "version": 2})
    tab.received({"type": "state", "state": {"version": 2, "active": 1, "platforms": platforms}})
    user = history.user(1)
    user.final, user.open_tabs = (2, 1), {"t1"}
    user.log = {"r1": 0, "r2": 1, "r3": 2}
    report = check(history)
    assert report.ok, report.violations
    assert (report.acknowledged, report.noops, report.rejected) == (3, 1, 0)
    assert tab.operations["r1"].repeats == [Answer("switched", version=0)]

    tab.received({"type": "rejected", "id": "r2", "reason": "stale", "message": "..."})
    assert any("r2 was switched at 1, then rejected (stale)" in v for v in check_user(user))


def with_a_change() -> UserHistory:
    """Switch a writes 1, a platform change writes 2 (active stays 2), switch b writes 3."""
    user = UserHistory(
        user=1,
        platforms={1, 2},
        initial_active=1,
        operations=[switch("a", 0, 2, 0, 1, 1), switch("b", 2, 1, 4, 5, 3)],
        changes=[Change("rename 1", sent=2, answered=3, version=2, active=2)],
        final=(3, 1),
        log={"a": 1, "b": 3},
    )
    user.deliveries = [Delivery("t", 1, 3.5, 2, 2, (1, 2)), Delivery("t", 1, 5.5, 3, 1, (1, 2))]
    return user


def test_a_platform_change_is_a_write_of_its_own() -> None:
    """Its version is in no switch log row, and the history holds."""
    assert check_user(with_a_change()) == []
    assert check_user(bare(with_a_change())) == []


def test_planted_change_and_switch_at_one_version_are_caught() -> None:
    user = with_a_change()
    user.operations[1] = switch("b", 1, 1, 4, 5, 2)  # acknowledged at the change's version
    user.final = (2, 1)
    assert any("written by b and by rename 1" in v for v in check_user(user))


def test_planted_change_out_of_its_window_is_caught() -> None:
    user = with_a_change()
    user.changes[0].sent, user.changes[0].answered = 6, 7  # after b wrote 3 on top of it
    assert any("not linearizable" in v for v in check_user(user))


def test_an_unanswered_change_may_have_written_a_version() -> None:
    """A change whose answer was lost: the version nobody else wrote is its; without it, that
    version has no writer."""
    user = with_a_change()
    user.changes[0].answered = user.changes[0].version = user.changes[0].active = None
    assert check_user(user) == []
    user.changes.clear()
    problems = check_user(user)
    assert any("no switch could have written version 2" in v for v in problems)
    assert any("the switch log holds versions" in v for v in problems)


def test_planted_switch_accepted_during_a_hold_is_caught() -> None:
    user = with_a_change()
    user.holds = [HoldWindow(placing=3.5, placed=3.8, releasing=6.0, released=6.2)]
    assert any("b was accepted at 3 while a hold" in v for v in check_user(user))
    user.holds = [HoldWindow(placing=3.5, placed=4.5, releasing=6.0, released=6.2)]
    assert check_user(user) == []  # placed after b was sent: b may have come first


def test_planted_busy_refusal_with_no_hold_is_caught() -> None:
    user = with_a_change()
    busy = Operation("t", "c", 3, 2, 6, 7, "rejected", version=3, active=1, reason="busy")
    user.operations.append(busy)
    assert any("c was refused busy" in v for v in check_user(user))
    user.holds = [HoldWindow(placing=5.5, placed=6.5, releasing=8.0, released=9.0)]
    assert check_user(user) == []
