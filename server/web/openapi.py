"""The host API's OpenAPI 3.1 document, its schemas generated from the protocol's structs.

``GET /api/host/openapi.json`` serves it. The paths are listed here once, beside the
routes of server/web/host_api.py; tests/web/test_host.py checks that the two name the same
endpoints.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from platform_hub_client.bodies import USER_NAME, ExternalId
from server import __version__
from server.api import (
    ErrorBody,
    HoldRequest,
    PlatformCreate,
    PlatformList,
    PlatformsMirror,
    PlatformUpdate,
    SessionList,
    SessionMint,
    SessionMinted,
    SessionsRevoked,
    UserState,
    UserUpsert,
    UserView,
)
from server.web.paths import MAX_ID

__all__ = ["ENDPOINTS", "document"]

_REF = "#/components/schemas/{name}"

# (method, path, summary, request body, {status: (description, body)})
_Endpoint = tuple[str, str, str, type | None, dict[int, tuple[str, type | None]]]
_USER = "/api/host/users/{name}"
_ERRORS = {
    401: ("No API key, or a wrong one", ErrorBody),
    404: ("No such user (or platform, or session)", ErrorBody),
    422: ("The body (or the path: reason 'path') is malformed", ErrorBody),
    503: ("The database is unavailable; nothing was changed", ErrorBody),
}
_REFUSED = {409: ("The change would break a rule (see the error code)", ErrorBody)}
ENDPOINTS: tuple[_Endpoint, ...] = (
    (
        "put",
        _USER,
        "Create the user, or set the password of an existing one",
        UserUpsert,
        {200: ("The user existed", UserView), 201: ("The user was created", UserView)},
    ),
    (
        "get",
        _USER + "/platforms",
        "List every platform of the user, and the state its tabs see",
        None,
        {200: ("The platforms", PlatformList)},
    ),
    (
        "put",
        _USER + "/platforms",
        "Make the user's platforms exactly these (matched by account); one new version",
        PlatformsMirror,
        {200: ("Mirrored; every tab has the new state", PlatformList), **_REFUSED},
    ),
    (
        "post",
        _USER + "/platforms",
        "Connect a platform account",
        PlatformCreate,
        {201: ("Added; every tab has the new state", PlatformList), **_REFUSED},
    ),
    (
        "patch",
        _USER + "/platforms/{platform}",
        "Rename, deactivate, reactivate, or make the default",
        PlatformUpdate,
        {200: ("Changed; every tab has the new state", PlatformList), **_REFUSED},
    ),
    (
        "delete",
        _USER + "/platforms/{platform}",
        "Delete a platform connection",
        None,
        {200: ("Deleted; every tab has the new state", PlatformList), **_REFUSED},
    ),
    (
        "patch",
        _USER + "/platforms/external/{external_id}",
        "Change a platform named by the host app's external id, as by its id",
        PlatformUpdate,
        {200: ("Changed; every tab has the new state", PlatformList), **_REFUSED},
    ),
    (
        "delete",
        _USER + "/platforms/external/{external_id}",
        "Delete a platform named by the host app's external id",
        None,
        {200: ("Deleted; every tab has the new state", PlatformList), **_REFUSED},
    ),
    (
        "get",
        _USER + "/state",
        "Read the user's version, active platform, platforms and hold (one read transaction)",
        None,
        {200: ("The state and the hold in force (null when none)", UserState)},
    ),
    (
        "put",
        _USER + "/hold",
        "Hold the user's switches (refused as busy) for ttl_s seconds, replacing any hold",
        HoldRequest,
        {200: ("The hold, and the state it holds", UserState)},
    ),
    (
        "delete",
        _USER + "/hold",
        "Release the user's hold; switches are decided again",
        None,
        {200: ("Released (hold is null), and the state", UserState)},
    ),
    (
        "post",
        _USER + "/sessions",
        "Mint a login session for a person the host app has authenticated",
        SessionMint,
        {201: ("The token, once: the page's cookie or bearer token", SessionMinted)},
    ),
    (
        "get",
        _USER + "/sessions",
        "List the user's live sessions, newest first",
        None,
        {200: ("The sessions", SessionList)},
    ),
    (
        "delete",
        _USER + "/sessions",
        "Revoke every session of the user; their tabs end (4001) within a second",
        None,
        {200: ("What was revoked", SessionsRevoked)},
    ),
    (
        "delete",
        _USER + "/sessions/{session}",
        "Revoke one session; its tabs end (4001) within a second",
        None,
        {200: ("What was revoked", SessionsRevoked)},
    ),
)


_OPTIONAL_BODIES = (UserUpsert, SessionMint)

# Query parameters, by (method, path): revoking says why, for the tabs to show.
_END_REASON = {
    "name": "reason",
    "in": "query",
    "required": False,
    "description": "Why the sessions end, as their tabs are told: logout, or revoked (default)",
    "schema": {"type": "string", "enum": ["revoked", "logout"], "default": "revoked"},
}
_QUERIES = {
    ("delete", _USER + "/sessions"): [_END_REASON],
    ("delete", _USER + "/sessions/{session}"): [_END_REASON],
}


@functools.cache
def document() -> dict[str, Any]:
    """Return the OpenAPI document of the host API."""
    types: list[Any] = []
    for _, _, _, body, answers in ENDPOINTS:
        types += [body] if body is not None else []
        types += [kind for _, kind in answers.values() if kind is not None]
    types += [kind for _, kind in _ERRORS.values() if kind is not None]
    _, components = msgspec.json.schema_components(types, ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, body, answers in ENDPOINTS:
        operation: dict[str, Any] = {
            "summary": summary,
            "parameters": [_parameter(name) for name in _path_names(path)]
            + _QUERIES.get((method, path), []),
            "responses": {
                str(status): _response(description, kind)
                for status, (description, kind) in sorted({**answers, **_ERRORS}.items())
            },
        }
        if body is not None:
            # The bodies whose fields all have defaults may be left out (an empty body is {}).
            operation["requestBody"] = {"required": body not in _OPTIONAL_BODIES}
            operation["requestBody"]["content"] = _content(body)
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "platform hub: host API",
            "version": __version__,
            "description": (
                "For the web app beside the hub. Every request carries "
                "`Authorization: Bearer <HUB_API_KEY>`. Errors are "
                '`{"error": <code>, "message": <sentence>, "reason": <or null>}`.'
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}],
    }


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


_PATH_SCHEMAS: dict[str, dict[str, Any]] = {
    "name": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": USER_NAME},
    "external_id": msgspec.json.schema(ExternalId),
}


def _parameter(name: str) -> dict[str, Any]:
    schema = _PATH_SCHEMAS.get(name, {"type": "integer", "minimum": 1, "maximum": MAX_ID})
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _content(kind: type) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF.format(name=kind.__name__)}}}


def _response(description: str, kind: type | None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    if kind is not None:
        answer["content"] = _content(kind)
    return answer
