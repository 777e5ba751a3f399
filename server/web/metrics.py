"""Prometheus metrics: what an operator watches, served at ``GET /metrics``.

One registry per app (created in its lifespan), not prometheus-client's global one: a test
process runs many hubs. Counters and histograms are fed by plain callbacks that the hub and
the group commit call (they import nothing of this module); gauges are read when scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds: from a tenth of a millisecond to a few seconds.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The hub's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.switches = Counter(
            "hub_switches",
            "Switch requests decided, by result: accepted, or the rejection reason.",
            ["result"],
            registry=registry,
        )
        self.switch_seconds = Histogram(
            "hub_switch_broadcast_seconds",
            "From a switch request's arrival to its new state queued for every tab.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "hub_commit_seconds",
            "Duration of one group-commit transaction, decisions included.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "hub_commit_batch_size",
            "Switch requests decided in one transaction.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.backplane_lag = Histogram(
            "hub_backplane_lag_seconds",
            "From a change's commit in another process to its delivery here (PostgreSQL; "
            "the processes' clocks must agree).",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self._tabs = Gauge(
            "hub_tabs",
            "Tabs connected to this process (a shared connection's members included).",
            registry=registry,
        )
        self._connections = Gauge(
            "hub_connections",
            "WebSocket connections to this process (a shared connection carries several tabs).",
            registry=registry,
        )
        self._sessions = Gauge(
            "hub_sessions_connected",
            "Login sessions with at least one tab connected to this process.",
            registry=registry,
        )
        self._checked_out = Gauge(
            "hub_db_connections_checked_out",
            "Pooled database connections in use right now.",
            registry=registry,
        )
        self._reconnects = Gauge(
            "hub_backplane_reconnects",
            "Times the backplane's listening connection was made again after a loss.",
            registry=registry,
        )

        self.sessions_collected = Counter(
            "hub_sessions_collected",
            "Ended login sessions deleted by the collector.",
            registry=registry,
        )

    def watch(
        self,
        *,
        tabs: Callable[[], float],
        connections: Callable[[], float],
        sessions: Callable[[], float],
        checked_out: Callable[[], float],
        coalesced: Callable[[], float],
        slow_closed: Callable[[], float],
        sessions_ended: Callable[[], dict[str, int]],
        reconnects: Callable[[], float] | None = None,
    ) -> None:
        """Read these figures from the running hub whenever the metrics are scraped."""
        self._tabs.set_function(tabs)
        self._connections.set_function(connections)
        self._sessions.set_function(sessions)
        self._checked_out.set_function(checked_out)
        if reconnects is not None:
            self._reconnects.set_function(reconnects)
        self.registry.register(_HubCounters(coalesced, slow_closed, sessions_ended))

    def collected(self, sessions: int) -> None:
        """Count sessions the collector deleted."""
        self.sessions_collected.inc(sessions)

    def switched(self, result: str, seconds: float) -> None:
        """Count one decided switch; time its broadcast if it made a new version."""
        self.switches.labels(result=result).inc()
        if seconds >= 0:
            self.switch_seconds.observe(seconds)

    def committed(self, size: int, seconds: float) -> None:
        """Record one group-commit transaction."""
        self.batch_size.observe(size)
        self.commit_seconds.observe(seconds)

    def exposition(self) -> bytes:
        """Return every metric in Prometheus' text format."""
        return generate_latest(self.registry)


class _HubCounters(Collector):
    """Counters the hub keeps itself, read when scraped."""

    def __init__(
        self,
        coalesced: Callable[[], float],
        slow_closed: Callable[[], float],
        sessions_ended: Callable[[], dict[str, int]],
    ) -> None:
        self._coalesced, self._slow_closed = coalesced, slow_closed
        self._sessions_ended = sessions_ended

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "hub_states_coalesced",
            "States a slow tab never got because a newer one replaced them in its outbox.",
            value=self._coalesced(),
        )
        yield CounterMetricFamily(
            "hub_tabs_closed_slow",
            "Tabs closed (4008) because their outbox overflowed.",
            value=self._slow_closed(),
        )
        ended = CounterMetricFamily(
            "hub_sessions_ended",
            "Login sessions whose tabs here were closed, by reason (logout, expired, ...).",
            labels=["reason"],
        )
        for reason, count in sorted(self._sessions_ended().items()):
            ended.add_metric([reason], count)
        yield ended
