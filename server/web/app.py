"""create_app(settings): the database, hub and background tasks in a lifespan, and the routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from server.db import Clock, Database, utcnow
from server.errors import HubError
from server.hub import Hub
from server.limits import LoginThrottle
from server.protocol import CloseCode
from server.settings import Settings
from server.storage import backplane, feed
from server.storage.buckets import DatabaseBuckets
from server.storage.presence import TabCounts
from server.storage.switches import SqlStore
from server.web import health, host_api, pages, tasks
from server.web.bodies import BodyLimit
from server.web.hosts import HostCheck
from server.web.metrics import Metrics
from server.web.paths import route
from server.web.responses import http_error_response, hub_error_response
from server.web.security_headers import SecurityHeaders
from server.web.websocket import websocket_endpoint

__all__ = ["create_app"]


def create_app(
    settings: Settings, *, clock: Clock = utcnow, schema_ready: bool = False
) -> Starlette:
    """Build the hub's ASGI app; the database, hub and background tasks live in its lifespan.

    The lifespan first prepares the schema (creates it in an empty database, refuses or
    upgrades an outdated one) unless ``schema_ready``: the caller has just done so."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        database = Database(settings, clock=clock)
        try:
            if not schema_ready:
                await database.prepare_schema(upgrade=settings.upgrade_schema)
        except BaseException:
            await database.dispose()
            raise
        metrics = Metrics()
        store = SqlStore(database, on_commit=metrics.committed)
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
        hub.on_switch = metrics.switched
        database.on_late_commit = hub.resync_soon
        listener = backplane.listener_for(
            settings.database_url,
            database.origin,
            hub.apply,
            hub.resync,
            hosted=hub.interest.shards,
            users=hub.interest.users,
            backoff_s=settings.backplane_backoff_s,
        )
        if listener is not None:
            listener.on_lag = metrics.backplane_lag.observe
            hub.interest.on_new = listener.wake
        reader = feed.reader_for(
            settings.database_url,
            database.origin,
            hub.apply,
            hub.resync,
            poll_s=settings.feed_poll_s,
        )
        app.state.database, app.state.hub, app.state.listener = database, hub, listener
        app.state.feed_reader = reader
        metrics.watch(
            tabs=lambda: sum(tab.width for tab in hub.tabs()),
            connections=lambda: len(hub.tabs()),
            sessions=lambda: len(hub.session_ids()),
            checked_out=database.checked_out,
            coalesced=hub.coalesced,
            slow_closed=lambda: hub.slow_closed,
            sessions_ended=lambda: hub.sessions_ended,
            reconnects=(lambda: listener.reconnects) if listener is not None else None,
        )
        # Several processes share a PostgreSQL database: they share the limits too. On
        # SQLite one process serves, and its limits in memory are the whole budget.
        shared = DatabaseBuckets(database) if listener is not None else None
        hub.http_switches.shared = shared
        login_throttle = LoginThrottle(
            settings.login_failure_rate,
            settings.login_failure_burst,
            concurrency=settings.login_concurrency,
            shared=shared,
        )
        background = [
            asyncio.create_task(tasks.watch_forever(database, hub), name="session-watcher"),
            asyncio.create_task(
                tasks.collect_forever(
                    database, on_collect=metrics.collected, buckets=shared is not None
                ),
                name="session-collector",
            ),
            asyncio.create_task(feed.collect_forever(database), name="feed-collector"),
        ]
        if reader is not None:
            background.append(asyncio.create_task(reader.run_forever(), name="feed-reader"))
        # Presence across processes: this process's tab counts, for the others.
        counts = TabCounts(database) if listener is not None else None
        if counts is not None:
            hub.presence.report = counts.report
            counts.on_beat = hub.presence.refresh_elsewhere
            background.append(asyncio.create_task(counts.run_forever(), name="tab-counts"))
        if listener is not None:
            background.append(asyncio.create_task(listener.run_forever(), name="backplane"))
            # Serve once listening: a tab that joins earlier could miss a notification.
            await asyncio.wait_for(listener.connected.wait(), settings.backplane_connect_s)
        try:
            yield {
                "database": database,
                "hub": hub,
                "store": store,
                "settings": settings,
                "listener": listener,
                "feed_reader": reader,
                "metrics": metrics,
                "login_throttle": login_throttle,
            }
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            # The tab counts go as the tabs do (within a second: a stalled database must not
            # hold the stop; left behind, they age out of every list).
            await asyncio.gather(
                hub.close(CloseCode.SERVICE_RESTART),
                counts.close() if counts is not None else asyncio.sleep(0),
            )
            await store.close()
            await database.dispose()

    routes = [
        Route("/", pages.index),
        Route("/healthz", health.healthz),
        Route("/livez", health.livez),
        Route("/metrics", health.metrics_endpoint),
        Route("/api/login", pages.login, methods=["POST"]),
        Route("/api/logout", pages.logout, methods=["POST"]),
        Route("/api/logout-all", pages.logout_all, methods=["POST"]),
        Route("/api/session/extend", pages.extend, methods=["POST"]),
        route("/api/sessions/{session:handle}/revoke", POST=pages.session_revoke),
        Route("/api/state", pages.state),
        Route("/api/switch", pages.switch, methods=["POST"]),
        route("/api/platforms", GET=pages.platforms_list, POST=pages.platforms_add),
        route(
            "/api/platforms/{platform:id}",
            PATCH=pages.platforms_change,
            DELETE=pages.platforms_remove,
        ),
        # Under uvicorn_config, _FrontDoor serves /ws before Starlette sees it; the route
        # keeps the app whole under any other ASGI server.
        WebSocketRoute("/ws", websocket_endpoint),
        Mount("/client", StaticFiles(directory=pages.CLIENT_DIR), name="client"),
        *host_api.routes(),
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
