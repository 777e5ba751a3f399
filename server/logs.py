"""Logging: the hub never writes a session token to a log, at any level.

uvicorn at debug level logs every handshake's headers, which carry the session cookie or a
bearer token. ``redact_secrets`` installs a filter on the log handlers that rewrites them.
"""

from __future__ import annotations

import logging
import re

__all__ = ["RedactSecrets", "redact", "redact_secrets"]

_SECRETS = re.compile(
    r"(?P<keep>hub_session=|authorization:\s*bearer\s+|bearer\s+)[^\s;,'\"]+", re.IGNORECASE
)


def redact(text: str) -> str:
    """Replace every session token in ``text`` with ``[redacted]``."""
    return _SECRETS.sub(r"\g<keep>[redacted]", text)


class RedactSecrets(logging.Filter):
    """Rewrite a record's message without its tokens (the record keeps flowing)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def redact_secrets(*logger_names: str) -> None:
    """Add the filter to every handler of the root logger and of ``logger_names``."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in logger_names)]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactSecrets) for f in handler.filters):
                handler.addFilter(RedactSecrets())
