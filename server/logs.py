"""Logging: text or JSON lines, with the tab, user and request they concern, never a token.

- uvicorn at debug level logs every handshake's headers, which carry the session cookie or a
  bearer token. ``RedactSecrets`` rewrites every record on every handler the hub configures.
- ``bind`` attaches ids (tab, user, session, request) to whatever is logged in the current
  task from then on: a WebSocket's ids cover everything its connection logs, uvicorn's own
  "[accepted]" line included. With ``HUB_LOG_FORMAT=json`` each record is one JSON object
  carrying them; in text they follow the message.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import re
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

__all__ = [
    "JsonFormatter",
    "RedactSecrets",
    "TextFormatter",
    "bind",
    "bound",
    "log_config",
    "redact",
    "redact_secrets",
]

# A session token wherever a client may put one: the cookie (quoted too), a bearer header,
# or a query string (which the hub refuses, but uvicorn logs the request line first).
_SECRETS = re.compile(
    r"(?P<keep>hub_session=\"?|authorization:\s*bearer\s+|bearer\s+"
    r"|[?&](?:token|access_token|session|hub_session|api_key|key)=)[^\s;,'\"&]+",
    re.IGNORECASE,
)
# Never mutated: bind and bound set a new mapping.
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "hub_log", default=MappingProxyType({})
)


def redact(text: str) -> str:
    """Replace every session token in ``text`` with ``[redacted]``."""
    return _SECRETS.sub(r"\g<keep>[redacted]", text)


def bind(**ids: Any) -> None:
    """Attach ``ids`` to every record logged from now on in this task (and tasks it starts)."""
    _context.set({**_context.get(), **ids})


@contextlib.contextmanager
def bound(**ids: Any) -> Iterator[None]:
    """Attach ``ids`` to the records logged inside the block only."""
    token = _context.set({**_context.get(), **ids})
    try:
        yield
    finally:
        _context.reset(token)


class RedactSecrets(logging.Filter):
    """Rewrite a record's message without its tokens (the record keeps flowing)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the bound ids, any exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_context.get(),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """uvicorn's ``LEVEL:    message``, the hub's logger names, and the bound ids."""

    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(f"{key}={value}" for key, value in _context.get().items())
        source = "" if record.name.startswith("uvicorn") else f"{record.name}: "
        line = f"{record.levelname + ':':<9} {source}{record.getMessage()}"
        if ids:
            line += f" [{ids}]"
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


def log_config(log_format: str, level: str) -> dict[str, Any]:
    """Return the logging configuration (dictConfig) of uvicorn's loggers and the hub's."""
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    handler = {
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
        "formatter": "hub",
        "filters": ["redact"],
    }
    named = {"level": level.upper(), "handlers": ["hub"], "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactSecrets}},
        "formatters": {"hub": {"()": formatter}},
        "handlers": {"hub": handler},
        "loggers": {
            "uvicorn": named,
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": named,
            "hub": named,
        },
    }


def redact_secrets(*logger_names: str) -> None:
    """Add the filter to every handler of the root logger and of ``logger_names``."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in logger_names)]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactSecrets) for f in handler.filters):
                handler.addFilter(RedactSecrets())
