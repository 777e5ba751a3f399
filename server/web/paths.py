"""Paths: one route per path whatever its methods, and ids bounded to what is stored.

A path served by several routes (one per method) answered a wrong method with 405 and an
``Allow`` naming only the first route's method. ``route`` makes one route per path that
dispatches on the method, so ``Allow`` lists them all.

An id in a URL is at most what the database can store.
Starlette's ``int`` convertor takes any run of digits, and an id past 64 bits made the
database driver raise (a 500, though the id was valid per the OpenAPI document). ``{x:id}``
takes 1 to 19 digits; a number past a signed 64-bit integer becomes 0, which no row has, so
it is answered as the unknown id it is. Longer runs of digits match no route (404).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["MAX_ID", "HandleConvertor", "IdConvertor", "route"]

Endpoint = Callable[[Request], Awaitable[Response]]

MAX_ID = 2**63 - 1


class IdConvertor(Convertor[int]):
    """A row id in a path: 1 to 19 digits; one past MAX_ID reads as 0 (no such row)."""

    regex = "[0-9]{1,19}"

    def convert(self, value: str) -> int:
        number = int(value)
        return number if number <= MAX_ID else 0

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("id", IdConvertor())


class HandleConvertor(Convertor[str]):
    """A session's handle in a path (server/storage/sessions.py): 1 to 32 URL-safe characters;
    anything else matches no route (404)."""

    regex = "[A-Za-z0-9_-]{1,32}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("handle", HandleConvertor())


def route(path: str, **endpoints: Endpoint) -> Route:
    """Return one route serving ``path`` with an endpoint per method (``GET=..., POST=...``)."""

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await endpoints[method](request)

    return Route(path, dispatch, methods=list(endpoints), name=path)
