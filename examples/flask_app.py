"""A sync, server-rendered host app in Flask beside the hub: its own logins and accounts, the hub
for the active platform.

    HUB_API_KEY=change-me HUB_ALLOWED_ORIGINS=http://127.0.0.1:9000 hub serve     # the hub
    HUB_URL=http://127.0.0.1:8000 HUB_API_KEY=change-me python examples/flask_app.py

then open http://127.0.0.1:9000 and log in as ines / ines-studio-pw (examples/README.md).

What it shows (docs/integration.md, "Sync, server-rendered apps"):

- one ``HostClient`` for the whole process (a pool of kept-alive connections, shared by
  Flask's threads), never one per request;
- at login: upsert the person, mirror their accounts (each with this app's own id as
  ``external_id``), mint a hub session and hand its token to the page as the hub's cookie;
- each page is rendered with the active platform read server-side (``hub.state``), mapped back
  to this app's account by ``external_id``; navigation.js then keeps the dropdown live;
- a caption job holds the person's switches while it runs, for the account that was active
  when it started: no switch can land half-way through;
- logout ends this app's session and the hub's, whichever side ends first: the page calls
  ``POST /logout`` with fetch and navigates only when it has answered, so the cookie-clearing
  response is never cancelled (the logout race), and ``/login`` shows the form to anyone whose
  hub session is gone, so an expired or revoked hub session cannot loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import os
import secrets
import threading
import time
from typing import Any

from flask import Flask, Response, abort, redirect, request, session

from platform_hub_client import HostApiError, HostClient, PlatformMirrored

HUB_COOKIE = "hub_session"  # the cookie the hub reads


@dataclasses.dataclass(frozen=True)
class Account:
    """A platform account as this app stores it; ``id`` is this app's own key."""

    id: int
    name: str
    kind: str
    instance_url: str
    username: str


@dataclasses.dataclass
class Person:
    password: str
    accounts: list[Account]
    captions: list[str] = dataclasses.field(default_factory=list)  # what the job wrote


PEOPLE = {
    "ines": Person(
        "ines-studio-pw",
        [
            Account(101, "Photos", "pixelfed", "https://pixelfed.social", "ines"),
            Account(102, "Toots", "mastodon", "https://mastodon.social", "ines"),
        ],
    ),
}


def create_app(hub_url: str, api_key: str, *, job_seconds: float = 3.0) -> Flask:
    """Build the app, talking to the hub at ``hub_url`` with ``api_key``."""
    app = Flask(__name__)
    app.secret_key = os.environ.get("APP_SECRET_KEY") or secrets.token_hex(32)
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")
    hub = HostClient(hub_url, api_key, timeout=5.0)  # one per process, shared by every request
    app.extensions["hub"] = hub  # for whoever stops the app: app.extensions["hub"].close()
    hub_url = hub_url.rstrip("/")
    # The hub session of each login of this app: its id, to end it at logout. A dict here;
    # your session store in a real app.
    live: dict[str, int] = {}
    # Whose caption job runs: a hold is the hub's, and placing one replaces any other, so
    # this app lets one job run per person (a second click is refused, not a second hold).
    jobs: set[str] = set()
    jobs_lock = threading.Lock()

    def signed_in() -> str | None:
        """The person of this request, if this app's session and the hub's both live."""
        name, login = session.get("name"), session.get("login")
        if not isinstance(name, str) or login not in live:
            return None
        return name

    @app.get("/")
    def index() -> Any:
        name = signed_in()
        if name is None:
            return redirect("/login")
        try:
            current = hub.state(name)  # one cheap read (about 2 ms): render the truth
        except HostApiError as error:
            if error.code == "unknown_user":
                return redirect("/login")
            current = None  # the hub is down: render without it, the page says so
        shown = "unknown: the hub cannot be reached" if current is None else "none yet"
        if current is not None and (platform := current.state.platform(current.state.active)):
            account = _account(name, platform.external_id)
            shown = account.name if account else platform.name
        return _page(
            name=name,
            active=shown,
            captions=PEOPLE[name].captions,
            options={"url": "ws" + hub_url.removeprefix("http") + "/ws", "api": hub_url + "/api"},
            hub=hub_url,
        )

    @app.get("/login")
    def login_form() -> Any:
        if signed_in() is not None:
            return redirect("/")
        session.clear()  # whatever is left of an ended login
        return _LOGIN.format(error=html.escape(request.args.get("ended", "")))

    @app.post("/login")
    def login() -> Any:
        name = request.form.get("username", "")
        person = PEOPLE.get(name)
        password = request.form.get("password", "")
        if person is None or not secrets.compare_digest(person.password, password):
            return _LOGIN.format(error="Wrong name or password."), 401
        try:
            hub.upsert_user(name)  # no password: the hub trusts this app's login
            hub.mirror_platforms(name, [_mirrored(a) for a in person.accounts])
            minted = hub.mint_session(
                name, user_agent=request.headers.get("User-Agent"), ip=request.remote_addr
            )
        except HostApiError as error:
            return _LOGIN.format(error=html.escape(f"The hub is unavailable ({error.code}).")), 503
        login_id = secrets.token_urlsafe(16)
        live[login_id] = minted.session.id
        session.clear()
        session.update(name=name, login=login_id)
        response = redirect("/", 303)
        # Cookies belong to a host, not a port: the browser sends this one to the hub too.
        response.set_cookie(HUB_COOKIE, minted.token, httponly=True, samesite="Lax")
        return response

    @app.post("/logout")
    def logout() -> Any:
        # This app's session ends first, here on the server: even if the browser never sees
        # this response, the cookie it keeps names a login that is gone.
        hub_session = live.pop(session.get("login", ""), None)
        name = session.get("name")
        session.clear()
        if hub_session is not None and isinstance(name, str):
            # Every tab of the hub session ends, told "logout". HostApiError: it ended already
            # (expired, revoked), or the hub is down and it expires by itself.
            with contextlib.suppress(HostApiError):
                hub.revoke_session(name, hub_session, reason="logout")
        response = Response(status=204)
        response.delete_cookie(HUB_COOKIE)
        return response

    @app.post("/captions")
    def captions() -> Any:
        name = signed_in()
        if name is None:
            abort(401)
        with jobs_lock:
            if name in jobs:
                return {"error": "busy", "message": "Captions are being generated."}, 409
            jobs.add(name)
        try:
            # Held until released: switches are refused "busy" with this reason meanwhile, so
            # the platform of this answer stays the active one for the whole job.
            held = hub.hold(name, "Generating captions", ttl_s=job_seconds + 60)
        except HostApiError as error:
            jobs.discard(name)
            return {"error": error.code, "message": error.message}, 503
        platform = held.state.platform(held.state.active)
        account = _account(name, platform.external_id if platform else None)
        if account is None:
            end_job(name)
            return {"error": "no_platform", "message": "Choose a platform first."}, 409

        def job() -> None:
            try:
                time.sleep(job_seconds)  # the job itself
                PEOPLE[name].captions.append(f"Captions for {account.name} (#{account.id})")
            finally:
                end_job(name)

        threading.Thread(target=job, daemon=True).start()
        return {"account": account.id, "name": account.name}, 202

    def end_job(name: str) -> None:
        try:
            hub.release(name)
        except HostApiError:
            pass  # the hub is down: the hold ends by itself at its ttl
        finally:
            jobs.discard(name)

    return app


def _mirrored(account: Account) -> PlatformMirrored:
    return PlatformMirrored(
        name=account.name,
        kind="pixelfed" if account.kind == "pixelfed" else "mastodon",
        instance_url=account.instance_url,
        username=account.username,
        external_id=str(account.id),
    )


def _account(name: str, external_id: str | None) -> Account | None:
    """This app's account behind a hub platform: by the external id it was mirrored with."""
    return next((a for a in PEOPLE[name].accounts if str(a.id) == external_id), None)


def _page(*, name: str, active: str, captions: list[str], options: dict[str, str], hub: str) -> str:
    return _APP.format(
        name=html.escape(name),
        active=html.escape(active),
        captions="".join(f"<li>{html.escape(c)}</li>" for c in captions),
        options=html.escape(json.dumps(options), quote=False),
        hub=html.escape(hub),
    )


_LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Caption studio</title></head><body>
<h1>Caption studio</h1><p id="error">{error}</p>
<form method="post" action="/login">
<label>Name <input id="username" name="username" autocomplete="username"></label>
<label>Password <input id="password" name="password" type="password"></label>
<button id="login" type="submit">Log in</button></form></body></html>"""

_APP = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Caption studio</title></head><body>
<h1>Caption studio</h1>
<p>Signed in as <strong id="user">{name}</strong> (<span id="status">connecting…</span>)</p>
<p>Posting to <strong id="active">{active}</strong>
<select id="platform" aria-label="Platform" disabled></select></p>
<p id="hold" hidden></p><p id="message"></p>
<button id="job" type="button">Generate captions</button>
<ul id="captions">{captions}</ul>
<button id="logout" type="button">Log out</button>
<script type="module">
import {{ HubClient }} from "{hub}/client/navigation.js";
const $ = (id) => document.getElementById(id);
const hub = new HubClient({options});
window.hub = hub;
const STATUS = {{ connecting: "connecting…", open: "live", reconnecting: "reconnecting…",
  degraded: "live, without WebSocket", ended: "signed out", closed: "closed" }};
hub.addEventListener("status", (e) => {{ $("status").textContent = STATUS[e.detail.status]; }});
hub.addEventListener("state", (e) => {{
  const state = e.detail;
  $("platform").replaceChildren(...state.platforms.map((p) => {{
    const option = new Option(p.name, String(p.id), false, p.id === state.active);
    option.dataset.externalId = p.external_id ?? "";
    return option;
  }}));
  const active = state.platforms.find((p) => p.id === state.active);
  $("active").textContent = active ? active.name : "none yet";
  $("platform").disabled = $("job").disabled = Boolean(hub.hold);
}});
hub.addEventListener("hold", (e) => {{
  $("hold").hidden = !e.detail;
  $("hold").textContent = e.detail ? `Busy: ${{e.detail.reason}}` : "";
  $("platform").disabled = $("job").disabled = Boolean(e.detail);
  if (!e.detail) location.reload();  // the job is done: render its captions
}});
hub.addEventListener("rejected", (e) => {{
  // A switch refused as busy: the hold's banner says it already.
  $("message").textContent = e.detail.reason === "busy" ? "" : e.detail.message;
}});
$("platform").addEventListener("change", (e) => hub.switchPlatform(Number(e.target.value)));
$("job").addEventListener("click", async () => {{
  const answer = await fetch("/captions", {{ method: "POST" }});
  if (!answer.ok) $("message").textContent = (await answer.json()).message;
}});

// Leaving, whoever starts it: this page's button, or the hub ending the session (a logout
// in another tab, expiry, revocation). POST /logout first and navigate only once it has
// answered, so its cookie-clearing response is never cancelled by the navigation.
let leaving = null;
function leave(why) {{
  leaving ??= fetch("/logout", {{ method: "POST" }})
    .catch(() => undefined)
    .then(() => location.assign("/login?ended=" + encodeURIComponent(why)));
  return leaving;
}}
$("logout").addEventListener("click", () => leave("You are signed out."));
hub.addEventListener("session", (e) => {{
  if (e.detail.kind === "ended") leave(e.detail.message);
}});
</script></body></html>"""


def main() -> None:
    """Serve the app with Flask's threaded server (use a WSGI server in production)."""
    hub_url = os.environ.get("HUB_URL", "http://127.0.0.1:8000")
    app = create_app(hub_url, os.environ["HUB_API_KEY"])
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "9000")), threaded=True)


if __name__ == "__main__":
    main()
