"""Serving: uvicorn's configuration, the /ws front door, the collector's tuning, workers."""

from __future__ import annotations

import gc
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.websockets import WebSocket

from server.logs import log_config, redact_secrets
from server.settings import Settings
from server.web.app import create_app
from server.web.http_protocol import BoundedHttpProtocol
from server.web.websocket import websocket_endpoint
from server.web.websocket_protocol import BoundedWebSocketProtocol

__all__ = ["app_from_environ", "tune_gc", "uvicorn_config"]


class _FrontDoor:
    """Hand ``/ws`` to the WebSocket endpoint directly, and everything else to Starlette.

    A tab lives for hours, mostly idle. Through Starlette's middleware and router, each one
    kept a chain of nine suspended coroutine frames, wrappers and scope copies: 3.5 KiB a tab
    (tracemalloc, 2,000 idle tabs). The endpoint needs none of them: it answers every error
    itself, and for WebSockets Starlette's error middleware only re-raises.
    """

    __slots__ = ("_path", "app")

    def __init__(self, app: Starlette, root_path: str = "") -> None:
        self.app = app
        self._path = root_path + "/ws"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and scope["path"] == self._path:
            await websocket_endpoint(WebSocket(scope, receive, send))
        else:
            await self.app(scope, receive, send)


def app_from_environ() -> _FrontDoor:
    """Build the app as each worker of ``hub serve --workers`` serves it, from HUB_* variables."""
    tune_gc()
    return _FrontDoor(create_app(Settings.from_environ()))


def tune_gc() -> None:
    """Make the collector's pauses rarer: they are the hub's latency tail.

    With thousands of tabs a full collection walks every object of every connection and
    stopped the loop for 100 to 220 ms (measured with gc.callbacks under bench load); the
    default thresholds ran one every few seconds while tabs connected. Young collections now
    wait for 50,000 net allocations instead of 700, so fewer objects survive into the old
    generation and full collections come rarer; what was imported at start-up is frozen out
    of them. At 1,000 switches/s with 2,500 tabs, p99 went from 26 to 13 ms and the connect
    rate from about 650 to 820 tabs/s (bench/RESULTS.md has the current figures).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def uvicorn_config(app: Starlette | str, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """Return the uvicorn configuration the hub is served with (frame limit, no compression).

    ``app`` is the Starlette app, or the import string of a factory (app_from_environ) for
    worker processes, which wraps the app in _FrontDoor itself.
    """
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "ws_max_size": settings.max_message_bytes,
        "ws_per_message_deflate": False,
        "log_level": settings.log_level,
        "log_config": log_config(settings.log_format, settings.log_level),
        "timeout_graceful_shutdown": settings.shutdown_timeout_s,
        "http": BoundedHttpProtocol,
        "ws": BoundedWebSocketProtocol,
        "lifespan": "on",
        "backlog": settings.accept_backlog,
    }
    options.update(overrides)
    served = app if isinstance(app, str) else _FrontDoor(app, options.get("root_path", ""))
    config = uvicorn.Config(served, **options)  # configures uvicorn's log handlers
    redact_secrets("uvicorn", "uvicorn.error", "uvicorn.access")
    return config
