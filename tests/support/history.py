"""Check what tabs did and saw (tests/support/recording.py) against the hub's promises.

A history holds, per user, every switch a tab sent (request id, base, platform, when) with its
answer (switched at a version, rejected with a state, or none because the connection was lost),
every state a tab received, and the database's final state. ``check`` returns every violation:

- **linearizability** as a versioned compare-and-set register. The hub assigns version = base + 1,
  so the order of writes is fixed by their versions; each write ``v`` must take effect at an
  instant ``t_v`` inside its request's window, ``t_1 <= t_2 <= ...``, and every read (a ``hello``
  snapshot, a stale rejection, a no-op switch) of version ``r`` must fall between ``t_r`` and
  ``t_{r+1}``. Those are bounds on each ``t_v``, so one pass that takes each ``t_v`` as early as
  its bounds allow decides it. A switch with no answer may or may not have happened (with the
  switch log, what it did is known).
- a no-op switch (to the platform already active, from the current base) is accepted at its
  unchanged base: it is a read of ``base`` showing the platform it asked for, not a write;
- one accepted write per version, versions contiguous from 1 to the database's version, and
  no acknowledged switch lost;
- every state seen with version ``v`` shows the platform that the write of ``v`` chose;
- each connection receives strictly increasing versions, and each tab never goes back;
- every tab still connected at the end shows the database's state;
- no tab receives another user's state (it would name platforms the user does not have);
- no request id is applied twice: a resend gets the logged decision again, and with the switch
  log, its writes hold each version once, no-ops sit at their base, and each row matches its
  answer;
- platform changes are writes too: each takes a version of its own (none in the switch log),
  within its call, and shows the active platform it answered with; an unanswered one may
  have written any version, or none;
- no switch is accepted (as a write) while a hold is surely in force, and none is refused
  busy while no hold can be.

``brute_force`` decides linearizability by trying every order; it exists to test ``check`` on
small histories.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from tests.support.recording import Change, Delivery, History, Operation, Read, UserHistory

__all__ = ["Report", "brute_force", "check", "check_user"]


@dataclass
class Report:
    """What ``check`` found, and the size of what it checked."""

    violations: list[str]
    users: int = 0
    operations: int = 0
    acknowledged: int = 0
    noops: int = 0
    rejected: int = 0
    unanswered: int = 0
    resent: int = 0  # answers to resends after the first answer
    deliveries: int = 0
    versions: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        verdict = "ok" if self.ok else f"{len(self.violations)} violations"
        return (
            f"{verdict}: {self.users} users, {self.operations} switches "
            f"({self.acknowledged} acknowledged of which {self.noops} no-ops, "
            f"{self.rejected} rejected, {self.unanswered} unanswered, "
            f"{self.resent} resends answered again), {self.versions} versions, "
            f"{self.deliveries} states delivered"
        )


def check(history: History) -> Report:
    """Check every user's history; return the report with all violations."""
    report = Report(violations=[], users=len(history.users))
    owner: dict[int, int] = {}
    for user in history.users.values():
        for platform in user.platforms:
            owner[platform] = user.user
    for user in history.users.values():
        report.violations.extend(check_user(user, owner))
        report.operations += len(user.operations)
        report.acknowledged += sum(op.outcome == "switched" for op in user.operations)
        report.noops += sum(
            op.outcome == "switched" and op.version == op.base for op in user.operations
        )
        report.rejected += sum(op.outcome == "rejected" for op in user.operations)
        report.unanswered += sum(op.outcome is None for op in user.operations)
        report.resent += sum(len(op.repeats) for op in user.operations)
        report.deliveries += len(user.deliveries)
        report.versions += user.final[0] if user.final else 0
    return report


def check_user(user: UserHistory, owner: dict[int, int] | None = None) -> list[str]:
    """Return the violations in one user's history (the user's platforms come from ``owner``)."""
    problems: list[str] = []
    say = problems.append
    who = f"user {user.user}"
    ops = user.operations

    # One decision per request id (a resend carries the same id and gets the same answer).
    by_request: dict[str, Operation] = {}
    for op in ops:
        if op.request in by_request:
            say(f"{who}: request {op.request} recorded twice")
        by_request[op.request] = op
        if op.decided:
            # A resend refused without a look at the log (unavailable, rate_limited) is no
            # decision; any other answer must be the first one again.
            for again in op.repeats:
                if again.decided and again != op.answer:
                    say(f"{who}: {op.request} was {op.answer}, then {again} when resent")

    writes: dict[int, Operation] = {}
    reads = list(user.reads)
    for op in ops:
        accepted = _accepted_at(op, user.log)
        said = "acknowledged" if op.outcome else "logged"
        if accepted is None:
            pass
        elif accepted == op.base:
            # A no-op (the platform was already active): it read version base, wrote nothing.
            reads.append(Read(op.tab, op.sent, op.end, op.base, op.platform, "no-op"))
        elif accepted != op.base + 1:
            say(f"{who}: {op.request} {said} at version {accepted} from base {op.base}")
        elif accepted in writes:
            twice = "acknowledged" if op.outcome and writes[accepted].outcome else "accepted"
            say(
                f"{who}: version {accepted} {twice} twice "
                f"({writes[accepted].request} and {op.request})"
            )
        else:
            writes[accepted] = op
        if op.outcome == "rejected" and op.reason == "stale" and op.version is not None:
            assert op.answered is not None
            if op.version == op.base:
                say(f"{who}: {op.request} rejected as stale although its base is current")
            reads.append(Read(op.tab, op.sent, op.answered, op.version, op.active, "stale"))

    # Platform changes write versions too (not in the switch log).
    changed: dict[int, Change] = {}
    for change in user.changes:
        if change.version is None:
            continue
        other = writes.get(change.version) or changed.get(change.version)
        if other is not None:
            first = other.request if isinstance(other, Operation) else other.what
            say(f"{who}: version {change.version} written by {first} and by {change.what}")
        else:
            changed[change.version] = change
    maybe_changed = [change for change in user.changes if change.version is None]

    # Which platform each version shows, from every source; they must agree.
    platform_of: dict[int, int | None] = {}
    if user.initial_active is not None:
        platform_of[0] = user.initial_active
    sources: list[tuple[int, int | None, str]] = [
        (version, op.platform, f"the switch {op.request}") for version, op in writes.items()
    ]
    sources += [(r.version, r.active, f"a {r.what} read by {r.tab}") for r in reads]
    sources += [(v, c.active, f"the platform change {c.what}") for v, c in changed.items()]
    sources += [(d.version, d.active, f"a state received by {d.tab}") for d in user.deliveries]
    for op in ops:
        if op.outcome == "rejected" and op.reason != "stale" and op.version is not None:
            sources.append((op.version, op.active, f"the rejection of {op.request}"))
    if user.final:
        sources.append((user.final[0], user.final[1], "the database"))
    for version, active, source in sources:
        known = platform_of.setdefault(version, active)
        if known != active:
            say(f"{who}: version {version} shows platform {active} in {source}, {known} elsewhere")

    # Versions are contiguous and every acknowledged one is present.
    last = user.final[0] if user.final else max(platform_of, default=0)
    for version, _, source in sources:
        if version > last:
            say(f"{who}: version {version} from {source} is beyond the final version {last}")

    # Who wrote each version: its accepted switch, else an unanswered one that fits (without
    # the log; with it, an unanswered switch that is not in it was not accepted).
    unanswered: dict[int, list[Operation]] = {}
    for op in ops:
        if op.unconfirmed and user.log is None:
            unanswered.setdefault(op.base + 1, []).append(op)
    lower = [-math.inf] * (last + 2)
    upper = [math.inf] * (last + 2)
    for version in range(1, last + 1):
        writer: Operation | Change | None = writes.get(version) or changed.get(version)
        if writer is None:
            fits: list[Operation | Change] = [
                op
                for op in unanswered.get(version, [])
                if platform_of.get(version, op.platform) == op.platform
            ]
            fits += maybe_changed
            if not fits:
                say(f"{who}: no switch could have written version {version}")
                continue
            writer = min(fits, key=lambda op: op.sent)
        lower[version], upper[version] = writer.sent, writer.end

    # Reads bound the instants of the writes around them; deliveries follow their writes.
    for read in reads:
        if 1 <= read.version <= last:
            upper[read.version] = min(upper[read.version], read.end)
        if read.version + 1 <= last:
            lower[read.version + 1] = max(lower[read.version + 1], read.start)
    for delivery in user.deliveries:
        if 1 <= delivery.version <= last:
            upper[delivery.version] = min(upper[delivery.version], delivery.at)
    instant = -math.inf
    for version in range(1, last + 1):
        instant = max(instant, lower[version])
        if instant > upper[version]:
            say(
                f"{who}: not linearizable at version {version}: it cannot take effect after "
                f"{instant:.6f} (what precedes it) and by {upper[version]:.6f} (what saw it)"
            )
            instant = upper[version]

    # Each connection sees strictly increasing versions; a tab never goes back.
    tabs: dict[str, list[Delivery]] = {}
    for delivery in user.deliveries:
        tabs.setdefault(delivery.tab, []).append(delivery)
        if owner is not None:
            strangers = {p for p in delivery.platforms if owner.get(p, user.user) != user.user}
            if strangers:
                say(f"{who}: tab {delivery.tab} received other users' platforms {strangers}")
    for tab, seen in tabs.items():
        for before, after in itertools.pairwise(seen):
            same = after.connection == before.connection
            if after.version < before.version or (same and after.version == before.version):
                say(f"{who}: tab {tab} went from version {before.version} to {after.version}")
        if tab in user.open_tabs and user.final and seen:
            end = (seen[-1].version, seen[-1].active)
            if end != user.final:
                say(f"{who}: tab {tab} ends on {end}, the database on {user.final}")

    # Holds: no write while one is surely in force, no busy refusal while none can be.
    for hold in user.holds:
        for op in ops:
            accepted = _accepted_at(op, user.log)
            inside = hold.placed <= op.sent and op.end <= hold.releasing
            if accepted is not None and accepted != op.base and inside:
                say(f"{who}: {op.request} was accepted at {accepted} while a hold was in force")
    for op in ops:
        answered = op.answered
        if op.reason != "busy" or answered is None:
            continue
        if not any(h.placing <= answered and op.sent <= h.released for h in user.holds):
            say(f"{who}: {op.request} was refused busy while no hold could be in force")

    if user.log is not None:
        problems.extend(
            _check_log(who, user.log, ops, by_request, last, set(changed), len(maybe_changed))
        )
    return problems


def _accepted_at(op: Operation, log: dict[str, int] | None) -> int | None:
    """Return the version ``op`` was accepted at, from its answer or else from the switch log."""
    if op.outcome == "switched":
        return op.version
    if op.unconfirmed and log is not None:
        return log.get(op.request)
    return None


def _check_log(
    who: str,
    log: dict[str, int],
    ops: list[Operation],
    by_request: dict[str, Operation],
    last: int,
    changed: set[int],
    maybe_changed: int,
) -> list[str]:
    """Return where the switch log's accepted rows disagree with the versions or the answers.

    The versions platform changes wrote (``changed``) are not in the log; up to
    ``maybe_changed`` more may be missing from it (unanswered changes).
    """
    problems: list[str] = []
    # A row at its request's base is a no-op, which wrote nothing; every other row (one of an
    # unknown request too) is a write, and the writes hold each version once.
    written = sorted(
        version
        for request, version in log.items()
        if request not in by_request or version != by_request[request].base
    )
    expected = [version for version in range(1, last + 1) if version not in changed]
    missing = set(expected) - set(written)
    if (
        len(written) != len(set(written))
        or not set(written) <= set(expected)
        or len(missing) > maybe_changed
    ):
        problems.append(
            f"{who}: the switch log holds versions {written} for writes, not {expected}"
            f" (1..{last} but those of platform changes)"
        )
    for op in ops:
        logged = log.get(op.request)
        if op.outcome == "switched" and logged != op.version:
            problems.append(f"{who}: {op.request} acknowledged at {op.version}, logged at {logged}")
        if op.outcome == "rejected" and not op.unconfirmed and logged is not None:
            problems.append(f"{who}: {op.request} was rejected but the log has it at {logged}")
    return problems


# The reference: try every order (small histories only).


def brute_force(user: UserHistory) -> bool:
    """Decide linearizability of ``user``'s operations and reads by trying every order."""
    events: list[tuple[float, float, str, Any]] = []
    for op in user.operations:
        events.append((op.sent, op.end, "op", op))
    for read in user.reads:
        events.append((read.start, read.end, "read", read))
    for delivery in user.deliveries:
        events.append((delivery.at, delivery.at, "delivery", delivery))
    final = user.final
    initial = user.initial_active
    if initial is None:  # unknown: take it from what was seen at version 0
        initial = next((r.active for r in user.reads if r.version == 0), None)
    start = (0, initial)

    def steps(state: tuple[int, int | None], kind: str, item: Any) -> list[tuple[int, int | None]]:
        version, active = state
        if kind == "read":
            return [state] if (version, active) == (item.version, item.active) else []
        if kind == "delivery":
            return [state] if version >= item.version else []
        op: Operation = item
        if op.outcome == "switched":
            if op.version == op.base:
                ok = version == op.base and active == op.platform
                return [state] if ok else []
            fits = op.version == op.base + 1 and version == op.base
            return [(op.base + 1, op.platform)] if fits else []
        if op.outcome == "rejected":
            if op.reason != "stale":
                return [state]
            return (
                [state]
                if version != op.base
                and (version, active)
                == (
                    op.version,
                    op.active,
                )
                else []
            )
        # Unanswered: it happened (if it could) or it did not.
        options = [state]
        if version == op.base:
            options.append((op.base + 1, op.platform))
        return options

    def search(state: tuple[int, int | None], left: tuple[int, ...]) -> bool:
        if not left:
            return final is None or state == final
        earliest_end = min(events[i][1] for i in left)
        for i in left:
            begin, _, kind, item = events[i]
            if begin > earliest_end:
                continue  # another remaining event finished before this one began
            rest = tuple(j for j in left if j != i)
            if any(search(after, rest) for after in steps(state, kind, item)):
                return True
        return False

    return search(start, tuple(range(len(events))))
