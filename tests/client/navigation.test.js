// Unit tests of the client's logic with node's test runner and fake timers: `node --test tests/client/`.
// The behaviour in a browser, against a real hub, is tested in tests/browser/.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { afterEach, beforeEach, describe, mock, test } from "node:test";

import {
  PROTOCOL,
  Backoff,
  CloseCode,
  Debouncer,
  HttpFallback,
  HubClient,
  Status,
  Switcher,
  backoffDelay,
  describePlatform,
  mergeState,
  randomId,
  restartWindowMs,
} from "../../client/navigation.js";
import { memoryStorage } from "./support.js";

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

describe("restartWindowMs", () => {
  test("reads the window a restart's 1012 names, and 0 from any other reason", () => {
    assert.equal(restartWindowMs("hub restarting; reconnect within 8000 ms"), 8000);
    assert.equal(restartWindowMs("hub restarting; reconnect within 0 ms"), 0);
    for (const other of ["", "hub shutting down", "reconnect within 1e9 ms", "reconnect within -5 ms", "reconnect within 12345678901 ms", undefined, null, 42]) {
      assert.equal(restartWindowMs(other), 0, String(other));
    }
  });

  test("widens the backoff's draw to the window, never past the cap, never below the backoff's own", () => {
    assert.equal(backoffDelay(0, 500, 20000, () => 1, 8000), 8000);
    assert.equal(backoffDelay(0, 500, 20000, () => 0.5, 8000), 4000);
    assert.equal(backoffDelay(0, 500, 20000, () => 1, 600000), 20000);
    assert.equal(backoffDelay(4, 500, 20000, () => 1, 100), 8000);
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
  const TAB_ID = /^[A-Za-z0-9_-]{1,64}$/; // server/web/websocket.py's rule; request ids: 1 to 64 characters
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

// The client against a fake WebSocket and a fake fetch.

/** A WebSocket the test plays the hub on: it records what the client sends and how it closes. */
class FakeWebSocket {
  static OPEN = 1;
  /** @type {FakeWebSocket[]} every socket made, oldest first */
  static made = [];

  constructor(url) {
    this.url = String(url);
    this.readyState = FakeWebSocket.OPEN;
    this.sent = [];
    this.closedWith = null;
    this.onmessage = this.onclose = null;
    FakeWebSocket.made.push(this);
  }

  send(data) {
    this.sent.push(data);
  }

  close(code) {
    this.closedWith = code;
    this.readyState = 3;
  }

  /** The hub sends a frame: an object goes as its JSON, anything else as it is. */
  deliver(frame) {
    const data = typeof frame === "object" && !(frame instanceof ArrayBuffer) ? JSON.stringify(frame) : frame;
    this.onmessage?.({ data });
  }

  /** The connection is gone, with `code` (and the close frame's `reason`). */
  drop(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

const STATE = { version: 3, active: 1, platforms: [{ id: 1 }, { id: 2 }] };
const USER = { id: 7, name: "alice" };

function hello(hub, heartbeatS = 25) {
  return {
    type: "hello",
    protocol: 1,
    tab: hub.tabId,
    user: USER,
    state: STATE,
    session: { expires_at: "2030-01-01T00:00:00Z" },
    heartbeat_s: heartbeatS,
    hold: null,
  };
}

/** A client on fake sockets, and every event it emitted as [type, detail]. */
function connect(options = {}) {
  const hub = new HubClient({ channelName: null, storage: memoryStorage(), ...options });
  const events = [];
  for (const type of ["status", "unknown", "state", "session"]) {
    hub.addEventListener(type, (event) => events.push([type, event.detail]));
  }
  const socket = () => FakeWebSocket.made.at(-1);
  const statuses = () => events.filter(([type]) => type === "status").map(([, detail]) => detail);
  return { hub, events, socket, statuses };
}

/** A fetch answering `GET state` and `POST switch` as the hub would; `calls` records each request. */
function fakeFetch({ state = { status: 200, body: { user: USER, state: STATE, hold: null } } } = {}) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    const request = { url: String(url), method: init.method ?? "GET", init };
    calls.push(request);
    let answer = { status: 404, body: { error: "not_found" } };
    if (request.url.endsWith("/api/state")) answer = state;
    if (request.url.endsWith("/api/switch")) {
      const { id } = JSON.parse(init.body);
      answer = { status: 200, body: { type: "switched", id, version: STATE.version + 1 } };
    }
    return { status: answer.status, ok: answer.status < 400, json: async () => answer.body };
  };
  return { fetch, calls };
}

describe("HubClient", () => {
  const saved = { WebSocket: globalThis.WebSocket, fetch: globalThis.fetch };
  let clients = [];
  let http;

  beforeEach(() => {
    FakeWebSocket.made = [];
    globalThis.WebSocket = FakeWebSocket;
    http = fakeFetch();
    globalThis.fetch = http.fetch;
    clients = [];
  });

  afterEach(() => {
    for (const hub of clients) hub.close();
    mock.restoreAll();
    globalThis.fetch = saved.fetch;
    if (saved.WebSocket === undefined) delete globalThis.WebSocket;
    else globalThis.WebSocket = saved.WebSocket;
  });

  /** connect(), closed after the test. */
  function client(options) {
    const made = connect(options);
    clients.push(made.hub);
    return made;
  }

  describe("CloseCode and the heartbeat", () => {
    test("is frozen, names 4000 (PONG_TIMEOUT, the client's own) and gives each code one name", () => {
      assert.ok(Object.isFrozen(CloseCode));
      assert.equal(CloseCode.PONG_TIMEOUT, 4000);
      const codes = Object.values(CloseCode);
      assert.equal(new Set(codes).size, codes.length);
    });

    test("agrees with server/protocol.py's CloseCode wherever either names a code", () => {
      const source = readFileSync(new URL("../../server/protocol.py", import.meta.url), "utf8");
      const block = source.split("class CloseCode(")[1].split("\nclass ")[0];
      const hub = Object.fromEntries(Array.from(block.matchAll(/^ {4}([A-Z_]+) = (\d+)$/gm), ([, name, code]) => [name, Number(code)]));
      assert.ok(Object.keys(hub).length >= 5, "server/protocol.py's CloseCode was found");
      for (const [name, code] of Object.entries(hub)) {
        if (name in CloseCode) assert.equal(CloseCode[name], code, name);
        const ours = Object.keys(CloseCode).find((key) => CloseCode[key] === code);
        if (ours) assert.equal(ours, name, `code ${code}`);
      }
    });

    test("a link silent for pongTimeoutMs after a ping is closed with PONG_TIMEOUT and replaced", () => {
      const { hub, socket, statuses } = client({ pongTimeoutMs: 1000, baseDelayMs: 10, maxDelayMs: 10 });
      const first = socket();
      first.deliver(hello(hub, 5));
      mock.timers.tick(5000);
      assert.deepEqual(first.sent, ['{"type":"ping"}']);
      mock.timers.tick(999);
      assert.equal(first.closedWith, null);
      mock.timers.tick(1);
      assert.equal(first.closedWith, CloseCode.PONG_TIMEOUT);
      assert.equal(hub.status, Status.RECONNECTING);
      assert.deepEqual(statuses().at(-1), { status: Status.RECONNECTING, previous: Status.OPEN });
      mock.timers.tick(10);
      assert.equal(FakeWebSocket.made.length, 2, "a new connection replaces the dead one");
    });

    test("any frame after a ping, even one that is not a message, keeps the link", () => {
      mock.method(console, "warn", () => {});
      const { hub, socket } = client({ pongTimeoutMs: 1000 });
      socket().deliver(hello(hub, 5));
      mock.timers.tick(5000);
      mock.timers.tick(900);
      socket().deliver("not json");
      mock.timers.tick(4000);
      assert.equal(socket().closedWith, null);
      assert.equal(hub.status, Status.OPEN);
    });

    test("a restart's 1012 spreads the reconnect over the window it names; without one, the backoff", () => {
      mock.method(Math, "random", () => 0.99);
      const { hub, socket } = client({});
      socket().deliver(hello(hub));
      socket().drop(CloseCode.SERVICE_RESTART, "hub restarting; reconnect within 8000 ms");
      mock.timers.tick(7919);
      assert.equal(FakeWebSocket.made.length, 1, "not before its draw over the 8 s window");
      mock.timers.tick(1);
      assert.equal(FakeWebSocket.made.length, 2);
      socket().deliver(hello(hub));
      socket().drop(CloseCode.SERVICE_RESTART, "hub restarting; reconnect within 8000 ms");
      mock.timers.tick(7920);
      assert.equal(FakeWebSocket.made.length, 3, "the next restart draws over its window again");
      socket().drop(CloseCode.ABNORMAL); // that try failed (the hub still down): the backoff goes on
      mock.timers.tick(1979);
      assert.equal(FakeWebSocket.made.length, 3);
      mock.timers.tick(1);
      assert.equal(FakeWebSocket.made.length, 4, "0.99 of the third attempt's 2 s");
      socket().deliver(hello(hub));
      socket().drop(CloseCode.TRY_AGAIN_LATER, "reconnect within 8000 ms"); // only a 1012's counts
      mock.timers.tick(3960);
      assert.equal(FakeWebSocket.made.length, 5, "0.99 of the fourth attempt's 4 s");
    });

    test("SESSION_ENDED ends the session for good; TAB_REPLACED retries with a new tab id", () => {
      const storage = memoryStorage();
      const { hub, socket, events } = client({ storage, baseDelayMs: 10, maxDelayMs: 10 });
      socket().deliver(hello(hub));
      const tab = hub.tabId;
      socket().drop(CloseCode.TAB_REPLACED);
      assert.notEqual(hub.tabId, tab);
      assert.equal(storage.getItem("platform-hub.tab"), hub.tabId, "the new id is kept for reloads");
      assert.equal(hub.status, Status.RECONNECTING);
      mock.timers.tick(10);
      assert.equal(FakeWebSocket.made.length, 2);
      assert.equal(new URL(socket().url).searchParams.get("tab"), hub.tabId);
      socket().deliver(hello(hub));

      socket().deliver({ type: "session_ended", reason: "logout", message: "Signed out by your app." });
      socket().drop(CloseCode.SESSION_ENDED);
      assert.equal(hub.status, Status.ENDED);
      assert.deepEqual(events.at(-1), ["session", { kind: "ended", reason: "logout", message: "Signed out by your app." }]);
      mock.timers.tick(100000);
      assert.equal(FakeWebSocket.made.length, 2, "4001 is terminal: no reconnect");
    });
  });

  test("presence: the hello's devices, then each presence message, as hub.presence and one event per change", () => {
    const { hub, socket } = client({});
    const told = [];
    hub.addEventListener("presence", (event) => told.push(event.detail));
    assert.deepEqual(hub.presence, [], "empty before the first hello");
    const laptop = { session: "Xk3_q9-aZ0pL2mNc", description: "Chrome on macOS", signed_in_at: "2026-01-01T00:00:00.000Z", last_active_at: "2026-01-01T00:00:00.000Z", tabs: 1, current: true };
    const phone = { ...laptop, session: "b7Yt0Qw-Lm2_Zx9e", description: "Mobile Safari on iOS", tabs: 0, current: false };
    socket().deliver({ ...hello(hub), devices: [phone, laptop] });
    assert.deepEqual(hub.presence, [phone, laptop]);
    socket().deliver({ type: "presence", devices: [{ ...phone, tabs: 2 }, laptop] });
    socket().deliver({ type: "presence", devices: [{ ...phone, tabs: 2 }, laptop] }); // no change: no event
    socket().deliver({ type: "presence", devices: "not a list" }); // ignored
    assert.deepEqual(told, [[phone, laptop], [{ ...phone, tabs: 2 }, laptop]]);
    assert.deepEqual(hub.presence, [{ ...phone, tabs: 2 }, laptop]);
  });

  test("revokeDevice posts to the device's session handle and refuses what is not one", async () => {
    const { hub } = client({});
    const calls = [];
    globalThis.fetch = async (url, init = {}) => {
      calls.push([String(url), init.method]);
      return { status: 200, ok: true, json: async () => ({ sessions: 1, tabs: 2 }) };
    };
    assert.deepEqual(await hub.revokeDevice("b7Yt0Qw-Lm2_Zx9e"), { sessions: 1, tabs: 2 });
    assert.deepEqual(calls, [[new URL("/api/sessions/b7Yt0Qw-Lm2_Zx9e/revoke", "http://localhost/").href, "POST"]]);
    for (const wrong of [9, "", "../logout", "a/b", "a?b", "x".repeat(33), null, undefined]) {
      await assert.rejects(hub.revokeDevice(wrong), /session handle/);
    }
    assert.equal(calls.length, 1);
  });

  test("a 4001 without session_ended is a revocation, in the client's own words", () => {
    const { socket, events } = client({});
    socket().deliver(hello(clients[0]));
    socket().drop(CloseCode.SESSION_ENDED);
    assert.deepEqual(events.at(-1), [
      "session",
      { kind: "ended", reason: "revoked", message: "Your session was ended. Sign in again to continue." },
    ]);
  });

  test("a hello of another protocol version is reported once, and the client keeps working", () => {
    const errors = mock.method(console, "error", () => {});
    const { hub, socket } = client({ baseDelayMs: 10, maxDelayMs: 10 });
    const events = [];
    hub.addEventListener("error", (event) => events.push(["error", event.detail]));
    assert.equal(PROTOCOL, 1);
    socket().deliver({ ...hello(hub), protocol: 2 });
    const reported = events.filter(([type]) => type === "error");
    assert.equal(reported.length, 1);
    assert.equal(reported[0][1].code, "protocol_mismatch");
    assert.match(reported[0][1].message, /protocol 2; this client speaks 1/);
    assert.equal(errors.mock.callCount(), 1);
    assert.equal(hub.status, Status.OPEN);
    socket().drop(CloseCode.SERVICE_RESTART);
    mock.timers.tick(10);
    socket().deliver({ ...hello(hub), protocol: 2 });
    assert.equal(events.filter(([type]) => type === "error").length, 1, "once per client");
    socket().deliver(hello(hub)); // the same protocol: nothing to say
    assert.equal(events.filter(([type]) => type === "error").length, 1);
  });

  test("a session the probe finds ended says it in the person's words, reason kept", async () => {
    http = fakeFetch({ state: { status: 401, body: { error: "unauthenticated", reason: "revoked", message: "The session was revoked; log in again." } } });
    globalThis.fetch = http.fetch;
    const { socket, events } = client({});
    socket().drop(CloseCode.ABNORMAL); // a failed attempt: the client asks GET state
    for (let i = 0; i < 5; i++) await Promise.resolve();
    assert.deepEqual(events.at(-1), [
      "session",
      { kind: "ended", reason: "revoked", message: "Your session was ended. Sign in again to continue." },
    ]);
  });

  test("shareConnection without Web Locks (or BroadcastChannel) falls back to a socket of its own", () => {
    assert.equal(globalThis.navigator?.locks, undefined, "node has no Web Locks");
    const { hub, socket } = client({ shareConnection: true });
    assert.equal(hub.link, null);
    assert.equal(FakeWebSocket.made.length, 1, "connected at once, as without the option");
    socket().deliver(hello(hub));
    assert.equal(hub.status, Status.OPEN);
  });

  describe("tab ids", () => {
    const tabOf = (socket) => new URL(socket.url).searchParams.get("tab");

    test("two clients in one page get ids of their own; the first keeps the stored one", () => {
      const storage = memoryStorage();
      storage.setItem("platform-hub.tab", "stored-id");
      const first = client({ storage });
      const second = client({ storage });
      assert.equal(first.hub.tabId, "stored-id");
      assert.notEqual(second.hub.tabId, "stored-id");
      assert.deepEqual(FakeWebSocket.made.map(tabOf), ["stored-id", second.hub.tabId]);
      assert.equal(storage.getItem("platform-hub.tab"), "stored-id", "the second stores nothing");
      // The second's id survives the hub renaming it and a reconnect, without touching storage.
      second.socket().deliver({ ...hello(second.hub), tab: "renamed-by-hub" });
      assert.equal(second.hub.tabId, "renamed-by-hub");
      assert.equal(first.hub.tabId, "stored-id");
      assert.equal(storage.getItem("platform-hub.tab"), "stored-id");

      // Once the first is closed, a new client of the page takes the stored id again.
      first.hub.close();
      const third = client({ storage });
      assert.equal(third.hub.tabId, "stored-id");
    });
  });

  describe("Status", () => {
    test("is frozen and holds the six states as their strings", () => {
      assert.ok(Object.isFrozen(Status));
      assert.deepEqual(Status, {
        CONNECTING: "connecting",
        OPEN: "open",
        RECONNECTING: "reconnecting",
        DEGRADED: "degraded",
        ENDED: "ended",
        CLOSED: "closed",
      });
    });

    test("each change emits one status event, {status, previous}, and repeats emit none", async () => {
      const { hub, socket, statuses } = client({ baseDelayMs: 10, maxDelayMs: 10 });
      assert.equal(hub.status, Status.CONNECTING);
      socket().deliver(hello(hub));
      socket().drop(CloseCode.SERVICE_RESTART);
      mock.timers.tick(10);
      socket().drop(CloseCode.TRY_AGAIN_LATER); // still reconnecting: no event
      mock.timers.tick(10);
      socket().deliver(hello(hub));
      hub.close();
      hub.close();
      assert.deepEqual(statuses(), [
        { status: Status.OPEN, previous: Status.CONNECTING },
        { status: Status.RECONNECTING, previous: Status.OPEN },
        { status: Status.OPEN, previous: Status.RECONNECTING },
        { status: Status.CLOSED, previous: Status.OPEN },
      ]);
      assert.equal(hub.status, Status.CLOSED);
      assert.equal((await hub.switchPlatform(2)).reason, "closed");
    });
  });

  describe("the unknown event", () => {
    test("reports a message of an unknown type, with one warning per type, and goes on", () => {
      const warn = mock.method(console, "warn", () => {});
      const { hub, socket, events } = client();
      socket().deliver(hello(hub));
      for (const type of ["future_thing", "future_thing", "other_thing"]) socket().deliver({ type, x: 1 });
      const unknown = events.filter(([type]) => type === "unknown").map(([, detail]) => detail);
      assert.deepEqual(unknown, [
        { message: { type: "future_thing", x: 1 } },
        { message: { type: "future_thing", x: 1 } },
        { message: { type: "other_thing", x: 1 } },
      ]);
      assert.deepEqual(
        warn.mock.calls.map((call) => call.arguments),
        [
          ['navigation.js: a hub message of unknown type "future_thing" was skipped'],
          ['navigation.js: a hub message of unknown type "other_thing" was skipped'],
        ],
      );
      assert.equal(hub.status, Status.OPEN);
    });

    test("reports frames that are not messages, with the frame as received and one warning", () => {
      const warn = mock.method(console, "warn", () => {});
      const { hub, socket, events } = client();
      socket().deliver(hello(hub));
      const binary = new ArrayBuffer(4);
      const frames = ["not json", "", "[1,2]", "null", "42", '"hello"', '{"type":5}', '{"kind":"state"}', '[{"type":"state"}]', binary];
      for (const frame of frames) socket().deliver(frame);
      const unknown = events.filter(([type]) => type === "unknown").map(([, detail]) => detail);
      assert.equal(unknown.length, frames.length);
      unknown.forEach((detail, i) => assert.equal(detail.message, frames[i], `frame ${i}`));
      assert.deepEqual(
        warn.mock.calls.map((call) => call.arguments),
        [['navigation.js: a hub frame that is not a message (a JSON object with a string "type") was skipped']],
      );
      // The connection goes on: a state after them is shown.
      socket().deliver({ type: "state", state: { ...STATE, version: 9 }, cause: { kind: "resync", tab: null, request: "r" } });
      assert.equal(hub.state.version, 9);
      assert.equal(hub.status, Status.OPEN);
    });

    test("a frame that is not a message does not use up the warning of an unknown type", () => {
      const warn = mock.method(console, "warn", () => {});
      const { hub, socket } = client();
      socket().deliver(hello(hub));
      socket().deliver("{");
      socket().deliver({ type: "null" });
      socket().deliver("{");
      assert.equal(warn.mock.callCount(), 2);
      assert.match(warn.mock.calls[1].arguments[0], /unknown type "null"/);
    });
  });

  describe("HttpFallback", () => {
    const api = new URL("http://hub.test/api/");

    test("GET state and POST switch: the requests, and the answers with their bodies parsed", async () => {
      const fallback = new HttpFallback({ api, pollIntervalMs: 1000 }, http.fetch);
      assert.deepEqual(await fallback.state(), {
        status: 200,
        ok: true,
        body: { user: USER, state: STATE, hold: null },
      });
      const request = { id: "r1", platform: 2, base: 3 };
      assert.deepEqual(await fallback.switch(request), {
        status: 200,
        ok: true,
        body: { type: "switched", id: "r1", version: 4 },
      });
      assert.deepEqual(http.calls, [
        { url: "http://hub.test/api/state", method: "GET", init: { credentials: "include" } },
        {
          url: "http://hub.test/api/switch",
          method: "POST",
          init: {
            method: "POST",
            headers: { "content-type": "application/json" },
            credentials: "include",
            body: JSON.stringify(request),
          },
        },
      ]);
    });

    test("answers null when no answer came, and a null body for one that is not JSON", async () => {
      const down = new HttpFallback({ api, pollIntervalMs: 1000 }, async () => {
        throw new TypeError("Failed to fetch");
      });
      assert.equal(await down.state(), null);
      assert.equal(await down.switch({ id: "r1", platform: 2, base: 3 }), null);
      const proxy = new HttpFallback({ api, pollIntervalMs: 1000 }, async () => ({
        status: 502,
        ok: false,
        json: async () => {
          throw new SyntaxError("Unexpected token <");
        },
      }));
      assert.deepEqual(await proxy.state(), { status: 502, ok: false, body: null });
    });

    test("uses the page's fetch at the time of each request by default", async () => {
      const fallback = new HttpFallback({ api, pollIntervalMs: 1000 });
      const later = fakeFetch({ state: { status: 401, body: { error: "unauthenticated", reason: "logout" } } });
      globalThis.fetch = later.fetch;
      assert.equal((await fallback.state()).status, 401);
      assert.equal(later.calls.length, 1);
    });

    test("polls every pollIntervalMs, once however often it is started, until stopped", () => {
      const fallback = new HttpFallback({ api, pollIntervalMs: 1000 }, http.fetch);
      let polls = 0;
      fallback.startPolling(() => polls++);
      fallback.startPolling(() => polls++);
      mock.timers.tick(3000);
      assert.equal(polls, 3);
      fallback.stopPolling();
      mock.timers.tick(3000);
      assert.equal(polls, 3);
    });

    test("the client turns degraded after degradedAfter failed attempts, then polls and switches over HTTP", async () => {
      const { hub, socket, statuses } = client({ degradedAfter: 2, baseDelayMs: 10, maxDelayMs: 10, pollIntervalMs: 1000 });
      socket().drop(CloseCode.ABNORMAL);
      await settled();
      assert.equal(hub.status, Status.RECONNECTING);
      assert.equal(hub.state.version, STATE.version, "the probe's state is shown");
      mock.timers.tick(10);
      socket().drop(CloseCode.ABNORMAL);
      await settled();
      assert.deepEqual(statuses(), [
        { status: Status.RECONNECTING, previous: Status.CONNECTING },
        { status: Status.DEGRADED, previous: Status.RECONNECTING },
      ]);

      const decision = hub.switchPlatform(2);
      mock.timers.tick(150);
      await settled();
      assert.deepEqual(await decision, { ok: true, version: STATE.version + 1, platform: 2 });
      const switches = http.calls.filter((call) => call.url.endsWith("/api/switch"));
      assert.equal(switches.length, 1);

      const probes = http.calls.filter((call) => call.url.endsWith("/api/state")).length;
      mock.timers.tick(1000);
      await settled();
      assert.equal(http.calls.filter((call) => call.url.endsWith("/api/state")).length, probes + 1, "degraded mode polls");

      socket().deliver(hello(hub));
      assert.equal(hub.status, Status.OPEN);
      mock.timers.tick(5000);
      await settled();
      assert.equal(http.calls.filter((call) => call.url.endsWith("/api/state")).length, probes + 1, "after a hello, nothing more goes over HTTP");
    });
  });
});
