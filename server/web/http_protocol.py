"""The HTTP guard uvicorn lacks: deadlines, bounded headers and a cap on connections.

Slowloris: uvicorn's keep-alive timeout only runs between requests, so a client that opens a
connection and never finishes its request (its headers, its body or its WebSocket handshake)
holds it forever. `BoundedHttpProtocol` is uvicorn's httptools protocol with a deadline on
each request's headers and on the whole request, limits on header size and count, and a cap
on open connections. Its WebSocket twin is server/web/websocket_protocol.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.api import ErrorBody
from server.protocol import ErrorCode, encode
from server.settings import Settings

__all__ = ["BoundedHttpProtocol", "served_settings"]

logger = logging.getLogger("hub.guard")


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol with a deadline on each request and bounds on what it may hold.

    - **Deadlines.** A request must finish its headers within ``handshake_timeout_s`` (else
      its connection is closed without an answer) and its body within ``request_timeout_s``
      of its start (else it is answered 408 and closed): a client trickling a body a byte
      at a time holds nothing for long.
    - **Headers.** More than ``max_header_bytes`` before the headers end, or more than
      ``max_headers`` of them, is answered 431 before the app sees the request.
    - **Connections.** Past ``max_connections`` open connections (HTTP and WebSocket
      together), a new one is answered 503 at once, before any work: the process keeps the
      descriptors its database and its live tabs need.

    - **Answers mid-body.** A 408 here or a 413 from the app, answered while the body is
      still arriving, goes out with a FIN, and the rest is drained for up to ``linger_s``
      before the close: closing on unread bytes resets the connection, and the client may
      lose the answer.

    Each answer is the hub's usual JSON error body, with ``connection: close``. The limits
    are the served app's settings (its lifespan state carries them), or the defaults before
    the app has started. A module-level class, named by import string, so worker processes
    (``hub serve --workers``) can load it. Request bodies are bounded in ``server/web/bodies.py``.
    """

    defaults = Settings()
    linger_s = 2.0  # how long a refused connection is drained before it is closed
    _deadline: asyncio.TimerHandle | None = None
    _begun = 0.0
    _receiving = False  # from a request's first byte to its last
    _header_bytes = 0  # received since the current request's headers began
    _header_count = 0
    _refused = False
    _pending: tuple[int, ErrorCode, str] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > (most := _max_connections(self._settings())):
            # Once a second at most: a flood of connections is not a flood of log lines.
            now, last = self.loop.time(), self.app_state.get("hub.refused_logged", -math.inf)
            if now - last >= 1:
                self.app_state["hub.refused_logged"] = now
                logger.warning("refusing connections: %d open, the limit is %d", most, most)
            message = "The hub has too many connections; retry."
            self._refuse(503, ErrorCode.UNAVAILABLE, message, linger=False)
            return
        self._arm(self._settings().handshake_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._receiving or self.cycle is None or self.cycle.scope is not self.scope:
            self._header_bytes += len(data)  # the headers of a request not yet complete
        super().data_received(data)
        settings = self._settings()
        if self._refused or not self._receiving:
            return
        if self._header_bytes > settings.max_header_bytes and not self._headers_done():
            self._refuse(431, ErrorCode.TOO_LARGE, "The request headers are too large.")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._receiving = True
        self._header_count = 0
        self._begun = self.loop.time()
        if self._deadline is None:
            self._arm(self._settings().handshake_timeout_s)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        settings = self._settings()
        if self._header_count > settings.max_headers:
            # httptools turns an exception in a callback into a parser error, which uvicorn
            # answers with send_400_response: that answers this refusal instead.
            self._pending = (431, ErrorCode.TOO_LARGE, "The request has too many headers.")
            raise _Refusal
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        if self._pending is not None:
            self._refuse(*self._pending)
        else:
            self._refuse(400, ErrorCode.BAD_REQUEST, msg)

    def on_headers_complete(self) -> None:
        self._header_bytes = 0
        settings = self._settings()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > settings.max_header_bytes:  # arrived in one read, so not counted above
            self._pending = (431, ErrorCode.TOO_LARGE, "The request headers are too large.")
            raise _Refusal
        left = settings.request_timeout_s - (self.loop.time() - self._begun)
        self._arm(max(0.0, left))
        super().on_headers_complete()
        if self.cycle is not None:
            # The app may answer before the body is in (413): closing then drains, as below.
            self.cycle.transport = cast(asyncio.Transport, _AnswerFirst(self))

    def on_message_complete(self) -> None:
        self._receiving = False
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        # The WebSocket protocol owns the connection from here; its handshake is answered.
        self._receiving = False
        self._disarm()
        super().handle_websocket_upgrade()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _headers_done(self) -> bool:
        return self.cycle is not None and self.cycle.scope is self.scope

    def _settings(self) -> Settings:
        return served_settings(self.app_state)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, seconds: float) -> None:
        self._deadline = None
        if self.cycle is not None and not self.cycle.response_complete and not self._receiving:
            return  # received whole; the app is answering
        client: Any = self.client
        if self._receiving and self._headers_done():
            logger.info("closing %s: the request's body did not arrive in time", client)
            if not self.cycle or not self.cycle.response_started:
                self._refuse(408, ErrorCode.TIMEOUT, "The request did not arrive in time.")
                return
        else:
            # Headers unfinished: nothing says this is an HTTP client; close without a word.
            logger.info("closing %s: no complete request within %.1f s", client, seconds)
        self.transport.close()

    def _refuse(self, status: int, code: ErrorCode, message: str, *, linger: bool = True) -> None:
        """Answer with an error body and close, whatever the request's state.

        A connection refused for the cap closes at once: it must give its descriptor back,
        and it has sent nothing worth draining yet.
        """
        self._refused = True
        self._disarm()
        if self.cycle is not None and not self.cycle.response_complete:
            # The app must not write after this answer: it sees a disconnect instead.
            self.cycle.response_complete = self.cycle.disconnected = True
            self.cycle.message_event.set()
        if not self.transport.is_closing():
            body = encode(ErrorBody(error=code, message=message)).encode()
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                "content-type: application/json\r\n"
                f"content-length: {len(body)}\r\n"
                "connection: close\r\n\r\n"
            )
            self.transport.write(head.encode() + body)
            if linger:
                self._linger()
            else:
                self.transport.close()

    def close_after_answer(self) -> None:
        """Close once the app's answer is out: draining first if the body is still arriving."""
        if self._receiving and not self.transport.is_closing():
            self._refused = True  # what still arrives is not parsed
            self._disarm()
            self._linger()
        else:
            self.transport.close()

    def _linger(self) -> None:
        """Close after the answer without losing it, as nginx's lingering close does.

        Closing a socket with unread bytes in it (a body still arriving) sends a reset, and
        the peer's kernel may drop the answer it has not yet read: a client trickling a body
        saw its connection reset instead of its 408. So send the answer and a FIN, discard
        what still arrives (`data_received` ignores it once refused), and close when the peer
        does or after ``linger_s``, whichever is first: a bounded wait, at no memory cost.
        """
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()  # drain even if the app had paused reading
        self._deadline = self.loop.call_later(self.linger_s, self.transport.close)


class _AnswerFirst:
    """The transport as a request's cycle sees it, closing through `close_after_answer`."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: BoundedHttpProtocol) -> None:
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._protocol.transport, name)

    def close(self) -> None:
        self._protocol.close_after_answer()


class _Refusal(Exception):
    """Raised from a parser callback to stop parsing (the protocol holds the answer)."""


_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def served_settings(app_state: dict[str, Any]) -> Settings:
    """The served app's settings (its lifespan state carries them), or the defaults before
    the app has started."""
    settings = app_state.get("settings")
    return settings if isinstance(settings, Settings) else BoundedHttpProtocol.defaults


def _max_connections(settings: Settings) -> int:
    if settings.max_connections:
        return settings.max_connections
    # Keep a hundred descriptors for the database, log files and the listener.
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, soft - 100) if soft != resource.RLIM_INFINITY else 1_000_000
