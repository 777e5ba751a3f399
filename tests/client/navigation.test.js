// Unit tests of the client's logic with node's test runner and fake timers: `node --test tests/client/`.
// The behaviour in a browser, against a real hub, is tested in tests/browser/.
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, mock, test } from "node:test";

import {
  Backoff,
  Debouncer,
  Switcher,
  backoffDelay,
  describePlatform,
  mergeState,
  randomId,
} from "../../client/navigation.js";

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

describe("randomId", () => {
  const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
  const TAB_ID = /^[A-Za-z0-9_-]{1,64}$/; // server/web/app.py's rule; request ids: 1 to 64 characters
  // What a page over plain HTTP off localhost has: getRandomValues, and no randomUUID.
  const insecure = { getRandomValues: (bytes) => globalThis.crypto.getRandomValues(bytes) };
  const filled = (value) => ({ getRandomValues: (bytes) => bytes.fill(value) });

  test("makes UUIDs (version 4) with getRandomValues alone, valid tab and request ids", () => {
    const ids = new Set(Array.from({ length: 1000 }, () => randomId(insecure)));
    assert.equal(ids.size, 1000);
    for (const id of ids) {
      assert.match(id, UUID_V4);
      assert.match(id, TAB_ID);
    }
  });

  test("sets the version and variant bits and keeps the rest", () => {
    assert.equal(randomId(filled(0x00)), "00000000-0000-4000-8000-000000000000");
    assert.equal(randomId(filled(0xff)), "ffffffff-ffff-4fff-bfff-ffffffffffff");
  });

  test("the Switcher's default request ids never call crypto.randomUUID", () => {
    const randomUUID = mock.method(globalThis.crypto, "randomUUID", () => {
      throw new TypeError("crypto.randomUUID is not a function");
    });
    try {
      const sent = [];
      const switcher = new Switcher({
        debounceMs: 0,
        switchTimeoutMs: 1000,
        send: (request) => sent.push(request),
        confirmed: () => ({ version: 0, active: 1, platforms: [] }),
        changed: () => {},
      });
      switcher.choose(2);
      mock.timers.tick(0);
      assert.match(sent[0].id, UUID_V4);
      assert.equal(randomUUID.mock.callCount(), 0);
    } finally {
      randomUUID.mock.restore();
    }
  });
});

describe("describePlatform", () => {
  const long = "W".repeat(5000);
  const cut = (text) => `${text.slice(0, 119)}…`;

  test("shows a platform's name, account and the host of its instance", () => {
    const platform = { id: 1, name: "Pixelfed", instance_url: "https://pixelfed.social/@a", username: "alice" };
    assert.deepEqual(describePlatform(platform), { name: "Pixelfed", username: "alice", host: "pixelfed.social" });
    assert.equal(describePlatform({ instance_url: "https://x.example:8443" }).host, "x.example:8443");
    assert.equal(describePlatform({ instance_url: "https://bücher.example" }).host, "xn--bcher-kva.example");
  });

  test("shows a URL that does not parse as written instead of throwing", () => {
    for (const url of ["https://x:99999", "https://", "not a url", "http://[::1", "https://a b.example"]) {
      assert.equal(describePlatform({ instance_url: url }).host, url);
    }
    assert.equal(describePlatform({ instance_url: "javascript:alert(1)" }).host, "javascript:alert(1)");
  });

  test("falls back for empty, missing and wrongly typed fields", () => {
    const empty = { name: "Unnamed platform", username: "", host: "" };
    for (const platform of [{}, null, undefined, 42, "x", [], { name: "", username: "", instance_url: "" }]) {
      assert.deepEqual(describePlatform(platform), empty, JSON.stringify(platform));
    }
    assert.deepEqual(describePlatform({ name: "   ", username: 42, instance_url: ["https://a.example"] }), {
      name: "Unnamed platform",
      username: "42",
      host: "",
    });
    assert.equal(describePlatform({ name: { toString: null } }).name, "Unnamed platform");
    assert.equal(describePlatform({ name: true }).name, "true");
  });

  test("cuts very long text at 120 characters, never inside a surrogate pair", () => {
    const shown = describePlatform({ name: long, username: long, instance_url: `https://${"a".repeat(3000)}.example` });
    assert.deepEqual(shown, { name: cut(long), username: cut(long), host: cut("a".repeat(3000)) });
    const emoji = describePlatform({ name: "😀".repeat(500) }).name;
    assert.equal(Array.from(emoji).length, 120);
    assert.ok(emoji.isWellFormed());
  });

  test("turns control characters into spaces and keeps other Unicode as it is", () => {
    assert.equal(describePlatform({ name: "a\u0000b\nc\u0085d\u2028e\u0007" }).name, "a b c d e");
    const odd = "\u202egnp.exe\u202c مرحبا 👩‍👩‍👧 Z̤͔ͧ̑̓ \ud83d";
    assert.equal(describePlatform({ name: odd }).name, odd);
    assert.equal(describePlatform({ name: "<img src=x onerror=alert(1)>" }).name, "<img src=x onerror=alert(1)>");
  });
});
