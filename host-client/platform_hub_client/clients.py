"""HostClient (sync) and AsyncHostClient: one reused httpx client each, the calls of
calls.py as methods, every failure a HostApiError."""

from __future__ import annotations

import inspect
import urllib.parse
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import httpx
import msgspec

from platform_hub_client import calls
from platform_hub_client.calls import Call
from platform_hub_client.errors import HostApiError

__all__ = ["AsyncHostClient", "HostClient"]

P = ParamSpec("P")
T = TypeVar("T")
_JSON = {"content-type": "application/json"}


F = TypeVar("F", bound=Callable[..., Any])


def _named(method: F, build: Callable[..., Any]) -> F:
    """Give a method the name, docstring and signature of the call it sends (for help())."""
    method.__name__ = method.__qualname__ = build.__name__
    method.__doc__ = build.__doc__
    signature = inspect.signature(build)
    answer = str(signature.return_annotation).removeprefix("Call[").removesuffix("]")
    self = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self, *signature.parameters.values()], return_annotation=answer
    )
    return method


class HostClient:
    """Call the hub's host API with the API key, from sync code (a Flask or Django view).

    One connection pool, reused by every call and safe to share between threads: create one
    per process, not one per request::

        hub = HostClient("http://127.0.0.1:8000", api_key)
        hub.upsert_user("alice")
        minted = hub.mint_session("alice", user_agent=..., ip=...)
        ...
        hub.close()  # or: with HostClient(...) as hub:
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(**_options(base_url, api_key, timeout), transport=transport)

    def __enter__(self) -> HostClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def send(self, call: Call[T]) -> T:
        """Send one call and decode its answer (the methods below are built on this)."""
        try:
            response = self._http.send(_request(self._http, call))
        except (httpx.HTTPError, RuntimeError) as failure:
            raise _transport_error(failure) from failure
        return _answer(response, call.answer)

    def _sync(build: Callable[P, Call[T]]) -> Callable[Concatenate[HostClient, P], T]:  # type: ignore[misc]
        def method(self: HostClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
            return self.send(build(*args, **kwargs))

        return _named(method, build)

    upsert_user = _sync(calls.upsert_user)
    platforms = _sync(calls.platforms)
    mirror_platforms = _sync(calls.mirror_platforms)
    add_platform = _sync(calls.add_platform)
    change_platform = _sync(calls.change_platform)
    remove_platform = _sync(calls.remove_platform)
    state = _sync(calls.state)
    hold = _sync(calls.hold)
    release = _sync(calls.release)
    mint_session = _sync(calls.mint_session)
    sessions = _sync(calls.sessions)
    revoke_session = _sync(calls.revoke_session)
    revoke_sessions = _sync(calls.revoke_sessions)
    del _sync


class AsyncHostClient:
    """Call the hub's host API with the API key, from asyncio code; the same methods as
    HostClient, each a coroutine::

        async with AsyncHostClient("http://127.0.0.1:8000", api_key) as hub:
            await hub.upsert_user("alice")
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(**_options(base_url, api_key, timeout), transport=transport)

    async def __aenter__(self) -> AsyncHostClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def send(self, call: Call[T]) -> T:
        """Send one call and decode its answer (the methods below are built on this)."""
        try:
            response = await self._http.send(_request(self._http, call))
        except (httpx.HTTPError, RuntimeError) as failure:
            raise _transport_error(failure) from failure
        return _answer(response, call.answer)

    def _async(  # type: ignore[misc]
        build: Callable[P, Call[T]],
    ) -> Callable[Concatenate[AsyncHostClient, P], Coroutine[Any, Any, T]]:
        async def method(self: AsyncHostClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
            return await self.send(build(*args, **kwargs))

        return _named(method, build)

    upsert_user = _async(calls.upsert_user)
    platforms = _async(calls.platforms)
    mirror_platforms = _async(calls.mirror_platforms)
    add_platform = _async(calls.add_platform)
    change_platform = _async(calls.change_platform)
    remove_platform = _async(calls.remove_platform)
    state = _async(calls.state)
    hold = _async(calls.hold)
    release = _async(calls.release)
    mint_session = _async(calls.mint_session)
    sessions = _async(calls.sessions)
    revoke_session = _async(calls.revoke_session)
    revoke_sessions = _async(calls.revoke_sessions)
    del _async


def _options(base_url: str, api_key: str, timeout: float) -> dict[str, Any]:
    """The httpx client's options; a base URL that is not http(s) is refused at once
    (ValueError), not reported as an outage at the first call."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url {base_url!r} is not an http(s) URL with a host")
    return {
        # Idle connections are dropped before the hub's keep-alive (uvicorn: 5 s) drops them,
        # so a reused connection is not one the hub is closing.
        "limits": httpx.Limits(keepalive_expiry=4.0),
        "base_url": base_url.rstrip("/") + "/api/host",
        "headers": {"Authorization": f"Bearer {api_key}"},
        "timeout": timeout,
    }


def _request(http: httpx.Client | httpx.AsyncClient, call: Call[Any]) -> httpx.Request:
    """The HTTP request of a call, for either client to send."""
    headers = _JSON if call.content is not None else None
    return http.build_request(
        call.method, call.path, content=call.content, params=call.params, headers=headers
    )


def _transport_error(failure: httpx.HTTPError | RuntimeError) -> HostApiError:
    """Say whether a call that failed in transit can have been applied."""
    if isinstance(failure, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        # No connection, so nothing was sent.
        return HostApiError(503, "unreachable", f"The hub cannot be reached: {failure!r}")
    if isinstance(failure, RuntimeError):  # httpx: the client has been closed
        return HostApiError(503, "unreachable", f"This client is closed: {failure}")
    if isinstance(failure, httpx.TimeoutException):
        return HostApiError(
            504, "timeout", f"The hub did not answer in time (it may have applied the call): "
            f"{failure!r}"
        )  # fmt: skip
    return HostApiError(
        502, "interrupted",
        f"The connection broke after the call was sent (it may have been applied): {failure!r}",
    )  # fmt: skip


def _answer(response: httpx.Response, kind: type[T]) -> T:
    """Decode a hub's answer, or raise its error as HostApiError."""
    if response.status_code >= 400:
        try:
            error = msgspec.json.decode(response.content, type=dict[str, Any])
        except msgspec.DecodeError:
            error = {"error": "unknown", "message": response.text[:200]}
        code, message, reason = error.get("error"), error.get("message"), error.get("reason")
        raise HostApiError(
            response.status_code,
            code if isinstance(code, str) else "unknown",
            message if isinstance(message, str) else response.text[:200],
            reason if isinstance(reason, str) else None,
        )
    try:
        decoded: T = msgspec.json.decode(response.content, type=kind)
    except msgspec.DecodeError as failure:  # not the hub, or a hub of another version
        raise HostApiError(
            response.status_code, "bad_answer", f"The answer is not a {kind.__name__}: {failure}"
        ) from failure
    return decoded
