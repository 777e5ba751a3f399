"""Readiness, liveness and metrics: what load balancers, restart policies and operators ask."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from server import __version__
from server.db import Database
from server.errors import StoreUnavailable
from server.hub import Hub
from server.protocol import encode
from server.settings import Settings
from server.storage import backplane
from server.web.metrics import CONTENT_TYPE, Metrics

__all__ = ["healthz", "livez", "metrics_endpoint"]


async def healthz(request: Request) -> Response:
    """Readiness: can this process serve? It reads and writes the database (a write that
    changes nothing) within readiness_timeout_s; 503 with the reason when it cannot."""
    database: Database = request.state.database
    settings: Settings = request.state.settings
    try:
        async with asyncio.timeout(settings.readiness_timeout_s):
            await database.write(_probe)
    except StoreUnavailable as error:
        return _health(request, 503, "unavailable", str(error))
    except TimeoutError:
        reason = f"The database did not answer within {settings.readiness_timeout_s:g} s."
        return _health(request, 503, "unavailable", reason)
    except Exception as error:  # disk full, read-only file, a lost WAL: the engine's words
        return _health(request, 503, "unavailable", f"{type(error).__name__}: {error}"[:300])
    return _health(request, 200, "ok")


async def livez(request: Request) -> Response:
    """Liveness: the process and its event loop answer. It never touches the database, so a
    database outage does not get every process restarted."""
    return _health(request, 200, "ok")


def _health(request: Request, code: int, status: str, reason: str | None = None) -> Response:
    database: Database = request.state.database
    hub: Hub = request.state.hub
    body: dict[str, Any] = {
        "status": status,
        "version": __version__,
        "tabs": sum(tab.width for tab in hub.tabs()),  # a shared connection's members too
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
            # Looks at the feed, wake-ups passed over (they named none of the users here),
            # events of other processes delivered, and resyncs, since start.
            "looks": listener.looks,
            "passed": listener.passed,
            "delivered": listener.delivered,
            "resyncs": listener.resyncs,
        }
    return Response(encode(body), status_code=code, media_type="application/json")


def _probe(connection: Any) -> None:
    # A write that changes nothing, to the one row every hub database has: it needs the
    # write lock, a writable file and room in the WAL, as every switch does.
    connection.exec_driver_sql("UPDATE alembic_version SET version_num = version_num")


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.state.metrics
    return Response(metrics.exposition(), media_type=CONTENT_TYPE)
