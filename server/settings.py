"""Configuration: one frozen Settings, read from ``HUB_*`` environment variables."""

from __future__ import annotations

import dataclasses
import math
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Settings"]


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Hold every tunable of the hub; each field maps to the ``HUB_<FIELD>`` variable."""

    database_url: str = "sqlite+aiosqlite:///hub.db"
    # Upgrade an outdated schema when serving starts, instead of refusing to start. An empty
    # database gets the schema either way.
    upgrade_schema: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    # Origins allowed to open a WebSocket or change state. Empty means "the hub's own origin".
    allowed_origins: tuple[str, ...] = ()
    # Host names requests may name in their Host header (DNS rebinding). Empty means the
    # served host (for a loopback host: 127.0.0.1, localhost and ::1); "*" means any.
    allowed_hosts: tuple[str, ...] = ()
    cookie_secure: bool = False
    # The host app's key for the host API (server/web/host_api.py); empty turns that API off.
    api_key: str = dataclasses.field(default="", repr=False)

    # Login sessions.
    session_idle_s: float = 24 * 3600
    session_absolute_s: float = 7 * 24 * 3600
    session_warning_s: float = 15 * 60
    # Activity extends the idle expiry, but writes at most once per this many seconds.
    session_touch_s: float = 60
    # How often connected tabs' sessions are checked for expiry, revocation and warnings.
    session_check_s: float = 2.0
    # How often expired and revoked sessions and old switch-log rows are deleted.
    collect_interval_s: float = 300
    # How long a switch decision is remembered for idempotent retries (at least 600 s).
    switch_log_ttl_s: float = 24 * 3600

    # Live login sessions per user: a new one past it ends the user's oldest (its tabs are
    # told: session_ended, revoked). The app the hub was made for allowed 5.
    max_sessions_per_user: int = 10
    # Platforms per user (a page's, the host app's and the command line's alike).
    max_platforms_per_user: int = 50

    # Failed logins: a bucket per user name of this burst, refilled at this rate (a second);
    # a client address gets five times both. Past it, logins get 429 until it refills.
    login_failure_burst: int = 10
    login_failure_rate: float = 0.05
    # Password checks (scrypt) running at once; 0 means one per CPU. Logins beyond that wait,
    # and past eight times as many waiting, they are answered 503 at once.
    login_concurrency: int = 0
    # scrypt's N for new password hashes (OWASP's minimum: 2**17, 128 MiB and about 0.3 s a
    # hash). Hashes of another cost still verify and are re-hashed at the next login.
    password_cost: int = 2**17

    # Per-tab and per-user limits.
    max_tabs_per_user: int = 100
    messages_per_second: float = 20
    message_burst: int = 40
    max_message_bytes: int = 64 * 1024
    max_bad_messages: int = 10
    outbox_size: int = 64
    # What a tab's connection may hold unsent beyond its outbox (the transport's buffer:
    # pongs, a close); past it the tab is closed with 4008. A closing tab whose close cannot
    # be sent within close_timeout_s is dropped, with whatever it had not sent.
    max_unsent_bytes: int = 256 * 1024
    close_timeout_s: float = 5
    heartbeat_s: float = 25
    # A tab that sends nothing (not even a ping) for this long is closed.
    idle_timeout_s: float = 75
    # A connection must complete its request headers (or WebSocket handshake request) in this
    # long, or it is closed: slow or stalled clients cannot hold connections open for free.
    handshake_timeout_s: float = 10
    # HTTP requests (server/web/http_protocol.py, server/web/bodies.py): the whole
    # request, headers and body, must arrive within request_timeout_s (else 408); a body is
    # at most max_body_bytes (413); headers at most max_header_bytes and max_headers of them
    # (431).
    request_timeout_s: float = 30
    max_body_bytes: int = 64 * 1024
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    # Open connections (HTTP and WebSocket); past it, new ones get 503 at once. 0 means the
    # descriptor limit (ulimit -n) less 100, kept for the database and logs.
    max_connections: int = 0
    # Connections the kernel may hold accepted for the hub before it takes them (listen's
    # backlog; Linux caps it at net.core.somaxconn, 4096 by default). In a reconnect storm
    # uvicorn's 2048 overflowed: the dropped handshakes were retransmitted seconds later.
    accept_backlog: int = 4096

    # PostgreSQL: the most any database call may wait (connecting, a statement, a pool
    # checkout, a unit of work) before it is answered unavailable; a stalled server costs each
    # request this long at most, and the hub recovers by itself once it answers.
    database_timeout_s: float = 5
    # GET /healthz (readiness) answers 503 when its probe of the database takes longer.
    readiness_timeout_s: float = 2
    # SQLite: "NORMAL" survives a crash of the hub process; "FULL" also survives power loss.
    sqlite_synchronous: str = "NORMAL"
    sqlite_busy_timeout_ms: int = 5000
    # Group commit: at most this many switches share one transaction. 1 commits each switch
    # on its own (the naive way, kept for comparison in bench/).
    commit_batch_max: int = 256
    # PostgreSQL: how long serving waits at start for the backplane's first LISTEN, and the
    # base of its reconnect backoff (it waits up to backoff after a loss, jittered, doubling
    # on each failed attempt up to 2 s).
    backplane_connect_s: float = 30
    backplane_backoff_s: float = 0.1
    # The change feed (server/storage/feed.py): on SQLite, how often the serving process looks
    # for changes another process made to the file (the command line), and on both engines how
    # long its rows are kept (collected every quarter of it, at most a minute apart, a few
    # thousand rows per transaction). About 220 bytes per switch while kept.
    feed_poll_s: float = 0.2
    feed_retention_s: float = 120
    # Presence across processes (PostgreSQL, server/storage/presence.py): each process writes
    # its tab counts within a quarter second of a change and vouches for them every
    # presence_heartbeat_s; the tabs of a process that stops (killed, cut off) drop out of
    # every list within 4 heartbeats (ignored after 3, noticed within one more).
    presence_heartbeat_s: float = 5

    # SIGTERM: every tab is closed with 1012 at once (it reconnects elsewhere, with jitter);
    # the switches already received are still decided and committed (a retry with the same
    # id gets that decision); connections still open after this many seconds are cut.
    shutdown_timeout_s: float = 5
    # The rate, in tabs a second, at which a restart's tabs are asked to come back: each 1012
    # says "reconnect within" the tabs this process closes / reconnect_rate seconds, and the
    # client draws its delay over that window (the processes that take them get them at
    # about this rate instead of all at once). 0, the default: a bare 1012, the client's
    # backoff alone. Measured on one process restarting under 10,000 tabs, 1,000 a second
    # brought them all back later (bench/RESULTS.md): it is for several processes behind a
    # balancer, where the others take a stopping one's tabs.
    reconnect_rate: float = 0
    log_level: str = "info"
    # "text" (a line per record, ids as key=value) or "json" (an object per line).
    log_format: str = "text"

    def __post_init__(self) -> None:
        # The drivers the hub runs on, also reached by their common short names.
        object.__setattr__(self, "database_url", _database_url(self.database_url))
        if any(origin.strip() in {"*", "null"} for origin in self.allowed_origins):
            raise ValueError(
                "allowed_origins may not hold * or null: they would let any page (and "
                "sandboxed ones) call the hub with its users' cookies; list the origins"
            )
        if self.switch_log_ttl_s < 600:
            raise ValueError("switch_log_ttl_s must be at least 600 seconds")
        if self.sqlite_synchronous.upper() not in {"NORMAL", "FULL", "EXTRA"}:
            raise ValueError("sqlite_synchronous must be NORMAL, FULL or EXTRA")
        if self.log_format not in {"text", "json"}:
            raise ValueError(f"log_format must be text or json, not {self.log_format!r}")
        if self.max_sessions_per_user < 1 or self.max_platforms_per_user < 1:
            raise ValueError("max_sessions_per_user and max_platforms_per_user must be at least 1")
        if not 0 <= self.reconnect_rate < math.inf:
            raise ValueError("reconnect_rate must be 0 (no window) or a positive rate")
        if self.accept_backlog < 1:
            raise ValueError("accept_backlog must be at least 1")
        if self.commit_batch_max < 1:
            raise ValueError("commit_batch_max must be at least 1")
        if self.password_cost < 2**10 or self.password_cost & (self.password_cost - 1):
            raise ValueError("password_cost must be a power of two, at least 1024")
        if self.session_idle_s <= 0 or self.session_absolute_s <= 0:
            raise ValueError("session lifetimes must be positive")
        if self.messages_per_second <= 0 or self.login_failure_rate <= 0:
            raise ValueError("messages_per_second and login_failure_rate must be positive")
        if self.message_burst < 1 or self.login_failure_burst < 1:
            raise ValueError("message_burst and login_failure_burst must be at least 1")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build Settings from ``HUB_*`` variables, then apply explicit overrides."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = environ.get(f"HUB_{field.name.upper()}")
            if raw is not None:
                values[field.name] = _parse(field, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_environ(self) -> dict[str, str]:
        """Return the ``HUB_*`` variables that from_environ reads back as these Settings."""
        environ = {}
        for field in fields(self):
            value = getattr(self, field.name)
            text = ",".join(value) if isinstance(value, tuple) else str(value)
            environ[f"HUB_{field.name.upper()}"] = text
        return environ

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def is_sqlite(self) -> bool:
        """Tell whether the database is SQLite."""
        return self.database_url.startswith("sqlite")


# The scheme a database URL may start with -> the SQLAlchemy dialect and driver the hub uses.
_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


def _database_url(url: str) -> str:
    """Return the URL with the hub's driver, or raise ValueError with a sentence (which
    never repeats the URL: it may hold a password)."""
    scheme, separator, rest = url.strip().partition("://")
    wanted = (
        "give sqlite+aiosqlite:///path/to/hub.db (a file) or "
        "postgresql+asyncpg://user:password@host:5432/database"
    )
    if not url.strip():
        raise ValueError(f"HUB_DATABASE_URL is empty: {wanted}")
    driver = _DRIVERS.get(scheme.lower())
    if not separator or driver is None:
        shown = f"scheme {scheme!r}" if separator else "no scheme"
        raise ValueError(f"HUB_DATABASE_URL has {shown}, which the hub cannot use: {wanted}")
    if driver.startswith("sqlite"):
        path = rest[1:] if rest.startswith("/") else ""
        if not path or path.startswith(":memory:") or "mode=memory" in path:
            # An in-memory database is one per connection: the schema would not be there.
            raise ValueError(f"HUB_DATABASE_URL names no SQLite file: {wanted}")
        return f"{driver}://{rest}"
    parts = urllib.parse.urlsplit(f"{driver}://{rest}")
    try:
        parts.port  # noqa: B018  (parsing it is the check)
    except ValueError:
        raise ValueError(
            "HUB_DATABASE_URL has a port that is not a number from 0 to 65535 (a password "
            f"holding @, :, / or # must be percent-encoded): {wanted}"
        ) from None
    # libpq's sslmode (as hosting platforms give it) is asyncpg's ssl.
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if not any(key == "sslmode" for key, _ in query):
        return f"{driver}://{rest}"
    query = [("ssl" if key == "sslmode" else key, value) for key, value in query]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _parse(field: dataclasses.Field[Any], raw: str) -> Any:
    kind = str(field.type)
    try:
        if kind == "bool":
            if raw.lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.lower() in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind.startswith("tuple"):
            return tuple(item.strip() for item in raw.split(",") if item.strip())
    except ValueError:
        raise ValueError(f"HUB_{field.name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
