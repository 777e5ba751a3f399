"""The WebSocket guard uvicorn lacks: bounded, lean connections, and a restart's window.

- Floods: uvicorn's sans-I/O WebSocket protocol parses every byte a read returns (up to 256
  KiB, thousands of small frames in one go, with the loop blocked), and after the app closes
  a connection it keeps reading and parsing whatever the peer sends for up to 10 s while it
  waits for the close reply. A flooding tab made the hub parse millions of frames it would
  never look at. `BoundedWebSocketProtocol` parses only as fast as the app reads, and drops
  a peer that keeps sending after the close instead of answering it.
- Memory: a tab lives for hours, mostly idle, and there may be 10,000 on a process. uvicorn
  gives each connection an `asyncio.Queue` and an `asyncio.Event` (four deques, 3.7 KiB
  together) and keeps the handshake's parsed headers (2.6 KiB) for the connection's life.
  `BoundedWebSocketProtocol` uses a one-reader mailbox and a plain flag instead, and empties
  the handshake's headers once the response is out.
- Restarts: the 1012 that closes each tab on SIGTERM says within how long to come back (the
  process's connections at ``reconnect_rate``), so a restart's tabs return spread over that
  window, not all in the same second.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any, cast

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol as _SansIO
from websockets.protocol import State

from server.limits import TokenBucket
from server.protocol import CloseCode, restart_reason
from server.web.http_protocol import served_settings
from server.web.mailbox import Flag, Mailbox

__all__ = ["PROTOCOL_EXTENSION", "BoundedWebSocketProtocol"]

# The scope extension under which BoundedWebSocketProtocol hands itself to the endpoint.
PROTOCOL_EXTENSION = "hub.protocol"

logger = logging.getLogger("hub.guard")


class BoundedWebSocketProtocol(_SansIO):
    """uvicorn's sans-I/O WebSocket protocol, parsing no faster than the app reads.

    Received bytes wait unparsed while the app has a message it has not taken, and are fed
    to the parser a slice at a time, so what a peer sends ahead of the app costs memory for
    one read (reading is paused meanwhile), not the parsing of every frame in it. After the
    app's close, only ``after_close_bytes`` more are read in wait of the peer's close reply;
    a peer that sends more than that is not answering, and its connection is dropped.
    It keeps no more per connection than an idle tab needs (see the module's docstring).
    """

    slice_bytes = 4096
    after_close_bytes = 65536

    # Set by the endpoint once the tab has joined: its rate limit, which each control frame
    # (ping, pong) takes a token of, and what to do when the connection holds too much
    # unsent. Until then, a bucket of the connection's own.
    admit_control: Callable[[], bool] | None = None
    on_overflow: Callable[[], None] | None = None
    # Set by the endpoint while it decides on the handshake: cancelled if the peer leaves
    # before the answer (then ``peer_gone``).
    handshake_task: asyncio.Task[Any] | None = None
    peer_gone = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = served_settings(self.app_state)
        self._max_unsent = settings.max_unsent_bytes
        self._close_timeout = settings.close_timeout_s
        self._abort_timer: asyncio.TimerHandle | None = None
        self._bucket = TokenBucket(settings.messages_per_second, settings.message_burst)
        self._excess = 0
        self._max_excess = settings.max_bad_messages
        self.queue = Mailbox()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]
        self.writable.set()
        self._unparsed = b""  # received, not yet parsed: from self._offset on
        self._offset = 0
        self._read_after_close = 0

    def data_received(self, data: bytes) -> None:
        if self._offset:
            self._unparsed, self._offset = self._unparsed[self._offset :], 0
        if self.close_sent:
            self._read_after_close += len(data)
            if self._read_after_close > self.after_close_bytes:
                self.transport.close()  # stops reading now; our close frame still goes out
                self._abort_later()
                return
            data, self._unparsed = self._unparsed + data, b""
            super().data_received(data)
            return
        self._unparsed += data
        self._feed()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        undecided = not self.handshake_complete  # uvicorn marks it complete below
        super().connection_lost(exc)
        if undecided:
            # The peer left before its handshake was answered: stop the endpoint's reads
            # for it. A flood of handshakes reset at once (a thousand a second) otherwise
            # left as many tasks reading for no one, and legitimate hellos waited behind
            # them for 20 s. The endpoint ends quietly (``peer_gone``).
            self.peer_gone = True
            if self.handshake_task is not None:
                self.handshake_task.cancel()

    def shutdown(self) -> None:
        # As uvicorn's, but the 1012 says within how long to come back (restart_reason).
        if self.close_sent or not self.handshake_complete or self.initial_response is not None:
            super().shutdown()
            return
        self.stop_keepalive()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1012})
        rate = served_settings(self.app_state).reconnect_rate
        # Within (this process's connections / rate) s: uvicorn shuts them all down in one
        # go, and each leaves the set only later, so every tab is told the same window.
        reason = restart_reason(math.ceil(1000 * len(self.connections) / rate)) if rate else ""
        self.conn.send_close(CloseCode.SERVICE_RESTART, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()

    def _abort_later(self) -> None:
        # uvicorn closes gracefully after its close timeout (10 s), and a graceful close
        # waits for the transport's buffer to drain: from a peer that reads nothing, forever,
        # holding the buffer and the descriptor. Past the hub's close deadline, drop it.
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        if self._abort_timer is None:
            self._abort_timer = self.loop.call_later(self._close_timeout, self.transport.abort)

    def handle_ping(self) -> None:
        # websockets has queued the pong already: write it only within the rate limit, and
        # only while the peer reads. A peer that sends pings and reads nothing made the hub
        # buffer every pong (120 MiB of pings: 360 MiB held, still held after its close).
        admitted = self._admit()
        unsent = self.transport.get_write_buffer_size()
        if admitted and unsent <= self._max_unsent and not self.transport.is_closing():
            super().handle_ping()
            return
        self.conn.data_to_send()  # dropped: this ping goes unanswered
        if unsent > self._max_unsent and self.on_overflow is not None:
            self.on_overflow()

    def handle_pong(self, event: Any) -> None:
        self._admit()  # counted like any frame; unsolicited pongs are ignored
        super().handle_pong(event)

    def _admit(self) -> bool:
        if self.admit_control is not None:
            return self.admit_control()  # the tab's limit, which closes a flooder (4002)
        # Before the tab has joined (its session and state are being read), the connection's
        # own bucket; a peer that floods past it then is dropped.
        if not self.handshake_complete:
            return False  # nothing may be written before the handshake's response
        if self._bucket.take():
            self._excess = 0
            return True
        self._excess += 1
        if self._excess > self._max_excess and not self.transport.is_closing():
            logger.info("dropping %s: control frames past the rate limit", self.client)
            self.transport.abort()
        return False

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        if self.handshake_initiated and not self.close_sent:
            # For send_text_now; the endpoint takes it out of the scope at once.
            extensions = cast(dict[str, Any], self.scope["extensions"])
            extensions[PROTOCOL_EXTENSION] = self

    def send_text_now(self, data: str) -> bool:
        """Write a text frame now if the connection takes it without waiting; else False.

        Through ASGI, each frame costs a message dict, Starlette's checks and three
        coroutines, and a tab's writer a task; a broadcast's frames almost always go to
        connections whose buffers are empty (measured in docs/performance.md). A paused
        transport (its buffer above the high-water mark) or a closing connection says False,
        and the caller queues the frame for its writer, which awaits send().
        """
        if (
            not self.writable.is_set()
            or self.close_sent
            or self.conn.state is not State.OPEN
            or self.transport.is_closing()
        ):
            return False
        self.conn.send_text(data.encode())
        self.transport.write(b"".join(self.conn.data_to_send()))
        return True

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.close" and self.close_sent:
            self._abort_later()
        if self.handshake_complete and self.request is not None:
            # The handshake's request and response (websockets' header structures, 2.6 KiB a
            # tab) are not needed once the response is out. Emptied, not just dropped: the
            # parser's generator keeps the request as a local for the connection's life.
            self.request.headers.clear()
            self.response.headers.clear()
            self.request = self.response = None  # type: ignore[assignment]

    async def receive(self) -> Any:
        message = await super().receive()
        if self._unparsed and not self.read_paused and not self.close_sent:
            self._feed()
        return message

    def _feed(self) -> None:
        # Parse a slice at a time until the app has a message waiting (uvicorn then pauses
        # reading and sets read_paused) or nothing is left.
        while self._unparsed and not self.read_paused and not self.close_sent:
            start, end = self._offset, self._offset + self.slice_bytes
            data = self._unparsed[start:end]
            if end >= len(self._unparsed):
                self._unparsed, self._offset = b"", 0
            else:
                self._offset = end
            super().data_received(data)
            if self.transport.is_closing():
                return
