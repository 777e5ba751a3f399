"""The hub's one exception tree."""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BadMessage",
    "HubError",
    "Overloaded",
    "PlatformRefused",
    "StoreUnavailable",
    "UsageError",
    "first_line",
]


class HubError(Exception):
    """Base class of every error the hub raises on purpose."""


class BadMessage(HubError):
    """A frame from a tab is not a valid protocol message."""


class StoreUnavailable(HubError):
    """The database could not be reached or stayed locked; nothing was changed."""


class Overloaded(HubError):
    """Too much work of one kind is waiting already; the request was not started."""


class AuthenticationError(HubError):
    """A request carries no usable login session."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class UsageError(HubError):
    """A command-line or administrative request cannot be carried out as asked."""


class PlatformRefused(HubError):
    """A platform change would break a rule (the last active platform, a duplicate name)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def first_line(error: BaseException) -> str:
    """Say what a database error was in one line: the driver's first line (never the URL), or
    the kind of error when it has no text (a timeout)."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).splitlines()
    return lines[0] if lines and lines[0].strip() else type(cause).__name__
