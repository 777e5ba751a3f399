"""Bounded request bodies: no endpoint reads more than ``max_body_bytes``.

Every JSON endpoint reads its whole body before it can authenticate, so without a bound an
outsider decides how much memory a request costs (a 256 MiB body grew the hub by 256 MiB).
``BodyLimit`` is an ASGI middleware in front of every HTTP route: a declared
``Content-Length`` over the limit is answered 413 before the app runs; a chunked body is
counted as it is read, and the read that crosses the limit is answered 413 instead. Either
way the connection is closed (the rest of the body is never read). A client that goes away
mid-upload is logged at INFO and answered nothing: there is no one to answer.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api import ErrorBody
from server.protocol import ErrorCode, encode

__all__ = ["BodyLimit", "BodyTooLarge"]

logger = logging.getLogger("hub.http")


class BodyTooLarge(Exception):
    """A request body crossed the limit while the app read it."""


class BodyLimit:
    """Answer 413 to any request whose body is over ``max_bytes``, before it is all read."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is None:
            await _answer(send, 400, ErrorCode.BAD_REQUEST, "Content-Length is not a number.")
            return
        if declared > self.max_bytes:
            await _answer(send, 413, ErrorCode.TOO_LARGE, self._message())
            return
        received = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, watched_send)
        except BodyTooLarge:
            if not started:
                await _answer(send, 413, ErrorCode.TOO_LARGE, self._message())
        except ClientDisconnect:
            client: Any = scope.get("client")
            logger.info(
                "%s %s: the client left before its body arrived", scope["method"], scope["path"]
            )
            logger.debug("client %s left mid-upload", client)

    def _message(self) -> str:
        return f"The request body is over {self.max_bytes} bytes."


def _content_length(scope: Scope) -> int | None:
    """The declared body length (0 when none is declared), or None if it is malformed."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() and len(text) < 19 else None
    return 0


async def _answer(send: Send, status: int, code: ErrorCode, message: str) -> None:
    body = encode(ErrorBody(error=code, message=message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
