"""server/rules.py: the switch decision and the default rule, without a database or a hub."""

from __future__ import annotations

import dataclasses

import pytest

from server.protocol import PlatformView, RejectReason, SessionEndReason, StateView, Switch
from server.rules import (
    NO_PLATFORMS,
    Accepted,
    Logged,
    Platforms,
    Refused,
    Seen,
    SessionGone,
    active_platform,
    decide,
    default_platform,
)

# Rows as storage reads them: (id, user id, name, kind, url, username, active, default,
# external id).
ROWS = [
    (1, 7, "Pixelfed", "pixelfed", "https://pixelfed.social", "alice", True, False, "p-1"),
    (2, 7, "Mastodon", "mastodon", "https://mastodon.social", "alice", True, True, None),
    (3, 7, "Old", "mastodon", "https://old.example", "alice", False, False, None),
]
PLATFORMS = Platforms.of(ROWS)
SEEN = Seen(
    session_ended=None,
    version=4,
    stored=1,
    has_state=True,
    platforms=PLATFORMS,
    hold_reason=None,
    logged=None,
)


def view(id_: int, *, default: bool = False) -> PlatformView:
    return PlatformView(
        id=id_, name=f"p{id_}", kind="pixelfed", instance_url="https://x.example", username="u",
        is_default=default,
    )  # fmt: skip


def test_the_default_rule_is_the_first_default_else_the_first_active() -> None:
    """default_platform picks the first default, else the first platform, else none."""
    assert default_platform([view(1), view(2, default=True), view(3, default=True)]) == 2
    assert default_platform([view(4), view(5)]) == 4
    assert default_platform([]) is None


def test_the_active_platform_is_the_stored_choice_only_once_switched_and_while_active() -> None:
    """Version 0 and a stored choice that is no longer active both fall back to the default."""
    active = [view(1), view(2, default=True)]
    assert active_platform(3, 1, active) == 1
    assert active_platform(0, 1, active) == 2
    assert active_platform(3, 9, active) == 2
    assert active_platform(3, None, []) is None


def test_platforms_digest_splits_active_and_inactive_and_applies_the_default_rule() -> None:
    """Only active platforms are shown; the fallback is the default; the state follows."""
    assert [p.id for p in PLATFORMS.views] == [1, 2]
    assert [p.external_id for p in PLATFORMS.views] == ["p-1", None]
    assert (PLATFORMS.active, PLATFORMS.inactive) == (frozenset({1, 2}), frozenset({3}))
    assert PLATFORMS.fallback == 2
    assert PLATFORMS.state(4, 1) == StateView(version=4, active=1, platforms=PLATFORMS.views)
    assert PLATFORMS.state(0, 1).active == 2
    assert PLATFORMS.state(4, 3).active == 2  # deactivated: the default rule again
    assert NO_PLATFORMS.state(0, None) == StateView(version=0, active=None, platforms=())


def test_a_switch_from_the_current_version_makes_the_next_one() -> None:
    """Accepted at version + 1 with the target active, to be logged and broadcast."""
    decision = decide(Switch(id="r", platform=2, base=4), SEEN)
    assert decision == Accepted(
        StateView(version=5, active=2, platforms=PLATFORMS.views), 5, changed=True
    )


def test_a_switch_to_the_active_platform_is_a_logged_no_op() -> None:
    """No new version, but a decision the log remembers."""
    decision = decide(Switch(id="r", platform=1, base=4), SEEN)
    assert decision == Accepted(PLATFORMS.state(4, 1), 4, changed=False, record=True)


@pytest.mark.parametrize(
    ("platform", "base", "reason"),
    [
        (2, 3, RejectReason.STALE),
        (2, 5, RejectReason.STALE),
        (3, 4, RejectReason.INACTIVE_PLATFORM),
        (99, 4, RejectReason.UNKNOWN_PLATFORM),
        (99, 3, RejectReason.UNKNOWN_PLATFORM),  # the platform is checked before the base
    ],
)
def test_refusals_carry_the_current_state(platform: int, base: int, reason: RejectReason) -> None:
    """Stale, inactive and unknown are refused with the state as it is, and logged."""
    decision = decide(Switch(id="r", platform=platform, base=base), SEEN)
    assert decision == Refused(reason, PLATFORMS.state(4, 1), record=True)


def test_a_user_without_a_state_row_is_never_switched() -> None:
    """Without the row there is no version to move: stale."""
    seen = dataclasses.replace(SEEN, version=0, has_state=False)
    assert decide(Switch(id="r", platform=2, base=0), seen) == Refused(
        RejectReason.STALE, PLATFORMS.state(0, 1)
    )


def test_an_ended_session_wins_over_everything() -> None:
    """Expired, logged out or revoked: nothing is decided, whatever else holds."""
    seen = dataclasses.replace(
        SEEN,
        session_ended=SessionEndReason.EXPIRED,
        hold_reason="captioning",
        logged=Logged(None, 4),
    )
    assert decide(Switch(id="r", platform=2, base=4), seen) == SessionGone(SessionEndReason.EXPIRED)


def test_a_logged_request_gets_its_decision_again_and_is_not_logged_twice() -> None:
    """A retry replays the first decision, even one that is stale by now, or during a hold."""
    seen = dataclasses.replace(SEEN, version=9, logged=Logged(None, 5), hold_reason="job")
    assert decide(Switch(id="r", platform=2, base=4), seen) == Accepted(
        PLATFORMS.state(9, 1), 5, record=False
    )
    seen = dataclasses.replace(SEEN, logged=Logged(RejectReason.STALE, 3))
    assert decide(Switch(id="r", platform=2, base=4), seen) == Refused(
        RejectReason.STALE, PLATFORMS.state(4, 1), record=False
    )


def test_a_hold_refuses_as_busy_and_is_not_remembered() -> None:
    """Busy names the hold's reason and is not logged, so a retry later is decided afresh."""
    seen = dataclasses.replace(SEEN, hold_reason="captioning")
    assert decide(Switch(id="r", platform=2, base=4), seen) == Refused(
        RejectReason.BUSY, PLATFORMS.state(4, 1), detail="captioning", record=False
    )
