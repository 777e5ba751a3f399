"""Login sessions end to end: login, logout, logout-all, expiry, warning and collection."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, Row, func, insert, select, update
from websockets.exceptions import InvalidStatus

from server import db
from server.errors import AuthenticationError
from server.protocol import SessionEndReason
from server.settings import Settings
from server.storage import expiry, sessions
from server.storage.expiry import handle_of
from server.storage.sessions import collect
from server.storage.users import add_user
from server.web.credentials import COOKIE
from tests.conftest import TIMEOUT, MakeSettings, RunningHub, make_settings, serve, session_ended


@pytest.fixture
def settings(settings_on_each_engine: Settings) -> Settings:
    """Every test here runs on a fresh SQLite file and on a fresh PostgreSQL database."""
    return settings_on_each_engine


async def session_rows(running: RunningHub) -> list[Row[Any]]:
    def work(connection: Connection) -> list[Row[Any]]:
        return list(connection.execute(select(db.login_sessions)))

    return await running.database.read(work)


async def test_login_sets_a_fresh_http_only_cookie_and_stores_only_a_hash(
    running: RunningHub,
) -> None:
    """Each login issues a new token in an HttpOnly, SameSite=Lax cookie; only its hash is kept."""
    async with running.http() as client:
        first = await client.post(
            "/api/login", json={"username": "alice", "password": "alice-demo-pw"}
        )
        second = await client.post(
            "/api/login", json={"username": "alice", "password": "alice-demo-pw"}
        )
    assert first.status_code == second.status_code == 200
    body = first.json()
    assert body["user"]["name"] == "alice" and body["expires_at"].endswith("Z")
    cookie = first.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Path=/" in cookie and "Secure" not in cookie
    tokens = [first.cookies[COOKIE], second.cookies[COOKIE]]
    assert tokens[0] != tokens[1] and len(tokens[0]) >= 43  # 256 bits, base64url
    stored = {row.token_hash for row in await session_rows(running)}
    assert stored == {hashlib.sha256(t.encode()).hexdigest() for t in tokens}


async def test_unknown_user_and_wrong_password_look_the_same(running: RunningHub) -> None:
    """Both failures get the same 401 invalid_credentials body."""
    async with running.http() as client:
        wrong = await client.post("/api/login", json={"username": "alice", "password": "nope-nope"})
        unknown = await client.post(
            "/api/login", json={"username": "mallory", "password": "nope-nope"}
        )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["error"] == "invalid_credentials"
    assert COOKIE not in wrong.cookies


async def test_logout_ends_every_tab_of_that_session_only(running: RunningHub) -> None:
    """Logout sends session_ended and 4001 to the session's tabs within 1 s; others stay."""
    token = await running.login("alice")
    other_device = await running.login("alice")
    tabs = [await running.tab(token, f"t{i}") for i in range(3)]
    survivor = await running.tab(other_device, "other")

    async with running.http(token) as client:
        response = await client.post("/api/logout")
    assert response.status_code == 200 and response.json() == {"sessions": 1, "tabs": 3}

    for tab in tabs:
        code, messages = await tab.closed(within=1.0)
        assert code == 4001
        assert messages == [session_ended("logout")]
    await survivor.send({"type": "ping"})
    assert await survivor.receive() == {"type": "pong"}
    async with running.http(token) as client:
        after = await client.get("/api/state")
    assert after.status_code == 401 and after.json()["reason"] == "logout"
    async with running.http(other_device) as client:
        assert (await client.get("/api/state")).status_code == 200
    await survivor.close()


async def test_a_page_ends_another_device_of_its_person_and_no_one_elses(
    running: RunningHub,
) -> None:
    """POST /api/sessions/{handle}/revoke from the phone ends the laptop's tabs with
    session_ended (revoked) and 4001; the phone's and Bob's stay. Bob's session, an ended
    one, the session's numeric id and handles that name no session (odd characters, too
    long) are 404 alike, and a request from a foreign origin is refused before anything
    ends."""
    phone, laptop = await running.login("alice"), await running.login("alice")
    bob = await running.login("bob")
    rows = {row.token_hash: row for row in await session_rows(running)}
    laptop_row = rows[sessions.token_hash(laptop)]
    laptop_id = handle_of(laptop_row.token_hash)
    bob_id = handle_of(rows[sessions.token_hash(bob)].token_hash)
    laptop_tabs = [await running.tab(laptop, f"l{n}") for n in range(2)]
    stayers = [await running.tab(phone, "p"), await running.tab(bob, "b")]

    async with running.http(phone, Origin="http://evil.example") as client:
        forged = await client.post(f"/api/sessions/{laptop_id}/revoke")
    assert forged.status_code == 403 and forged.json()["error"] == "forbidden_origin"
    async with running.http(phone) as client:
        wrongs = (bob_id, laptop_row.id, "x" * 33, "a.b", "%00", laptop_id.upper() + "!")
        for wrong in wrongs:
            refused = await client.post(f"/api/sessions/{wrong}/revoke")
            assert refused.status_code == 404, (wrong, refused.text)
        assert refused.json()["error"] in {"unknown_session", "not_found"}
        foreign = await client.post(f"/api/sessions/{bob_id}/revoke")
        assert foreign.json()["error"] == "unknown_session"
        response = await client.post(f"/api/sessions/{laptop_id}/revoke")
        assert response.status_code == 200 and response.json() == {"sessions": 1, "tabs": 2}
        again = await client.post(f"/api/sessions/{laptop_id}/revoke")
        assert again.status_code == 404 and again.json()["error"] == "unknown_session"
    for tab in laptop_tabs:
        code, messages = await tab.closed(within=1.0)
        assert code == 4001 and messages == [session_ended("revoked")]
    for tab in stayers:
        await tab.send({"type": "ping"})
        assert await tab.receive() == {"type": "pong"}
        await tab.close()
    async with running.http(laptop) as client:
        ended = await client.get("/api/state")
    assert ended.status_code == 401 and ended.json()["reason"] == "revoked"


async def test_logout_all_ends_every_session_of_the_user(running: RunningHub) -> None:
    """Logout-all ends the tabs of all the user's sessions, and no other user's."""
    phone, laptop = await running.login("alice"), await running.login("alice")
    tabs = [
        await running.tab(phone, "p"),
        await running.tab(laptop, "l1"),
        await running.tab(laptop, "l2"),
    ]
    bob = await running.tab(await running.login("bob"), "b")

    async with running.http(phone) as client:
        response = await client.post("/api/logout-all")
    assert response.json() == {"sessions": 2, "tabs": 3}
    for tab in tabs:
        assert (await tab.closed(within=1.0))[0] == 4001
    await bob.send({"type": "ping"})
    assert await bob.receive() == {"type": "pong"}
    for token in (phone, laptop):
        async with running.http(token) as client:
            assert (await client.post("/api/logout")).status_code == 401
    await bob.close()


async def test_logout_without_a_session_is_refused(running: RunningHub) -> None:
    """Logout needs a session: without one it is 401 and ends nothing."""
    tab = await running.tab(await running.login("alice"), "a")
    async with running.http() as client:
        response = await client.post("/api/logout")
    assert response.status_code == 401 and response.json()["reason"] == "missing"
    await tab.send({"type": "ping"})
    assert await tab.receive() == {"type": "pong"}
    await tab.close()


async def test_idle_expiry_warns_then_ends_tabs(make_on_each_engine: MakeSettings) -> None:
    """With a short idle TTL a tab is warned, then told the session expired, then closed 4001."""
    settings = make_on_each_engine(session_idle_s=1.5, session_warning_s=1.0, session_touch_s=60)
    async with serve(settings) as running:
        token = await running.login("alice")
        tab = await running.tab(token, "a")
        warning = await tab.receive_type("session_expiring", within=3)
        assert warning["expires_at"] == tab.hello["session"]["expires_at"]
        code, messages = await tab.closed(within=3)
        assert code == 4001 and messages[-1] == session_ended("expired")
        async with running.http(token) as client:
            response = await client.get("/api/state")
        assert response.status_code == 401 and response.json()["reason"] == "expired"
        # Reconnecting with the expired session is refused before the upgrade.
        try:
            await running.tab(token, "again")
        except InvalidStatus as refused:
            assert refused.response.status_code == 401
        else:
            raise AssertionError("an expired session was let in")


async def test_activity_slides_idle_expiry_but_not_past_absolute(
    make_on_each_engine: MakeSettings,
) -> None:
    """Requests extend the idle expiry (writes throttled); the absolute expiry caps it."""
    settings = make_on_each_engine(
        session_idle_s=2.0,
        session_absolute_s=3.0,
        session_touch_s=0.2,
        session_warning_s=0,
    )
    async with serve(settings) as running:
        token = await running.login("alice")
        async with running.http(token) as client:
            first = (await client.get("/api/state")).json()["session"]["expires_at"]
            await asyncio.sleep(0.5)
            second = (await client.get("/api/state")).json()["session"]["expires_at"]
            assert second > first
            extended = await client.post("/api/session/extend")
            assert extended.status_code == 200
            for _ in range(6):
                await asyncio.sleep(0.5)
                response = await client.get("/api/state")
                if response.status_code == 401:
                    break
            assert response.status_code == 401 and response.json()["reason"] == "expired"
        [row] = await session_rows(running)
        assert expiry.expires_at(row) == row.absolute_expires_at


async def test_a_storm_of_handshakes_slides_each_stale_session_in_shared_writes(
    running: RunningHub,
) -> None:
    """40 tabs of four sessions last seen an hour ago connect at once (a restart's reconnect
    storm): every session is slid, every hello carries its session's slid expiry, and the
    slides took fewer write transactions than there were tabs (they were shared; before,
    each handshake wrote its own, and the connect rate fell to a third)."""
    tokens = [await running.login(name) for name in ("alice", "alice", "bob", "carol")]
    hour_ago = running.database.clock() - dt.timedelta(hours=1)

    def age(connection: Connection) -> None:
        connection.execute(update(db.login_sessions).values(last_seen_at=hour_ago))

    await running.database.write(age)
    before = {row.token_hash: row.idle_expires_at for row in await session_rows(running)}
    async with asyncio.timeout(TIMEOUT):
        tabs = await asyncio.gather(*(running.tab(tokens[n % 4], f"t{n}") for n in range(40)))
    rows = {row.token_hash: row for row in await session_rows(running)}
    for n, tab in enumerate(tabs):
        row = rows[sessions.token_hash(tokens[n % 4])]
        assert row.last_seen_at > hour_ago and row.idle_expires_at > before[row.token_hash]
        assert tab.hello["session"]["expires_at"] == sessions.format_time(row.idle_expires_at)
    extends = running.database._group_reads["session_extends"]
    print(f"\n40 stale handshakes: {extends.reads} slide transactions, {extends.keys} slides")
    assert extends.reads < 40 and extends.keys < 40
    for tab in tabs:
        await tab.close()


async def test_extend_slides_live_sessions_only(running: RunningHub) -> None:
    """Among the ids asked, only live sessions are slid: a revoked one is answered with its
    reason and not written, an unknown id and the ids at the edges of a bigint are left out.
    A handshake whose session was revoked between its read and its slide is refused with
    that reason (it once got a hello, then at once session_ended)."""
    live = await sessions.authenticate(running.database, await running.login("alice"))
    revoked = await sessions.authenticate(running.database, await running.login("bob"))
    await sessions.revoke(running.database, revoked.id, SessionEndReason.LOGOUT)
    was = {row.id: row for row in await session_rows(running)}
    found = await expiry.extend(running.database, [revoked.id, live.id, 0, -(2**63), 2**63 - 1])
    assert set(found) == {live.id, revoked.id} and found[revoked.id] == SessionEndReason.LOGOUT
    slid = found[live.id]
    assert isinstance(slid, dt.datetime) and slid > live.expires_at
    now = {row.id: row for row in await session_rows(running)}
    assert now[revoked.id] == was[revoked.id]
    assert now[live.id].idle_expires_at == found[live.id]
    with pytest.raises(AuthenticationError) as refused:
        await sessions.extend(running.database, revoked)
    assert refused.value.reason == "logout"


async def test_a_session_that_cannot_be_slid_now_still_gets_its_hello(
    make_on_each_engine: MakeSettings,
) -> None:
    """A stale session whose row another transaction holds (PostgreSQL: a row lock; SQLite:
    another process's write lock) is admitted with its expiry as it was: the slide skips the
    row (PostgreSQL) or gives up after busy_timeout (SQLite) instead of waiting with every
    handshake of its batch, or failing them with 503."""
    settings = make_on_each_engine(sqlite_busy_timeout_ms=300)
    async with serve(settings) as running:
        token = await running.login("alice")
        hour_ago = running.database.clock() - dt.timedelta(hours=1)

        def age(connection: Connection) -> None:
            connection.execute(update(db.login_sessions).values(last_seen_at=hour_ago))

        await running.database.write(age)
        [row] = await session_rows(running)
        async with contextlib.AsyncExitStack() as held:
            if settings.is_sqlite:
                locker = sqlite3.connect(settings.database_url.split("///", 1)[1])
                locker.isolation_level = None
                locker.execute("BEGIN IMMEDIATE")
                held.callback(locker.close)
                held.callback(locker.execute, "ROLLBACK")
            else:
                connection = await held.enter_async_context(running.database.engine.begin())
                locked = select(db.login_sessions.c.id).where(db.login_sessions.c.id == row.id)
                await connection.execute(locked.with_for_update())
            tab = await running.tab(token, "a")
        assert tab.hello["session"]["expires_at"] == sessions.format_time(expiry.expires_at(row))
        [after] = await session_rows(running)
        assert after.last_seen_at == row.last_seen_at
        await tab.close()


async def test_collection_deletes_ended_sessions_and_old_switch_log(
    make_on_each_engine: MakeSettings,
) -> None:
    """The collector deletes revoked and expired sessions and keeps the live one."""
    settings = make_on_each_engine(session_idle_s=0.5, session_touch_s=60)
    async with serve(settings) as running:
        expired = await running.login("alice")
        revoked = await running.login("bob")
        async with running.http(revoked) as client:
            await client.post("/api/logout")
        await asyncio.sleep(0.6)
        live = await running.login("carol")
        assert len(await session_rows(running)) == 3

        collected = await collect(running.database)

        assert collected.sessions == 2
        rows = await session_rows(running)
        assert [row.user_id for row in rows] == [3]
        for token in (expired, revoked):
            async with running.http(token) as client:
                response = await client.get("/api/state")
            assert response.status_code == 401 and response.json()["reason"] == "invalid"
        async with running.http(live) as client:
            assert (await client.get("/api/state")).status_code == 200

        def count(connection: Connection) -> int:
            return int(connection.scalar(select(func.count()).select_from(db.login_sessions)) or 0)

        assert await running.database.read(count) == 1


async def test_collector_runs_by_itself(make_on_each_engine: MakeSettings) -> None:
    """The background collector removes ended sessions without being asked."""
    settings = make_on_each_engine(collect_interval_s=0.2)
    async with serve(settings) as running:
        token = await running.login("alice")
        async with running.http(token) as client:
            await client.post("/api/logout")
        async with asyncio.timeout(5):
            while await session_rows(running):  # noqa: ASYNC110 - polls the database
                await asyncio.sleep(0.1)


async def test_a_user_without_a_password_gets_sessions_only_from_open_session(
    running: RunningHub,
) -> None:
    """add_user(password=None) cannot log in; open_session mints a working session for it."""
    user_id = await add_user(running.database, "dave", None)
    async with running.http() as http:
        refused = await http.post("/api/login", json={"username": "dave", "password": "!"})
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_credentials"

    token, login = await sessions.open_session(running.database, user_id, user_agent="test")
    assert (login.user_id, login.user_name) == (user_id, "dave")
    async with running.http(token) as http:
        state = await http.get("/api/state")
    assert state.status_code == 200 and state.json()["user"]["name"] == "dave"


async def test_failed_logins_are_throttled_per_name_then_refill(tmp_path: Path) -> None:
    """Past the burst of failed logins for a name, every login for it gets 429 with
    Retry-After, the right password too (so guessing learns nothing); another name is
    untouched; once the bucket refills, the right password logs in."""
    settings = make_settings(tmp_path, login_failure_burst=3, login_failure_rate=2.0)
    async with serve(settings) as running, running.http() as http:

        async def attempt(name: str, password: str) -> httpx.Response:
            return await http.post("/api/login", json={"username": name, "password": password})

        assert [(await attempt("alice", "wrong-pw")).status_code for _ in range(3)] == [401] * 3
        throttled = await attempt("alice", "alice-demo-pw")
        assert throttled.status_code == 429 and throttled.json()["error"] == "rate_limited"
        assert int(throttled.headers["Retry-After"]) >= 1
        assert (await attempt("bob", "bob-demo-pw")).status_code == 200
        await asyncio.sleep(0.6)  # 2 tokens a second: one is back
        assert (await attempt("alice", "alice-demo-pw")).status_code == 200


async def test_concurrent_guesses_meet_the_same_limit_as_sequential_ones(tmp_path: Path) -> None:
    """60 wrong guesses for one name sent at once: at most the burst get a password check
    (401), every other one 429 with Retry-After; the right password is then throttled too,
    and a successful login is refunded, so it never uses up the budget."""
    settings = make_settings(tmp_path, login_failure_burst=10, login_failure_rate=0.01)
    async with serve(settings) as running, running.http() as http:

        async def attempt(name: str, password: str) -> httpx.Response:
            return await http.post("/api/login", json={"username": name, "password": password})

        for _ in range(15):  # successes are refunded: far past the burst, still 200
            assert (await attempt("bob", "bob-demo-pw")).status_code == 200
        answers = await asyncio.gather(*(attempt("alice", f"guess-{n}") for n in range(60)))
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [401] * 10 + [429] * 50, statuses
        assert all(int(a.headers["Retry-After"]) >= 1 for a in answers if a.status_code == 429)
        assert (await attempt("alice", "alice-demo-pw")).status_code == 429


async def test_password_checks_beyond_the_queue_are_answered_503_at_once(tmp_path: Path) -> None:
    """With one password check at a time and eight waiting, a burst of logins from many
    names gets its checks in turn and 503 with Retry-After beyond the queue: never an
    unbounded pile of scrypt work."""
    settings = make_settings(
        tmp_path, login_concurrency=1, login_failure_burst=100, password_cost=2**16
    )
    async with serve(settings) as running, running.http() as http:
        answers = await asyncio.gather(
            *(
                http.post("/api/login", json={"username": f"u{n}", "password": "x" * 8})
                for n in range(40)
            )
        )
        statuses = [a.status_code for a in answers]
        assert set(statuses) == {401, 503}, statuses
        assert statuses.count(401) >= 9  # one checking, eight waiting, at least
        assert all(a.headers["Retry-After"] == "1" for a in answers if a.status_code == 503)
        # Nothing is left waiting: a login now gets its check at once.
        assert (
            await http.post("/api/login", json={"username": "bob", "password": "bob-demo-pw"})
        ).status_code == 200


async def test_a_hash_of_another_cost_verifies_and_is_rehashed_at_login(
    make_on_each_engine: MakeSettings,
) -> None:
    """A password hashed at a lower cost (an older hub, or a raised setting) still logs in,
    and the login stores a hash at the configured cost."""
    async with serve(make_on_each_engine(password_cost=2**11)) as running:
        await running.login("alice")
    async with serve(make_on_each_engine(password_cost=2**13)) as running:

        def stored(connection: Connection) -> str:
            hashed: str | None = connection.scalar(
                select(db.users.c.password_hash).where(db.users.c.name == "alice")
            )
            assert hashed is not None
            return hashed

        assert (await running.database.read(stored)).split("$")[1] == str(2**11)
        await running.login("alice")
        assert (await running.database.read(stored)).split("$")[1] == str(2**13)
        await running.login("alice")


async def test_a_login_past_the_session_cap_ends_the_users_oldest_session(
    make_on_each_engine: MakeSettings,
) -> None:
    """With at most 3 live sessions per user, a fourth login ends the oldest: its tab gets
    session_ended (revoked) and 4001, the other three stay live, other users are untouched."""
    async with serve(make_on_each_engine(max_sessions_per_user=3)) as running:
        tokens = [await running.login("alice") for _ in range(3)]
        oldest = await running.tab(tokens[0], "oldest")
        newest = await running.tab(tokens[2], "newest")
        bob = await running.login("bob")
        tokens.append(await running.login("alice"))
        code, messages = await oldest.closed()
        assert code == 4001
        assert session_ended("revoked") in messages
        for token, status in zip(tokens, [401, 200, 200, 200], strict=True):
            async with running.http(token) as client:
                assert (await client.get("/api/state")).status_code == status
        async with running.http(bob) as client:
            assert (await client.get("/api/state")).status_code == 200
        live = [r for r in await session_rows(running) if r.revoked_at is None]
        assert sorted(r.user_id for r in live) == [1, 1, 1, 2]
        await newest.send({"type": "ping"})
        assert await newest.receive() == {"type": "pong"}
        await newest.close()


async def test_revoking_thousands_of_sessions_at_once_reaches_every_tab(
    make_on_each_engine: MakeSettings,
) -> None:
    """A revoke-all of 2,000 sessions (its notice once was one NOTIFY, too long for
    PostgreSQL: a 500) answers 200 and ends the tabs of the first and the last."""
    settings = make_on_each_engine(max_sessions_per_user=5000, api_key="k")
    async with serve(settings) as running:
        first = await running.login("alice")
        now = running.database.clock()

        def many(connection: Connection) -> None:
            rows = [
                {
                    "user_id": 1,
                    "token_hash": hashlib.sha256(f"bulk-{n}".encode()).hexdigest(),
                    "created_at": now,
                    "last_seen_at": now,
                    "idle_expires_at": now + dt.timedelta(hours=1),
                    "absolute_expires_at": now + dt.timedelta(hours=2),
                }
                for n in range(1998)
            ]
            connection.execute(insert(db.login_sessions), rows)

        await running.database.write(many)
        last = await running.login("alice")
        tabs = [await running.tab(first, "first"), await running.tab(last, "last")]
        async with running.http(authorization="Bearer k") as api:
            answer = await api.delete("/api/host/users/alice/sessions")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"sessions": 2000, "tabs": 2}
        for tab in tabs:
            assert (await tab.closed())[0] == 4001
