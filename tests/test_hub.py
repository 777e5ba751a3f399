"""The hub's pure parts; its behaviour over real sockets is in test_switch.py and test_app.py."""

from __future__ import annotations

import msgspec

from server.hub import describe
from server.protocol import PlatformView, RejectReason, StateView


def test_rejections_are_described_in_plain_words() -> None:
    """Each reason has a sentence; stale names the platform that won."""
    state = StateView(
        version=3,
        active=7,
        platforms=(
            PlatformView(
                id=7,
                name="Pixelfed",
                kind="pixelfed",
                instance_url="https://p.example",
                username="alice",
                is_default=True,
            ),
        ),
    )
    assert describe(RejectReason.STALE, state) == "Switched to Pixelfed @alice in another tab."
    nothing_active = msgspec.structs.replace(state, active=None)
    assert describe(RejectReason.STALE, nothing_active) == (
        "Another tab changed the active platform first."
    )
    for reason in RejectReason:
        assert describe(reason, None).endswith(".")
