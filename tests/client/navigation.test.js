// Unit tests of the client's logic with node's test runner and fake timers: `node --test tests/client/`.
// The behaviour in a browser, against a real hub, is tested in tests/browser/.
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, mock, test } from "node:test";

import { Backoff, Debouncer, Switcher, backoffDelay, mergeState } from "../../client/navigation.js";

beforeEach(() => mock.timers.enable({ apis: ["setTimeout", "setInterval"] }));
afterEach(() => mock.timers.reset());

/** Let resolved promises run their callbacks. */
const settled = () => new Promise((resolve) => setImmediate(resolve));

describe("backoffDelay", () => {
  test("is full jitter: uniform below min(cap, base * 2**attempt)", () => {
    const ceiling = (attempt) => backoffDelay(attempt, 500, 20000, () => 1);
    assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7].map(ceiling), [500, 1000, 2000, 4000, 8000, 16000, 20000, 20000]);
    assert.equal(backoffDelay(3, 500, 20000, () => 0), 0);
    assert.equal(backoffDelay(3, 500, 20000, () => 0.25), 1000);
  });

  test("draws from Math.random by default and stays in range", () => {
    for (let i = 0; i < 1000; i++) {
      const delay = backoffDelay(10, 500, 20000);
      assert.ok(delay >= 0 && delay < 20000, `delay ${delay}`);
    }
  });
});

describe("Backoff", () => {
  const options = { baseDelayMs: 100, maxDelayMs: 1000, healthyAfterMs: 5000 };

  test("grows with each attempt", () => {
    const backoff = new Backoff(options, () => 1);
    assert.deepEqual([1, 2, 3, 4, 5].map(() => backoff.next()), [100, 200, 400, 800, 1000]);
  });

  test("resets only after a connection stays healthy for healthyAfterMs", () => {
    const backoff = new Backoff(options, () => 1);
    backoff.next();
    backoff.next();
    backoff.connected();
    mock.timers.tick(4999);
    backoff.lost(); // dropped just before it proved healthy: keep counting
    assert.equal(backoff.next(), 400);

    backoff.connected();
    mock.timers.tick(5000);
    assert.equal(backoff.attempt, 0);
    assert.equal(backoff.next(), 100);
  });
});

describe("Debouncer", () => {
  test("calls once, with the last value, when pushes pause", () => {
    const calls = [];
    const debouncer = new Debouncer(150, (value) => calls.push(value));
    for (let i = 1; i <= 10; i++) {
      debouncer.push(i);
      mock.timers.tick(100);
    }
    assert.deepEqual(calls, []);
    assert.equal(debouncer.waiting, true);
    mock.timers.tick(50);
    assert.deepEqual(calls, [10]);
    assert.equal(debouncer.waiting, false);
  });

  test("calls again for pushes after a pause, and never after cancel", () => {
    const calls = [];
    const debouncer = new Debouncer(150, (value) => calls.push(value));
    debouncer.push("a");
    mock.timers.tick(150);
    debouncer.push("b");
    mock.timers.tick(150);
    debouncer.push("c");
    debouncer.cancel();
    mock.timers.tick(1000);
    assert.deepEqual(calls, ["a", "b"]);
  });
});

describe("mergeState", () => {
  const at = (version, active = 1) => ({ version, active, platforms: [] });

  test("never goes back to a lower version", () => {
    let shown = null;
    for (const version of [1, 3, 2, 0, 5, 4]) shown = mergeState(shown, at(version));
    assert.equal(shown.version, 5);
  });

  test("takes an equal version (the same state, maybe a fresher platform list)", () => {
    const shown = at(2);
    const same = at(2);
    assert.equal(mergeState(shown, same), same);
  });

  test("ignores nothing", () => {
    const shown = at(2);
    assert.equal(mergeState(shown, null), shown);
    assert.equal(mergeState(null, undefined), null);
  });
});

describe("Switcher", () => {
  function harness({ state = { version: 4, active: 1, platforms: [] }, debounceMs = 150, timeoutMs = 10000 } = {}) {
    const sent = [];
    let changes = 0;
    let counter = 0;
    const h = {
      state,
      sent,
      get changes() {
        return changes;
      },
    };
    h.switcher = new Switcher({
      debounceMs,
      switchTimeoutMs: timeoutMs,
      send: (request) => sent.push({ ...request }),
      confirmed: () => h.state,
      changed: () => changes++,
      newId: () => `r${++counter}`,
    });
    return h;
  }

  test("coalesces rapid choices: only the last is sent, the rest are superseded", async () => {
    const h = harness();
    const decisions = [];
    for (const platform of [2, 3, 2, 3, 2, 3, 2, 3, 2, 3]) {
      h.switcher.choose(platform).then((decision) => decisions.push(decision.reason ?? "ok"));
      mock.timers.tick(50);
    }
    assert.equal(h.switcher.target, 3, "the UI shows the last choice at once");
    assert.deepEqual(h.sent, []);
    mock.timers.tick(150);
    assert.deepEqual(h.sent, [{ id: "r1", platform: 3, base: 4 }]);
    await settled();
    assert.deepEqual(decisions, Array(9).fill("superseded"));

    h.switcher.settle("r1", { ok: true, version: 5, platform: 3 });
    await settled();
    assert.deepEqual(decisions, [...Array(9).fill("superseded"), "ok"]);
    assert.equal(h.switcher.target, null);
  });

  test("keeps at most one switch in flight; the next goes after the answer, on the new base", () => {
    const h = harness({ debounceMs: 0 });
    h.switcher.choose(2);
    mock.timers.tick(0);
    h.switcher.choose(3);
    mock.timers.tick(1000);
    assert.deepEqual(h.sent, [{ id: "r1", platform: 2, base: 4 }]);
    assert.equal(h.switcher.target, 3);

    h.state = { version: 5, active: 2, platforms: [] };
    h.switcher.settle("r1", { ok: true, version: 5, platform: 2 });
    assert.deepEqual(h.sent[1], { id: "r2", platform: 3, base: 5 });
  });

  test("resends the request in flight with the same id", () => {
    const h = harness({ debounceMs: 0 });
    h.switcher.choose(2);
    mock.timers.tick(0);
    h.switcher.resend();
    h.switcher.resend();
    assert.deepEqual(h.sent.map((r) => r.id), ["r1", "r1", "r1"]);
    assert.equal(h.switcher.settle("other", { ok: true }), false, "an unknown id settles nothing");
    assert.equal(h.switcher.settle("r1", { ok: true, version: 5, platform: 2 }), true);
    h.switcher.resend();
    assert.equal(h.sent.length, 3);
  });

  test("rolls back after the timeout and ignores a late answer", async () => {
    const h = harness({ debounceMs: 0, timeoutMs: 3000 });
    const decision = h.switcher.choose(2);
    mock.timers.tick(2999);
    assert.equal(h.switcher.target, 2);
    mock.timers.tick(1);
    assert.equal(h.switcher.target, null);
    assert.equal((await decision).reason, "timeout");
    assert.equal(h.switcher.settle("r1", { ok: true, version: 5, platform: 2 }), false);
  });

  test("sends nothing when the last choice is already active", async () => {
    const h = harness();
    h.switcher.choose(2);
    const last = h.switcher.choose(1);
    mock.timers.tick(150);
    assert.deepEqual(h.sent, []);
    assert.deepEqual(await last, { ok: true, version: 4, platform: 1 });
  });

  test("waits for a first state before sending", () => {
    const h = harness({ state: null, debounceMs: 0 });
    h.switcher.choose(2);
    mock.timers.tick(10);
    assert.deepEqual(h.sent, []);
    h.state = { version: 7, active: 1, platforms: [] };
    h.switcher.next();
    assert.deepEqual(h.sent, [{ id: "r1", platform: 2, base: 7 }]);
  });

  test("cancel answers every choice and clears the target", async () => {
    const h = harness({ debounceMs: 0 });
    const inFlight = h.switcher.choose(2);
    mock.timers.tick(0);
    const queued = h.switcher.choose(3);
    h.switcher.cancel({ ok: false, reason: "ended", message: "The session ended." });
    assert.equal((await inFlight).reason, "ended");
    assert.equal((await queued).reason, "ended");
    assert.equal(h.switcher.target, null);
    mock.timers.tick(100000);
    assert.equal(h.sent.length, 1);
  });
});
