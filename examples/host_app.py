"""A minimal host app beside the hub: its own users and logins, the hub for the active platform.

    HUB_URL=http://127.0.0.1:8000 HUB_API_KEY=change-me python examples/host_app.py --port 9000

with the hub started as

    HUB_API_KEY=change-me HUB_ALLOWED_ORIGINS=http://127.0.0.1:9000 hub serve

It stands for the web app the hub was made for (docs/integration.md walks through it): people
log in here, with this app's passwords; on login it mirrors the person and their platform
accounts into the hub and mints a hub session for them (platform_hub_client's AsyncHostClient,
one per app). The
page then loads the hub's browser client from the hub and connects with that session. The
"caption job" button holds the person's switches while the job runs, and logging out here
revokes the hub session, which ends every tab of it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import os
import secrets
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from platform_hub_client import AsyncHostClient, HostApiError, PlatformMirrored

HUB_COOKIE = "hub_session"  # the cookie the hub reads (server/web/app.py's COOKIE)
APP_COOKIE = "studio_session"


@dataclass
class Person:
    """A user of this app, with the platform accounts this app knows for them."""

    password: str
    platforms: list[PlatformMirrored]


PEOPLE = {
    "dana": Person(
        "dana-studio-pw",
        [
            PlatformMirrored(
                name="Photos",
                kind="pixelfed",
                instance_url="https://pixelfed.social",
                username="dana",
                is_default=True,
            ),
            PlatformMirrored(
                name="Toots",
                kind="mastodon",
                instance_url="https://mastodon.social",
                username="dana",
            ),
        ],
    ),
}


@dataclass
class Studio:
    """The host app's own state: who is logged in here, and their hub session ids."""

    hub_url: str
    hub: AsyncHostClient  # one client, one connection pool, for every request
    logins: dict[str, tuple[str, int]] = field(default_factory=dict)  # cookie -> name, hub id
    jobs: set[asyncio.Task[None]] = field(default_factory=set)


def create_app(hub_url: str, api_key: str) -> Starlette:
    """Build the host app, talking to the hub at ``hub_url`` with ``api_key``."""
    studio = Studio(hub_url.rstrip("/"), AsyncHostClient(hub_url, api_key))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with studio.hub:
            yield

    async def index(request: Request) -> Response:
        if request.cookies.get(APP_COOKIE) in studio.logins:
            return RedirectResponse("/app", 303)
        return HTMLResponse(_LOGIN.format(error=""))

    async def login(request: Request) -> Response:
        # A plain form post, parsed by hand: Starlette's form parser needs python-multipart.
        form = urllib.parse.parse_qs((await request.body()).decode())
        name, password = form.get("username", [""])[0], form.get("password", [""])[0]
        person = PEOPLE.get(name)
        if person is None or not secrets.compare_digest(person.password, password):
            return HTMLResponse(_LOGIN.format(error="Wrong name or password."), 401)
        hub = studio.hub
        await hub.upsert_user(name)  # no password: the hub trusts this app's login
        await hub.mirror_platforms(name, person.platforms)
        minted = await hub.mint_session(
            name,
            user_agent=request.headers.get("user-agent"),
            ip=request.client.host if request.client else None,
        )
        cookie = secrets.token_urlsafe(24)
        studio.logins[cookie] = (name, minted.session.id)
        response = RedirectResponse("/app", 303)
        response.set_cookie(APP_COOKIE, cookie, httponly=True, samesite="lax")
        # Cookies belong to a host, not a port: the browser sends this one to the hub too.
        # (With the hub on another subdomain, set domain= to the shared parent domain.)
        response.set_cookie(HUB_COOKIE, minted.token, httponly=True, samesite="lax")
        return response

    def person_of(request: Request) -> tuple[str, int] | None:
        return studio.logins.get(request.cookies.get(APP_COOKIE, ""))

    async def page(request: Request) -> Response:
        found = person_of(request)
        if found is None:
            return RedirectResponse("/", 303)
        hub_ws = "ws" + studio.hub_url.removeprefix("http") + "/ws"
        return HTMLResponse(
            _APP.format(
                name=html.escape(found[0]),
                hub=html.escape(studio.hub_url),
                options=html.escape(
                    json.dumps({"url": hub_ws, "api": studio.hub_url + "/api"}), quote=False
                ),
            )
        )

    async def job(request: Request) -> Response:
        found = person_of(request)
        if found is None:
            return Response(status_code=401)
        seconds = float(request.query_params.get("seconds", "3"))

        async def run() -> None:
            await studio.hub.hold(found[0], "Generating captions", seconds + 30)
            try:
                await asyncio.sleep(seconds)  # the job itself
            finally:
                await studio.hub.release(found[0])

        task = asyncio.create_task(run())
        studio.jobs.add(task)
        task.add_done_callback(studio.jobs.discard)
        return Response(status_code=202)

    async def logout(request: Request) -> Response:
        cookie = request.cookies.get(APP_COOKIE, "")
        found = studio.logins.pop(cookie, None)
        if found is not None:
            # Every tab of the session ends, told "logout". With the hub down (HostApiError),
            # this app's own logout still happens, and the hub session expires by itself.
            with contextlib.suppress(HostApiError):
                await studio.hub.revoke_session(found[0], found[1], reason="logout")
        response = RedirectResponse("/", 303)
        response.delete_cookie(APP_COOKIE)
        response.delete_cookie(HUB_COOKIE)
        return response

    return Starlette(
        lifespan=lifespan,
        routes=[
            Route("/", index),
            Route("/login", login, methods=["POST"]),
            Route("/app", page),
            Route("/job", job, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
        ],
    )


_LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Alt-text studio</title></head><body>
<h1>Alt-text studio</h1><p id="error">{error}</p>
<form method="post" action="/login">
<label>Name <input id="username" name="username" autocomplete="username"></label>
<label>Password <input id="password" name="password" type="password"></label>
<button id="login" type="submit">Log in</button></form></body></html>"""

_APP = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Alt-text studio</title></head><body>
<h1>Alt-text studio</h1><p>Signed in as <strong id="user">{name}</strong>
(<span id="status">connecting</span>)</p>
<p id="hold" hidden></p>
<fieldset><legend>Post to</legend><div id="platforms"></div></fieldset>
<p id="message"></p>
<button id="job" type="button">Generate captions</button>
<form method="post" action="/logout"><button id="logout" type="submit">Log out</button></form>
<script type="module">
import {{ HubClient }} from "{hub}/client/navigation.js";
const $ = (id) => document.getElementById(id);
const hub = new HubClient({options});
window.hub = hub;
hub.addEventListener("status", (e) => {{ $("status").textContent = e.detail.status; }});
hub.addEventListener("state", (e) => {{
  const state = e.detail;
  $("platforms").replaceChildren(...state.platforms.map((p) => {{
    const label = document.createElement("label");
    label.className = "platform";
    label.dataset.id = p.id;
    const input = document.createElement("input");
    input.type = "radio"; input.name = "platform"; input.value = p.id;
    input.checked = p.id === state.active;
    label.append(input, ` ${{p.name}} (@${{p.username}})`);
    return label;
  }}));
}});
hub.addEventListener("hold", (e) => {{
  $("hold").hidden = !e.detail;
  $("hold").textContent = e.detail ? `Busy: ${{e.detail.reason}}` : "";
}});
hub.addEventListener("rejected", (e) => {{ $("message").textContent = e.detail.message; }});
hub.addEventListener("session", (e) => {{
  if (e.detail.kind === "ended") location.href = "/";
}});
$("platforms").addEventListener("change", (e) => hub.switchPlatform(Number(e.target.value)));
$("job").addEventListener("click", () => fetch("/job", {{ method: "POST" }}));
</script></body></html>"""


def main() -> None:
    """Serve the host app."""
    parser = argparse.ArgumentParser(description="A minimal host app beside the hub.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    hub_url = os.environ.get("HUB_URL", "http://127.0.0.1:8000")
    uvicorn.run(create_app(hub_url, os.environ["HUB_API_KEY"]), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
