"""create_app(settings): routes, lifespan and thin HTTP and WebSocket endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from server import __version__, logs
from server.db import Clock, Database, utcnow
from server.errors import AuthenticationError, HubError, Overloaded, StoreUnavailable
from server.hub import Hub, TabLimitReached
from server.limits import LoginThrottle
from server.logs import log_config, redact_secrets
from server.protocol import (
    PLATFORMS_CAUSE,
    CloseCode,
    ErrorCode,
    LoginRequest,
    PlatformCreate,
    PlatformList,
    PlatformUpdate,
    Rejected,
    RejectReason,
    SessionEndReason,
    SessionInfo,
    SessionView,
    StateResponse,
    Switch,
    UserInfo,
    decode_body,
    encode,
)
from server.settings import Settings
from server.storage import backplane, platforms, sessions
from server.storage.sessions import LoginSession, format_time
from server.storage.switches import SqlStore
from server.tab import Tab, TransportClosed
from server.web import host_api as host
from server.web import tasks
from server.web.bodies import BodyLimit
from server.web.hosts import HostCheck, allowed_hosts, host_allowed
from server.web.metrics import CONTENT_TYPE, Metrics
from server.web.paths import route
from server.web.responses import (
    error_response,
    http_error_response,
    hub_error_response,
    json_response,
    retry_later,
)
from server.web.security_headers import SecurityHeaders
from server.web.uvicorn_protocols import (
    PROTOCOL_EXTENSION,
    BoundedHttpProtocol,
    BoundedWebSocketProtocol,
)

__all__ = ["COOKIE", "create_app", "uvicorn_config"]

COOKIE = "hub_session"


def _client_dir() -> Path:
    """client/ of a source checkout, else the copy an installed package carries."""
    package = Path(__file__).resolve().parent.parent
    source = package.parent / "client"
    if (source / "navigation.js").is_file():
        return source
    return package / "_client"


CLIENT_DIR = _client_dir()
_TAB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

_REJECT_STATUS = {
    RejectReason.STALE: 409,
    RejectReason.INACTIVE_PLATFORM: 409,
    RejectReason.UNKNOWN_PLATFORM: 404,
    RejectReason.RATE_LIMITED: 429,
    RejectReason.UNAVAILABLE: 503,
    RejectReason.BAD_REQUEST: 422,
    RejectReason.BUSY: 423,
}


def create_app(settings: Settings, *, clock: Clock = utcnow) -> Starlette:
    """Build the hub's ASGI app; the database, hub and background tasks live in its lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        database = Database(settings, clock=clock)
        try:
            await database.prepare_schema(upgrade=settings.upgrade_schema)
        except BaseException:
            await database.dispose()
            raise
        store = SqlStore(database)
        hub = Hub(
            store,
            heartbeat_s=settings.heartbeat_s,
            idle_timeout_s=settings.idle_timeout_s,
            max_tabs_per_user=settings.max_tabs_per_user,
            messages_per_second=settings.messages_per_second,
            message_burst=settings.message_burst,
            max_bad_messages=settings.max_bad_messages,
            outbox_size=settings.outbox_size,
            close_timeout_s=settings.close_timeout_s,
        )
        metrics = Metrics()
        hub.on_switch = metrics.switched
        database.on_late_commit = hub.resync_soon
        store.commits.on_commit = metrics.committed
        listener = backplane.listener_for(
            settings.database_url,
            database.origin,
            hub.apply,
            hub.resync,
            backoff_s=settings.backplane_backoff_s,
        )
        if listener is not None:
            listener.on_lag = metrics.backplane_lag.observe
        app.state.database, app.state.hub, app.state.listener = database, hub, listener
        metrics.watch(
            tabs=lambda: len(hub.tabs()),
            sessions=lambda: len(hub.session_ids()),
            checked_out=database.checked_out,
            coalesced=hub.coalesced,
            slow_closed=lambda: hub.slow_closed,
            sessions_ended=lambda: hub.sessions_ended,
            reconnects=(lambda: listener.reconnects) if listener is not None else None,
        )
        login_throttle = LoginThrottle(
            settings.login_failure_rate,
            settings.login_failure_burst,
            concurrency=settings.login_concurrency,
        )
        background = [
            asyncio.create_task(tasks.watch_forever(database, hub), name="session-watcher"),
            asyncio.create_task(
                tasks.collect_forever(database, on_collect=metrics.collected),
                name="session-collector",
            ),
        ]
        if listener is not None:
            background.append(asyncio.create_task(listener.run_forever(), name="backplane"))
            # Serve once listening: a tab that joins earlier could miss a notification.
            await asyncio.wait_for(listener.connected.wait(), settings.backplane_connect_s)
        try:
            yield {
                "database": database,
                "hub": hub,
                "settings": settings,
                "listener": listener,
                "metrics": metrics,
                "login_throttle": login_throttle,
            }
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await hub.close(CloseCode.SERVICE_RESTART)
            await hub.store.close()
            await database.dispose()

    routes = [
        Route("/", _index),
        Route("/healthz", _healthz),
        Route("/livez", _livez),
        Route("/metrics", _metrics),
        Route("/api/login", _login, methods=["POST"]),
        Route("/api/logout", _logout, methods=["POST"]),
        Route("/api/logout-all", _logout_all, methods=["POST"]),
        Route("/api/session/extend", _extend, methods=["POST"]),
        Route("/api/state", _state),
        Route("/api/switch", _switch, methods=["POST"]),
        route("/api/platforms", GET=_platforms_list, POST=_platforms_add),
        route("/api/platforms/{platform:id}", PATCH=_platforms_change, DELETE=_platforms_remove),
        # Under uvicorn_config, _FrontDoor serves /ws before Starlette sees it; the route
        # keeps the app whole under any other ASGI server.
        WebSocketRoute("/ws", _websocket),
        Mount("/client", StaticFiles(directory=CLIENT_DIR), name="client"),
        *host.routes(),
    ]
    # Pages of the allowed origins (HUB_ALLOWED_ORIGINS: a host app's, say) may call the HTTP
    # API from their own origin, cookie included (navigation.js's `api` option); the origin
    # checks of the endpoints still apply. The WebSocket needs no CORS.
    middleware = [
        Middleware(HostCheck, settings=settings),
        Middleware(SecurityHeaders),
        Middleware(BodyLimit, max_bytes=settings.max_body_bytes),
        Middleware(
            CORSMiddleware,
            allow_origins=list(settings.allowed_origins),
            allow_credentials=True,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["content-type"],
        ),
    ]
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error_response, HubError: hub_error_response},
    )


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
            await _websocket(WebSocket(scope, receive, send))
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
    }
    options.update(overrides)
    served = app if isinstance(app, str) else _FrontDoor(app, options.get("root_path", ""))
    config = uvicorn.Config(served, **options)  # configures uvicorn's log handlers
    redact_secrets("uvicorn", "uvicorn.error", "uvicorn.access")
    return config


# HTTP endpoints.


async def _index(request: Request) -> Response:
    return FileResponse(CLIENT_DIR / "index.html")


async def _healthz(request: Request) -> Response:
    """Readiness: can this process serve? It reads and writes the database (a write that
    changes nothing) within readiness_timeout_s; 503 with the reason when it cannot."""
    database: Database = request.state.database
    settings: Settings = request.state.settings
    try:
        async with asyncio.timeout(settings.readiness_timeout_s):
            await database.write_sync(_probe)
    except StoreUnavailable as error:
        return _health(request, 503, "unavailable", str(error))
    except TimeoutError:
        reason = f"The database did not answer within {settings.readiness_timeout_s:g} s."
        return _health(request, 503, "unavailable", reason)
    except Exception as error:  # disk full, read-only file, a lost WAL: the engine's words
        return _health(request, 503, "unavailable", f"{type(error).__name__}: {error}"[:300])
    return _health(request, 200, "ok")


async def _livez(request: Request) -> Response:
    """Liveness: the process and its event loop answer. It never touches the database, so a
    database outage does not get every process restarted."""
    return _health(request, 200, "ok")


def _health(request: Request, code: int, status: str, reason: str | None = None) -> Response:
    database: Database = request.state.database
    hub: Hub = request.state.hub
    body: dict[str, Any] = {
        "status": status,
        "version": __version__,
        "tabs": len(hub.tabs()),
        "pid": os.getpid(),  # which process answered: several serve one port with --workers
        # Pool hygiene at a glance: 0 whenever no unit of work is running.
        "connections_checked_out": database.checked_out(),
    }
    if reason is not None:
        body["reason"] = reason
    listener: backplane.Listener | None = request.state.listener
    if listener is not None:
        body["backplane"] = {
            "listening": listener.connected.is_set(),
            "reconnects": listener.reconnects,
            "backend_pid": listener.backend_pid,
        }
    return Response(encode(body), status_code=code, media_type="application/json")


def _probe(connection: Any) -> None:
    # A write that changes nothing, to the one row every hub database has: it needs the
    # write lock, a writable file and room in the WAL, as every switch does.
    connection.exec_driver_sql("UPDATE alembic_version SET version_num = version_num")


async def _metrics(request: Request) -> Response:
    metrics: Metrics = request.state.metrics
    return Response(metrics.exposition(), media_type=CONTENT_TYPE)


async def _login(request: Request) -> Response:
    if not _origin_allowed(request, by_cookie=False):
        return _forbidden_origin()
    database: Database = request.state.database
    throttle: LoginThrottle = request.state.login_throttle
    address = request.client.host if request.client else None
    body = decode_body(await request.body(), LoginRequest)
    # Charged before the password is checked, whatever it is, and refunded if it is right:
    # concurrent guesses meet the limit as sequential ones do, and a throttled guesser
    # learns nothing.
    if (wait := throttle.charge(body.username, address)) > 0:
        return retry_later(
            429,
            ErrorCode.RATE_LIMITED,
            f"Too many failed logins; try again in {math.ceil(wait)} s.",
            wait,
        )
    try:
        async with throttle.checking():
            token, login = await sessions.log_in(
                database,
                body.username,
                body.password,
                user_agent=request.headers.get("user-agent"),
                ip=address,
            )
    except AuthenticationError as error:
        return error_response(401, ErrorCode.INVALID_CREDENTIALS, str(error))
    except (Overloaded, StoreUnavailable):
        throttle.refund(body.username, address)  # not a guess that was checked
        raise
    throttle.refund(body.username, address)
    hub: Hub = request.state.hub
    for displaced in login.displaced:
        hub.end_session(displaced, SessionEndReason.REVOKED)
    response = json_response(200, _session_view(login))
    settings: Settings = request.state.settings
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(settings.session_absolute_s),
        path="/",
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure,
    )
    return response


async def _logout(request: Request) -> Response:
    return await _end_sessions(request, everywhere=False)


async def _logout_all(request: Request) -> Response:
    return await _end_sessions(request, everywhere=True)


async def _end_sessions(request: Request, *, everywhere: bool) -> Response:
    if not _origin_allowed(request):
        return _forbidden_origin()
    database: Database = request.state.database
    hub: Hub = request.state.hub
    login = await sessions.authenticate(database, _token(request), touch=False)
    if everywhere:
        ended = await sessions.revoke_all(database, login.user_id, SessionEndReason.LOGOUT)
    else:
        await sessions.revoke(database, login.id, SessionEndReason.LOGOUT)
        ended = [login.id]
    tabs = sum(hub.end_session(session_id, SessionEndReason.LOGOUT) for session_id in ended)
    response = json_response(200, {"sessions": len(ended), "tabs": tabs})
    response.delete_cookie(COOKIE, path="/")
    return response


async def _extend(request: Request) -> Response:
    if not _origin_allowed(request):
        return _forbidden_origin()
    database: Database = request.state.database
    hub: Hub = request.state.hub
    login = await sessions.authenticate(database, _token(request), touch=False)
    extended = await sessions.extend(database, login)
    if extended is None:
        raise AuthenticationError("expired", "The session ended meanwhile.")
    hub.extend_session(extended.id, format_time(extended.expires_at))
    return json_response(200, _session_view(extended))


async def _state(request: Request) -> Response:
    database: Database = request.state.database
    hub: Hub = request.state.hub
    login = await sessions.authenticate(database, _token(request))
    state = await hub.store.load_state(login.user_id)
    hold = await hub.store.load_hold(login.user_id)
    body = StateResponse(
        user=UserInfo(id=login.user_id, name=login.user_name),
        state=state,
        session=SessionInfo(expires_at=format_time(login.expires_at)),
        hold=hold,
    )
    return json_response(200, body)


async def _switch(request: Request) -> Response:
    if not _origin_allowed(request):
        return _forbidden_origin()
    database: Database = request.state.database
    hub: Hub = request.state.hub
    login = await sessions.authenticate(database, _token(request))
    switch = decode_body(await request.body(), Switch)
    reply = await hub.switch(login.user_id, login.id, switch)
    if reply is None:
        raise AuthenticationError("expired", "The session ended.")
    if isinstance(reply, Rejected):
        return json_response(_REJECT_STATUS[reply.reason], reply)
    return json_response(200, reply)


# Platform management (server/storage/platforms.py): every change reaches the user's tabs.


async def _platforms_list(request: Request) -> Response:
    database: Database = request.state.database
    login = await sessions.authenticate(database, _token(request))
    return json_response(200, await platforms.listing(database, login.user_id))


async def _platforms_add(request: Request) -> Response:
    async def work(database: Database, user_id: int) -> PlatformList:
        body = decode_body(await request.body(), PlatformCreate)
        return await platforms.add(database, user_id, body)

    return await _platform_change(request, work, created=True)


async def _platforms_change(request: Request) -> Response:
    async def work(database: Database, user_id: int) -> PlatformList:
        body = decode_body(await request.body(), PlatformUpdate)
        return await platforms.change(database, user_id, request.path_params["platform"], body)

    return await _platform_change(request, work)


async def _platforms_remove(request: Request) -> Response:
    async def work(database: Database, user_id: int) -> PlatformList:
        return await platforms.remove(database, user_id, request.path_params["platform"])

    return await _platform_change(request, work)


async def _platform_change(
    request: Request,
    work: Callable[[Database, int], Awaitable[PlatformList]],
    *,
    created: bool = False,
) -> Response:
    if not _origin_allowed(request):
        return _forbidden_origin()
    database: Database = request.state.database
    hub: Hub = request.state.hub
    login = await sessions.authenticate(database, _token(request))
    changed = await work(database, login.user_id)
    hub.publish(login.user_id, changed.state, PLATFORMS_CAUSE)
    return json_response(201 if created else 200, changed)


# The WebSocket endpoint.


class _Transport:
    """Adapt a Starlette WebSocket to the hub's Transport, with one error for a lost link."""

    __slots__ = ("_protocol", "_websocket")

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket
        # Under uvicorn_config, the connection's protocol writes frames without ASGI.
        self._protocol: BoundedWebSocketProtocol | None = websocket.scope.get("extensions", {}).pop(
            PROTOCOL_EXTENSION, None
        )

    def send_now(self, data: str) -> bool:
        return self._protocol is not None and self._protocol.send_text_now(data)

    def guard(self, tab: Tab) -> None:
        """Count the connection's control frames against the tab's rate limit."""
        if self._protocol is not None:
            self._protocol.admit_control = tab.admit
            self._protocol.on_overflow = tab.overflowed

    def abort(self) -> None:
        if self._protocol is not None:
            self._protocol.transport.abort()

    async def send_text(self, data: str) -> None:
        try:
            await self._websocket.send_text(data)
        except (WebSocketDisconnect, RuntimeError, OSError) as error:
            raise TransportClosed(str(error)) from error

    async def close(self, code: int, reason: str) -> None:
        try:
            await self._websocket.close(code, reason)
        except (WebSocketDisconnect, RuntimeError, OSError) as error:
            raise TransportClosed(str(error)) from error


async def _websocket(websocket: WebSocket) -> None:
    database: Database = websocket.state.database
    hub: Hub = websocket.state.hub
    if not host_allowed(websocket.headers, allowed_hosts(websocket.state.settings)):
        denial = error_response(400, ErrorCode.FORBIDDEN_HOST, "Not served under that host.")
        await websocket.send_denial_response(denial)
        return
    if not _origin_allowed(websocket):
        await websocket.send_denial_response(_forbidden_origin())
        return
    tab_id = websocket.query_params.get("tab") or secrets.token_urlsafe(12)
    if not _TAB_ID.fullmatch(tab_id):
        problem = "The tab id must be 1 to 64 characters from A-Z, a-z, 0-9, _ and -."
        await websocket.send_denial_response(error_response(400, ErrorCode.BAD_REQUEST, problem))
        return
    try:
        login = await sessions.authenticate(database, _token(websocket))
    except (AuthenticationError, StoreUnavailable) as error:
        # Before the accept, in the HTTP endpoints' words (Starlette's handlers do not apply).
        await websocket.send_denial_response(hub_error_response(websocket, error))
        return

    # Everything this connection logs from here names it (uvicorn's "[accepted]" included).
    logs.bind(tab=tab_id, user=login.user_id, session=login.id)
    if (wait := hub.cooldown(login.id)) > 0:
        await asyncio.sleep(wait)  # a tab of this session was just closed for flooding
    await websocket.accept()
    transport = _Transport(websocket)
    try:
        tab = await hub.join(
            transport,
            tab_id=tab_id,
            user=UserInfo(id=login.user_id, name=login.user_name),
            session_id=login.id,
            expires_at=format_time(login.expires_at),
        )
    except TabLimitReached as error:
        await websocket.close(CloseCode.TAB_LIMIT, str(error))
        return
    except StoreUnavailable:
        await websocket.close(CloseCode.TRY_AGAIN_LATER, "database unavailable")
        return
    transport.guard(tab)
    # The handshake's headers (1 KiB) are read before the accept and never again; the tab
    # may stay for hours. Emptied in place: Starlette's cached Headers shares the list.
    websocket.scope["headers"].clear()
    try:
        # Only this loop reads; the tab's writer task sends. No database session is held
        # here between messages: each switch is its own unit of work.
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            await hub.receive(tab, text if text is not None else message.get("bytes") or b"")
            if tab.closing:
                # Read no more from a tab being closed (abuse, flood, replaced, session
                # ended): what it still sends waits in TCP, so a flooder costs nothing
                # more, while its writer sends what is queued and the close.
                await hub.drain(tab)
                break
    finally:
        await hub.leave(tab)


# Helpers of the endpoints.


def _origin_allowed(connection: HTTPConnection, *, by_cookie: bool = True) -> bool:
    """Tell whether the request's Origin may use the hub; ``by_cookie`` false for a request
    that a cookie cannot authenticate (a login)."""
    origin = connection.headers.get("origin")
    if origin is None and not by_cookie:
        return True
    if origin is None:
        # Browsers send an Origin with every WebSocket handshake and every request that
        # changes state; a cookie without one is not from a page, and nothing here can vouch
        # for it. A client that is not a browser presents its session as a bearer token.
        return not _uses_cookie(connection)
    settings: Settings = connection.state.settings
    if origin in settings.allowed_origins:
        return True
    scheme = {"ws": "http", "wss": "https"}.get(connection.url.scheme, connection.url.scheme)
    return origin == f"{scheme}://{connection.headers.get('host', '')}"


def _token(connection: HTTPConnection) -> str | None:
    authorization = connection.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    return connection.cookies.get(COOKIE)


def _uses_cookie(connection: HTTPConnection) -> bool:
    return not connection.headers.get("authorization") and COOKIE in connection.cookies


def _session_view(login: LoginSession) -> SessionView:
    return SessionView(
        user=UserInfo(id=login.user_id, name=login.user_name),
        expires_at=format_time(login.expires_at),
    )


def _forbidden_origin() -> Response:
    return error_response(403, ErrorCode.FORBIDDEN_ORIGIN, "This origin may not use the hub.")
