// SharedLink (shareConnection) under node, with fake Web Locks, BroadcastChannel and WebSocket:
// each "tab" is a HubClient in this process, sharing one fake lock manager and bus. Written by
// a reviewer's attack of the shared connection: each test but the control failed before its fix.
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, mock, test } from "node:test";

import { CloseCode, HubClient, Status } from "../../client/navigation.js";
import { memoryStorage } from "./support.js";

const flush = async (rounds = 20) => {
  for (let i = 0; i < rounds; i++) await new Promise((resolve) => setImmediate(resolve));
};

class FakeWebSocket {
  static OPEN = 1;
  static CLOSED = 3;
  static made = [];
  constructor(url) {
    this.url = String(url);
    this.tab = new URL(this.url).searchParams.get("tab");
    this.readyState = 1;
    this.sent = [];
    this.closedWith = null;
    this.onmessage = this.onclose = null;
    FakeWebSocket.made.push(this);
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close(code) {
    this.closedWith = code ?? 1000;
    this.readyState = 2; // CLOSING: the close event comes later (or, on a dead link, much later)
  }
  deliver(frame) {
    this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
  }
  drop(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

/** One browser profile's Web Locks: exclusive, FIFO queue, ifAvailable and steal. */
class FakeLocks {
  held = null;
  queue = [];
  request(name, options, callback) {
    return new Promise((resolve, reject) => {
      const request = { name, options, callback, resolve, reject };
      if (options.steal) {
        const victim = this.held;
        this.held = null;
        victim?.reject(new Error("AbortError: stolen"));
        this.#grant(request);
      } else if (this.held || this.queue.length) {
        if (options.ifAvailable) {
          Promise.resolve()
            .then(() => callback(null))
            .then(resolve, reject);
        } else {
          this.queue.push(request);
        }
      } else {
        this.#grant(request);
      }
    });
  }
  #grant(request) {
    this.held = request;
    queueMicrotask(async () => {
      try {
        request.resolve(await request.callback({ name: request.name }));
      } catch (error) {
        request.reject(error);
      }
      if (this.held === request) {
        this.held = null;
        const next = this.queue.shift();
        if (next) this.#grant(next);
      }
    });
  }
}

/** BroadcastChannel: delivered to every other open channel of the name, asynchronously, in order. */
class FakeChannel {
  static open = new Set();
  constructor(name) {
    this.name = name;
    this.onmessage = null;
    this.closed = false;
    FakeChannel.open.add(this);
  }
  postMessage(data) {
    if (this.closed) throw new Error("InvalidStateError: closed");
    const copy = structuredClone(data);
    for (const other of FakeChannel.open) {
      if (other === this || other.name !== this.name) continue;
      setImmediate(() => {
        if (!other.closed && !other.frozen) other.onmessage?.({ data: copy });
      });
    }
  }
  close() {
    this.closed = true;
    FakeChannel.open.delete(this);
  }
}

const STATE = { version: 3, active: 1, platforms: [{ id: 1, name: "one" }, { id: 2, name: "two" }] };
const USER = { id: 7, name: "alice" };
const hello = (tab, state = STATE) => ({
  type: "hello",
  protocol: 1,
  tab,
  user: USER,
  state,
  session: { expires_at: "2030-01-01T00:00:00Z" },
  heartbeat_s: 25,
  hold: null,
  devices: [],
});

let locks;
let tabs;
const saved = {};

beforeEach(() => {
  mock.timers.enable({ apis: ["setTimeout", "setInterval", "Date"] });
  for (const key of ["WebSocket", "BroadcastChannel", "navigator", "document", "fetch"]) saved[key] = globalThis[key];
  FakeWebSocket.made = [];
  FakeChannel.open = new Set();
  locks = new FakeLocks();
  Object.defineProperty(globalThis, "navigator", { value: { locks }, configurable: true, writable: true });
  globalThis.WebSocket = FakeWebSocket;
  globalThis.BroadcastChannel = FakeChannel;
  globalThis.fetch = async () => ({ status: 503, ok: false, json: async () => null });
  tabs = [];
});

afterEach(() => {
  for (const hub of tabs) hub.close();
  mock.timers.reset();
  for (const [key, value] of Object.entries(saved)) {
    if (value === undefined) delete globalThis[key];
    else Object.defineProperty(globalThis, key, { value, configurable: true, writable: true });
  }
});

function tab(options = {}) {
  const hub = new HubClient({ shareConnection: true, channelName: null, storage: memoryStorage(), ...options });
  tabs.push(hub);
  return hub;
}

/** The hub's real socket for `hub` (a leader), newest first. */
const socketOf = (hub) => FakeWebSocket.made.findLast((ws) => ws.tab === hub.tabId);

/** Leader A connected (hello), member B attached and open. */
async function leaderAndMember() {
  const a = tab();
  await flush();
  const b = tab();
  await flush();
  const ws = socketOf(a);
  ws.deliver(hello(a.tabId));
  await flush();
  assert.deepEqual(ws.sent.at(-1), { type: "attach", tab: b.tabId });
  ws.deliver(hello(b.tabId));
  await flush();
  assert.equal(a.status, Status.OPEN);
  assert.equal(b.status, Status.OPEN);
  return { a, b, ws };
}

/** A fake hub on every fake socket: a hello for the connection, one per attach, a pong per ping. */
function autoHub(state = STATE) {
  for (const ws of FakeWebSocket.made) {
    if (ws.readyState !== 1 || ws.closedWith !== null || ws.paused) continue;
    if (!ws.greeted) {
      ws.greeted = true;
      ws.deliver(hello(ws.tab, state));
    }
    ws.handled ??= 0;
    while (ws.handled < ws.sent.length) {
      const m = ws.sent[ws.handled++];
      if (m.type === "attach") ws.deliver(hello(m.tab, state));
      if (m.type === "ping") ws.deliver({ type: "pong" });
    }
  }
}

/** Let `ms` pass in small steps, the channel and the fake hub answering between them. */
async function advance(ms, { step = 100, hub = true, state = STATE } = {}) {
  for (let t = 0; t < ms; t += step) {
    mock.timers.tick(step);
    await flush(4);
    if (hub) autoHub(state);
    await flush(4);
  }
}

describe("SharedLink attacks", () => {
  test("control: a leader and a member stay open for two minutes with the fake hub", async () => {
    const a = tab();
    await flush();
    const b = tab();
    await advance(120000, { step: 250 });
    assert.equal(a.status, Status.OPEN);
    assert.equal(b.status, Status.OPEN);
    assert.equal(a.link.leader, true);
    assert.equal(FakeWebSocket.made.length, 1);
  });

  test("a member's hello that holds the word \"detached\" is delivered as a hello", async () => {
    const renamed = { ...STATE, platforms: [{ id: 1, name: "detached" }, { id: 2, name: "two" }] };
    const a = tab();
    await flush();
    const b = tab();
    const statuses = [];
    b.addEventListener("status", (e) => statuses.push(e.detail.status));
    await advance(30000, { step: 250, state: renamed });
    const attaches = FakeWebSocket.made[0].sent.filter((m) => m.type === "attach").length;
    assert.equal(a.status, Status.OPEN);
    assert.equal(b.status, Status.OPEN, `B: ${statuses.join(" > ")}; ${attaches} attaches in 30 s`);
  });

  test("a member whose attach the hub refuses (tab_limit) says so and tries again with its backoff", async () => {
    const a = tab();
    await advance(1000);
    const ws = socketOf(a);
    ws.paused = true; // the hub refuses the next attach
    const b = tab();
    const errors = [];
    b.addEventListener("error", (e) => errors.push(e.detail.code));
    await flush();
    const attach = ws.sent.findLast((m) => m.type === "attach");
    ws.handled = ws.sent.length;
    ws.paused = false;
    ws.deliver({ type: "error", code: "tab_limit", message: "at most 3 tabs per user", tab: attach.tab });
    await advance(200000, { step: 500 });
    const attaches = ws.sent.filter((m) => m.type === "attach" && m.tab === b.tabId).length;
    assert.deepEqual(errors, ["tab_limit"]);
    assert.ok(attaches > 1 || b.status !== Status.CONNECTING, `200 s later: ${attaches} attach, status ${b.status}`);
  });

  test("a closed member's queued lock request is withdrawn, not granted and held", async () => {
    globalThis.document = Object.assign(new EventTarget(), { visibilityState: "hidden" });
    const a = tab();
    await flush();
    const b = tab();
    await advance(1000);
    b.close(); // a logout, a page's re-render...
    a.close(); // the leader's page closes its client too: the lock goes to B's queued request
    await flush();
    const c = tab(); // the next client of this profile
    await advance(60000, { step: 500 });
    assert.ok(socketOf(c), `C (${c.status}) has no socket in 60 s; lock held: ${locks.held !== null}, C leads: ${c.link.leader}`);
  });

  test("a client closed before its lock is granted does not take it (create, then close)", async () => {
    globalThis.document = Object.assign(new EventTarget(), { visibilityState: "hidden" });
    tab().close(); // e.g. React StrictMode mounts, unmounts, mounts again
    const c = tab();
    await advance(60000, { step: 500 });
    assert.ok(socketOf(c), `the page's live client is ${c.status} after 60 s, lock held: ${locks.held !== null}`);
  });

  test("the same in a visible tab: the live client leads without a steal", async () => {
    tab().close();
    const c = tab();
    let t = 0;
    while (c.status !== Status.OPEN && t < 10000) {
      await advance(100);
      t += 100;
    }
    assert.ok(t < 500, `open after ${t} ms`);
  });

  test("an abandoned leader socket's late close leaves the members on the new one", async () => {
    const a = tab();
    await flush();
    const b = tab();
    await advance(2000);
    const ws = socketOf(a);
    ws.paused = true; // the link dies silently: no pong
    await advance(40000);
    assert.equal(ws.closedWith, CloseCode.PONG_TIMEOUT);
    assert.equal(a.status, Status.OPEN, "A is on a new connection");
    assert.equal(b.status, Status.OPEN);
    const statuses = [];
    b.addEventListener("status", (e) => statuses.push(e.detail.status));
    ws.drop(1006); // the dead link's close event arrives, long after
    await flush();
    assert.deepEqual(statuses, [], "B was open on the new connection");
  });

  test("a 4005 of the leader's own socket leaves its members' tab ids alone", async () => {
    const a = tab();
    await flush();
    const b = tab();
    await advance(2000);
    const before = b.tabId;
    socketOf(a).drop(CloseCode.TAB_REPLACED, "tab id reused by a newer connection");
    await advance(30000);
    const attached = socketOf(a).sent.filter((m) => m.type === "attach").map((m) => m.tab);
    assert.equal(b.tabId, before, `B's id was not the one replaced; the new connection attaches ${JSON.stringify(attached.map((t) => (t === before ? "B's old id" : t === b.tabId ? "B's new id" : t)))}`);
  });

  test("two visible windows and a frozen leader: the lock is stolen once", async () => {
    const a = tab();
    await flush();
    const b = tab();
    await advance(450);
    const c = tab(); // its checks run at other moments than B's
    await advance(3000);
    assert.equal(FakeWebSocket.made.length, 1);
    // A's page is frozen: it hears nothing, and learns of the steal only when it runs again.
    a.link.channel.frozen = true;
    locks.held.reject = () => {};
    FakeWebSocket.made[0].paused = true;
    const leaders = [];
    for (let t = 0; t < 5000; t += 50) {
      await advance(50);
      const now = [b, c].filter((hub) => hub.link.leader).map((hub) => (hub === b ? "B" : "C")).join("");
      if (leaders.at(-1) !== now) leaders.push(now);
    }
    const real = FakeWebSocket.made.slice(1);
    assert.equal(real.length, 1, `leaders over time: ${JSON.stringify(leaders)}; real sockets opened by B/C: ${real.length}, closed: ${real.filter((w) => w.closedWith !== null).length}`);
  });

  test("held: a switch in flight through a leader that closes goes again, same id, through the next", async () => {
    const a = tab();
    await flush();
    const b = tab();
    await advance(2000);
    const ws = socketOf(a);
    ws.paused = true;
    const decision = b.switchPlatform(2);
    await advance(500);
    const sent = ws.sent.find((m) => m.type === "switch");
    assert.equal(sent.tab, b.tabId);
    a.close();
    await advance(3000);
    assert.equal(b.link.leader, true);
    const again = socketOf(b).sent.find((m) => m.type === "switch");
    assert.equal(again.id, sent.id);
    assert.equal(again.tab, undefined);
    socketOf(b).deliver({ type: "switched", id: again.id, version: 4 });
    assert.deepEqual(await decision, { ok: true, version: 4, platform: 2 });
  });

  test("held: the leader's socket reconnects and its members are carried again", async () => {
    const a = tab();
    await flush();
    const b = tab();
    await advance(2000);
    socketOf(a).drop(CloseCode.SERVICE_RESTART);
    await flush();
    assert.equal(b.status, Status.RECONNECTING);
    await advance(5000);
    assert.equal(a.status, Status.OPEN);
    assert.equal(b.status, Status.OPEN);
  });

  test("navigator.locks present but refusing (SecurityError): a socket of its own", async () => {
    globalThis.navigator.locks = { request: () => Promise.reject(new Error("SecurityError: denied")) };
    const c = tab();
    await advance(30000, { step: 500 });
    assert.ok(FakeWebSocket.made.length > 0, `status ${c.status}, sockets ${FakeWebSocket.made.length}`);
  });
});
