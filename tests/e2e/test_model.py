"""A Hypothesis state machine drives the hub against a small reference model.

The hub, its store and sessions run for real on a SQLite file, with a clock the test moves.
Tabs are the hub's Transport interface recording frames (the network is not under test
here; tests/web/test_app.py and the scenarios cover it). Rules: log in, tabs join and leave,
switches current and stale, to unknown and inactive platforms, retries of earlier requests,
logout, time passing (expiry), collection, platforms deactivated and reactivated. After every
step the database, the model and every open tab agree.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)
from sqlalchemy import Connection, select, update

from server import db
from server.db import Database
from server.errors import AuthenticationError
from server.hub import Hub
from server.protocol import SessionEndReason, UserInfo
from server.storage import sessions
from server.storage.sessions import format_time
from server.storage.switches import SqlStore
from server.storage.users import seed_demo
from server.tab import Tab
from server.web import tasks
from tests.conftest import make_settings
from tests.support.transport import RecordingTransport

SESSION_S = 3600.0  # idle == absolute: sliding never moves the expiry, the model stays simple
LOG_TTL_S = 600.0
UNKNOWN_PLATFORM = 10**6


@dataclass
class ModelPlatform:
    id: int
    default: bool
    active: bool = True


@dataclass
class ModelUser:
    id: int
    name: str
    platforms: list[ModelPlatform]
    version: int = 0
    stored: int | None = None

    def effective(self) -> int | None:
        live = [p for p in sorted(self.platforms, key=lambda p: p.id) if p.active]
        if self.version > 0 and any(p.id == self.stored for p in live):
            return self.stored
        default = next((p for p in live if p.default), None)
        return default.id if default else (live[0].id if live else None)

    def view(self) -> tuple[int, int | None, list[int]]:
        live = sorted(p.id for p in self.platforms if p.active)
        return self.version, self.effective(), live


@dataclass
class ModelSession:
    id: int
    user: ModelUser
    token: str
    expires: dt.datetime
    revoked: bool = False
    collected: bool = False


@dataclass
class ModelTab:
    name: str
    session: ModelSession
    tab: Tab
    transport: RecordingTransport
    open: bool = True


@dataclass
class Decision:
    user: ModelUser
    request: dict[str, Any]
    answer: tuple[str, Any]  # ("switched", version) or ("rejected", reason)
    at: dt.datetime
    known: bool = True  # False once collection forgot it


@dataclass
class Clock:
    now: dt.datetime = field(default_factory=lambda: dt.datetime(2026, 1, 1, tzinfo=dt.UTC))

    def __call__(self) -> dt.datetime:
        return self.now


class HubModel(RuleBasedStateMachine):
    sessions_ = Bundle("sessions")
    tabs_ = Bundle("tabs")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.directory = Path(tempfile.mkdtemp(prefix="hub-model-"))
        self.clock = Clock()
        self.settings = make_settings(
            self.directory,
            session_idle_s=SESSION_S,
            session_absolute_s=SESSION_S,
            session_warning_s=0,
            switch_log_ttl_s=LOG_TTL_S,
        )
        self.database = Database(self.settings, clock=self.clock)
        self.hub = Hub(SqlStore(self.database), messages_per_second=1e9, message_burst=10**9)
        self.users: dict[str, ModelUser] = {}
        self.tabs: list[ModelTab] = []
        self.decisions: list[Decision] = []
        self.counter = 0

    def run(self, awaitable: Any) -> Any:
        result = self.loop.run_until_complete(awaitable)
        # Let every tab's writer hand its frames to its transport.
        for _ in range(10):
            self.loop.run_until_complete(asyncio.sleep(0))
        return result

    def teardown(self) -> None:
        try:
            for tab in self.tabs:
                if tab.open:
                    self.run(self.hub.leave(tab.tab))
            self.run(self.database.dispose())
        finally:
            # After a failed step some writers may still wait: stop them before the loop goes.
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.wait(pending))
            self.loop.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    @initialize()
    def seed(self) -> None:
        self.run(self.database.create_schema())
        self.run(seed_demo(self.database))

        def load(connection: Connection) -> list[tuple[int, str, list[tuple[int, bool]]]]:
            users, platforms = db.users, db.platforms
            out = []
            for user in connection.execute(select(users).order_by(users.c.id)).all():
                rows = connection.execute(select(platforms).where(platforms.c.user_id == user.id))
                out.append((user.id, user.name, [(p.id, p.is_default) for p in rows]))
            return out

        for user_id, name, platforms in self.run(self.database.read(load)):
            self.users[name] = ModelUser(
                user_id, name, [ModelPlatform(pid, default) for pid, default in platforms]
            )

    # Sessions.

    @rule(target=sessions_, name=st.sampled_from(["alice", "bob"]))
    def log_in(self, name: str) -> ModelSession:
        user = self.users[name]
        token, login = self.run(sessions.open_session(self.database, user.id))
        expires = self.clock.now + dt.timedelta(seconds=SESSION_S)
        return ModelSession(login.id, user, token, expires)

    def live(self, session: ModelSession) -> bool:
        return not session.revoked and not session.collected and self.clock.now < session.expires

    def end_reason(self, session: ModelSession) -> str:
        if session.collected:
            return "revoked"
        return "logout" if session.revoked else "expired"

    @rule(target=tabs_, session=sessions_)
    def join(self, session: ModelSession) -> ModelTab | None:
        self.counter += 1
        name = f"tab{self.counter}"
        try:
            login = self.run(sessions.authenticate(self.database, session.token))
        except AuthenticationError as error:
            assert not self.live(session), error
            return None
        assert self.live(session)
        transport = RecordingTransport(takes_at_once=False)
        tab = self.run(
            self.hub.join(
                transport,
                tab_id=name,
                user=UserInfo(id=session.user.id, name=session.user.name),
                session_id=session.id,
                expires_at=format_time(login.expires_at),
            )
        )
        hello = transport.frames[0]
        assert hello["type"] == "hello"
        assert self.state_of(hello["state"]) == session.user.view()
        model_tab = ModelTab(name, session, tab, transport)
        self.tabs.append(model_tab)
        return model_tab

    @rule(tab=consumes(tabs_))
    def leave(self, tab: ModelTab | None) -> None:
        if tab is None or not tab.open:
            return
        self.run(self.hub.leave(tab.tab))
        tab.open = False

    @rule(session=sessions_)
    def log_out(self, session: ModelSession) -> None:
        if not self.live(session):
            return
        self.run(sessions.revoke(self.database, session.id, SessionEndReason.LOGOUT))
        self.hub.end_session(session.id, SessionEndReason.LOGOUT)
        self.run(asyncio.sleep(0))
        session.revoked = True
        self.expect_ended(session, "logout")

    @rule(seconds=st.sampled_from([1.0, 60.0, 601.0, 1800.0, 3601.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += dt.timedelta(seconds=seconds)
        self.run(tasks.check(self.database, self.hub))
        for session in {t.session.id: t.session for t in self.tabs if t.open}.values():
            if not self.live(session):
                self.expect_ended(session, self.end_reason(session))

    @rule()
    def collect(self) -> None:
        self.run(sessions.collect(self.database))
        cutoff = self.clock.now - dt.timedelta(seconds=LOG_TTL_S)
        for decision in self.decisions:
            if decision.at < cutoff:
                decision.known = False
        for tab in self.tabs:
            if not self.live(tab.session):
                tab.session.collected = True

    # Platforms.

    @rule(name=st.sampled_from(["alice", "bob"]), index=st.integers(0, 3), active=st.booleans())
    def set_platform_active(self, name: str, index: int, active: bool) -> None:
        user = self.users[name]
        platform = user.platforms[index % len(user.platforms)]

        def work(connection: Connection) -> None:
            platforms = db.platforms
            connection.execute(
                update(platforms).where(platforms.c.id == platform.id).values(is_active=active)
            )

        self.run(self.database.write(work))
        platform.active = active

    # Switching.

    @rule(tab=tabs_, index=st.integers(0, 4), stale=st.booleans())
    def switch(self, tab: ModelTab | None, index: int, stale: bool) -> None:
        if tab is None or not tab.open:
            return
        user = tab.session.user
        ids = [p.id for p in user.platforms] + [UNKNOWN_PLATFORM, self.foreign(user)]
        base = max(0, user.version - 1) if stale else user.version
        self.counter += 1
        request = {
            "type": "switch",
            "id": f"r{self.counter}",
            "platform": ids[index % len(ids)],
            "base": base,
        }
        self.send(tab, request, self.decide(user, request))

    @rule(tab=tabs_, data=st.data())
    def retry(self, tab: ModelTab | None, data: st.DataObject) -> None:
        if tab is None or not tab.open:
            return
        mine = [d for d in self.decisions if d.user is tab.session.user]
        if not mine:
            return
        decision = data.draw(st.sampled_from(mine))
        expected = (
            decision.answer if decision.known else self.decide(decision.user, decision.request)
        )
        self.send(tab, decision.request, expected, remember=not decision.known)

    def foreign(self, user: ModelUser) -> int:
        other = next(u for u in self.users.values() if u is not user)
        return other.platforms[0].id

    def decide(self, user: ModelUser, request: dict[str, Any]) -> tuple[str, Any]:
        """What the hub must answer (and do) for a new request, if the session is live."""
        platform = next((p for p in user.platforms if p.id == request["platform"]), None)
        if platform is None:
            return ("rejected", "unknown_platform")
        if not platform.active:
            return ("rejected", "inactive_platform")
        if request["base"] != user.version:
            return ("rejected", "stale")
        if user.effective() == platform.id:
            return ("switched", user.version)
        return ("switched", user.version + 1)

    def send(
        self,
        tab: ModelTab,
        request: dict[str, Any],
        expected: tuple[str, Any],
        remember: bool = True,
    ) -> None:
        session, user = tab.session, tab.session.user
        seen = len(tab.transport.frames)
        self.run(self.hub.receive(tab.tab, json.dumps(request)))
        if not self.live(session):
            self.expect_ended(session, self.end_reason(session))
            return
        answers = [
            f
            for f in tab.transport.frames[seen:]
            if f["type"] in {"switched", "rejected"} and f["id"] == request["id"]
        ]
        assert len(answers) == 1, tab.transport.frames[seen:]
        answer = answers[0]
        got = (
            answer["type"],
            answer["version"] if answer["type"] == "switched" else answer["reason"],
        )
        assert got == expected, (request, got, expected, user.view())
        if expected[0] == "switched" and expected[1] == user.version + 1:
            user.version, user.stored = expected[1], request["platform"]
        if remember:
            self.decisions.append(Decision(user, request, expected, self.clock.now))

    def expect_ended(self, session: ModelSession, reason: str) -> None:
        for tab in self.tabs:
            if tab.session is session and tab.open:
                ended = [f for f in tab.transport.frames if f["type"] == "session_ended"]
                assert ended and ended[-1]["reason"] == reason, (tab.name, tab.transport.frames)
                assert tab.transport.closed == 4001
                self.run(self.hub.leave(tab.tab))
                tab.open = False

    # Agreement.

    @staticmethod
    def state_of(state: dict[str, Any]) -> tuple[int, int | None, list[int]]:
        return state["version"], state["active"], sorted(p["id"] for p in state["platforms"])

    @invariant()
    def database_agrees(self) -> None:
        if not self.users:
            return
        store = SqlStore(self.database)
        for user in self.users.values():
            state = self.run(store.load_state(user.id))
            assert (state.version, state.active, sorted(p.id for p in state.platforms)) == (
                user.view()
            )

    @invariant()
    def open_tabs_agree(self) -> None:
        for tab in self.tabs:
            if not tab.open:
                continue
            assert tab.transport.closed is None, tab.name
            states = [f["state"] for f in tab.transport.frames if f["type"] in {"hello", "state"}]
            versions = [s["version"] for s in states]
            assert versions == sorted(set(versions)), versions  # strictly increasing
            assert versions[-1] == tab.session.user.version
            assert self.database.checked_out() == 0


HubModel.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_the_hub_agrees_with_its_model = HubModel.TestCase
