"""A Transport for tests of the hub without sockets: it keeps every frame, decoded whole."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from server.protocol import ServerMessage, decode_server

__all__ = ["RecordingTransport"]


class RecordingTransport:
    """The hub's Transport (server/tab.py), keeping what a tab was sent, in order.

    ``takes_at_once``: whether ``send_now`` takes each frame, as an idle connection does, or
    refuses it, so that the hub's writer task carries every frame to ``send_text``.
    Each frame is decoded with ``protocol.decode_server`` as it comes: a frame that is not a
    whole server message fails the test that caused it.
    """

    def __init__(self, *, takes_at_once: bool = True) -> None:
        self.takes_at_once = takes_at_once
        self.messages: list[ServerMessage] = []
        self.closed: int | None = None  # the close code, once closed (1006: aborted)
        self.sent = asyncio.Event()  # set at each frame

    @property
    def frames(self) -> list[dict[str, Any]]:
        """The messages as plain JSON objects, for asserting on whole messages as dicts."""
        return [msgspec.to_builtins(message) for message in self.messages]

    async def send_text(self, data: str) -> None:
        self._record(data)

    def send_now(self, data: str) -> bool:
        if self.takes_at_once:
            self._record(data)
        return self.takes_at_once

    async def close(self, code: int, reason: str) -> None:
        self.closed = code

    def abort(self) -> None:
        self.closed = self.closed or 1006

    def _record(self, data: str) -> None:
        self.messages.append(decode_server(data))
        self.sent.set()
