"""HTTP responses in the hub's one JSON shape, for every endpoint module."""

from __future__ import annotations

import math
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from server.api import ErrorBody
from server.errors import (
    AuthenticationError,
    BadMessage,
    HubError,
    Overloaded,
    PlatformRefused,
    StoreUnavailable,
    UsageError,
)
from server.protocol import ErrorCode, encode

__all__ = [
    "error_response",
    "http_error_response",
    "hub_error_response",
    "json_response",
    "retry_later",
    "unauthenticated",
]

_REFUSED_STATUS = {ErrorCode.UNKNOWN_PLATFORM: 404, ErrorCode.BAD_REQUEST: 422}


def json_response(status: int, body: Any) -> Response:
    """Return ``body`` (a protocol struct or plain data) as JSON with ``status``."""
    return Response(encode(body), status_code=status, media_type="application/json")


def error_response(
    status: int, code: ErrorCode, message: str, reason: str | None = None
) -> Response:
    """Return the error body every endpoint uses: a code, a sentence and a reason."""
    return json_response(status, ErrorBody(error=code, message=message, reason=reason))


def http_error_response(request: Request, error: Exception) -> Response:
    """Answer the router's own errors (no such path, a method the path does not take) in the
    one JSON shape, with their headers (``Allow``)."""
    assert isinstance(error, HTTPException)
    code = _HTTP_CODES.get(error.status_code, ErrorCode.BAD_REQUEST)
    response = error_response(error.status_code, code, str(error.detail))
    response.headers.update(error.headers or {})
    return response


_HTTP_CODES = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}


def unauthenticated(error: AuthenticationError) -> Response:
    """Return 401 with the reason the session is not usable, and a WWW-Authenticate."""
    response = error_response(401, ErrorCode.UNAUTHENTICATED, str(error), error.reason)
    response.headers["WWW-Authenticate"] = 'Bearer realm="hub"'
    return response


def retry_later(status: int, code: ErrorCode, message: str, wait: float) -> Response:
    """Return an error with a Retry-After of ``wait`` seconds (at least 1)."""
    response = error_response(status, code, message)
    response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return response


def hub_error_response(connection: HTTPConnection, error: Exception) -> Response:
    """Answer an error of the hub's tree that an endpoint let through, the same way from
    every endpoint: 401 no usable session, 422 malformed, a refused platform change, 503
    unavailable (with Retry-After when overloaded)."""
    match error:
        case AuthenticationError():
            return unauthenticated(error)
        case PlatformRefused():
            # 404 for an unknown platform, 422 malformed, 409 for a rule it would break.
            code = ErrorCode(error.code)
            return error_response(_REFUSED_STATUS.get(code, 409), code, str(error))
        case BadMessage() | UsageError():
            return error_response(422, ErrorCode.BAD_REQUEST, str(error))
        case StoreUnavailable():
            return error_response(503, ErrorCode.UNAVAILABLE, str(error))
        case Overloaded():
            return retry_later(503, ErrorCode.UNAVAILABLE, str(error), 1)
    assert isinstance(error, HubError)
    raise error  # not an answer of its own: the server error it is
