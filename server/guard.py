"""A deadline for a connection's request headers, which uvicorn lacks (slowloris).

uvicorn's keep-alive timeout only runs between requests: a client that opens a connection and
never finishes its request (or its WebSocket handshake) holds it forever. The protocol below
is uvicorn's httptools protocol with a timer from the connection (and from each new request)
to the end of its headers; past it, the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["with_header_deadline"]

logger = logging.getLogger("hub.guard")


def with_header_deadline(seconds: float) -> type[asyncio.Protocol]:
    """Return uvicorn's HTTP protocol with a ``seconds`` deadline for each request's headers."""

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._deadline is None:
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.cycle is None or self.cycle.response_complete:
                # No request under way, or it never finished its headers: drop it.
                client: Any = self.client
                logger.info("closing %s: no complete request within %.1f s", client, seconds)
                self.transport.close()

    return HeaderDeadlineProtocol
