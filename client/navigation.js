// The hub's browser client: one dependency-free ES module, no build step.
//
//   import { HubClient } from "/client/navigation.js";
//   const hub = new HubClient({ url: "/ws" });
//   hub.addEventListener("state", (e) => render(e.detail));
//   await hub.switchPlatform(id);
//
// docs/client.md documents every option, event and field; docs/protocol.md every message.
// The building blocks (Backoff, Debouncer, Switcher, mergeState, TabChannel, HttpFallback,
// randomId) are exported for tests/client/*.test.js, which run them under node's test runner
// with fake timers; describePlatform is for pages, to show platform data that may hold anything.

/**
 * Messages of the wire protocol; they mirror server/protocol.py.
 * @typedef {{id: number, name: string, kind: string, instance_url: string, username: string, is_default: boolean, external_id?: string}} PlatformView
 * @typedef {{version: number, active: number|null, platforms: PlatformView[]}} StateView
 * @typedef {{id: number, name: string}} UserInfo
 * @typedef {{expires_at: string}} SessionInfo
 * @typedef {{kind: "switch"|"platforms"|"resync", tab: string|null, request: string}} Cause
 * @typedef {{reason: string, expires_at: string}} HoldView
 * @typedef {{session: string, description: string, signed_in_at: string, last_active_at: string, tabs: number, current: boolean}} Device
 * @typedef {"stale"|"unknown_platform"|"inactive_platform"|"rate_limited"|"unavailable"|"bad_request"|"busy"} RejectReason
 * @typedef {"logout"|"expired"|"revoked"} SessionEndReason
 * @typedef {"bad_message"|"bad_request"|"invalid_credentials"|"unauthenticated"|"forbidden_origin"|"unavailable"|"rate_limited"|"unknown_platform"|"inactive_platform"|"last_active_platform"|"name_taken"|"account_taken"|"unknown_user"|"unknown_session"} ErrorCode
 *
 * From a tab:
 * @typedef {{type: "switch", id: string, platform: number, base: number}} Switch
 * @typedef {{type: "ping"}} Ping
 * @typedef {Switch|Ping} ClientMessage
 *
 * From the hub:
 * @typedef {{type: "hello", protocol: number, tab: string, user: UserInfo, state: StateView, session: SessionInfo, heartbeat_s: number, hold: HoldView|null, devices: Device[]}} Hello
 * @typedef {{type: "hold", hold: HoldView|null}} HoldMessage
 * @typedef {{type: "presence", devices: Device[]}} PresenceMessage
 * @typedef {{type: "pong"}} Pong
 * @typedef {{type: "switched", id: string, version: number}} Switched
 * @typedef {{type: "rejected", id: string, reason: RejectReason, message: string, state: StateView|null}} Rejected
 * @typedef {{type: "state", state: StateView, cause: Cause}} StateMessage
 * @typedef {{type: "session_expiring", expires_at: string}} SessionExpiring
 * @typedef {{type: "session_ended", reason: SessionEndReason, message: string}} SessionEnded
 * @typedef {{type: "error", code: ErrorCode, message: string}} ErrorMessage
 * @typedef {Hello|Pong|Switched|Rejected|StateMessage|HoldMessage|PresenceMessage|SessionExpiring|SessionEnded|ErrorMessage} ServerMessage
 *
 * HTTP bodies:
 * @typedef {{user: UserInfo, state: StateView, session: SessionInfo, hold: HoldView|null}} StateResponse
 * @typedef {{user: UserInfo, expires_at: string}} SessionView
 * @typedef {{error: ErrorCode, message: string, reason: string|null}} ErrorBody
 * @typedef {{status: number, ok: boolean, body: StateResponse|Switched|Rejected|ErrorBody|null}} HttpAnswer
 *
 * What the client emits:
 * @typedef {{version: number, active: number|null, platforms: PlatformView[], pending: number|null}} ClientState
 * @typedef {"connecting"|"open"|"reconnecting"|"degraded"|"ended"|"closed"} Status
 * @typedef {{ok: true, version: number, platform: number}
 *         | {ok: false, reason: RejectReason|"superseded"|"timeout"|"ended"|"closed", message: string, state?: StateView|null}} Decision
 */

/**
 * The version of the wire protocol this client speaks (server/protocol.py PROTOCOL_VERSION);
 * the npm package's major version is this number. A hub whose hello names another is reported.
 */
export const PROTOCOL = 1;

/**
 * WebSocket close codes: the hub's, as server/protocol.py's CloseCode names them, and the
 * client's own (ABNORMAL, PONG_TIMEOUT). docs/protocol.md lists all those a close frame carries.
 */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  // Never in a close frame: a connection lost without one, or a socket that could not be made.
  ABNORMAL: 1006,
  SERVICE_RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
  // The client's own, never the hub's: it dropped a link that delivered nothing for
  // pongTimeoutMs after a ping, and tells the hub why in case the link still carries it.
  PONG_TIMEOUT: 4000,
  SESSION_ENDED: 4001,
  PROTOCOL_ABUSE: 4002,
  TAB_LIMIT: 4003,
  IDLE_TIMEOUT: 4004,
  TAB_REPLACED: 4005,
  SLOW_CONSUMER: 4008,
});

/** The client's connection states (the `status` event); docs/client.md says what each means. */
export const Status = Object.freeze({
  CONNECTING: "connecting",
  OPEN: "open",
  RECONNECTING: "reconnecting",
  DEGRADED: "degraded",
  // Terminal: the login session is over.
  ENDED: "ended",
  // Terminal: close() was called.
  CLOSED: "closed",
});

export const DEFAULTS = Object.freeze({
  url: "/ws",
  api: "/api",
  baseDelayMs: 500,
  maxDelayMs: 20000,
  healthyAfterMs: 10000,
  pongTimeoutMs: 10000,
  debounceMs: 150,
  switchTimeoutMs: 15000,
  degradedAfter: 3,
  pollIntervalMs: 5000,
  claimWindowMs: 80,
  channelName: "platform-hub",
  tabKey: "platform-hub.tab",
  // One WebSocket for all the tabs of this browser profile and origin (SharedLink): off
  // unless asked; where Web Locks or BroadcastChannel is missing, a socket per tab anyway.
  shareConnection: false,
  shareName: "platform-hub.link",
});

// The hub's rule for tab ids (server/web/websocket.py); request ids may be 1 to 64 characters of any kind.
const TAB_ID = /^[A-Za-z0-9_-]{1,64}$/;
// A session's handle, as the hub's revoke path takes it (server/web/paths.py).
const HANDLE = /^[A-Za-z0-9_-]{1,32}$/;
// How often the tab a person looks at checks that its shared connection's leader answers; one
// that missed the last check is replaced (Web Locks' steal).
const LEADER_CHECK_MS = 1000;
// A member a shared connection's leader has not heard from this long (it pings every
// heartbeat_s, 25 s by default) closed without a word: the leader detaches it.
const MEMBER_SILENCE_MS = 75000;
// The tab ids held by live HubClients of this page: a second client in one page gets an id of
// its own instead of the one in sessionStorage (which the first holds).
const PAGE_TAB_IDS = new Set();
const ID_BYTES = 16;
// Display strings longer than this many characters are cut short (describePlatform).
const MAX_LABEL_CHARS = 120;
const UNNAMED = "Unnamed platform";
// What a page shows when a session ends and the hub gave no words (the hub's own are the
// same: server/protocol.py SessionEnded.because).
const ENDED_MESSAGES = Object.freeze({
  logout: "You are signed out.",
  expired: "Your session expired. Sign in again to continue.",
  revoked: "Your session was ended. Sign in again to continue.",
});

// Pure building blocks.

/**
 * A random UUID (version 4), such as "3b241101-e2bb-4255-8caf-4136c566a962": 36 characters of
 * 0-9, a-f and "-", a valid tab id and request id. Made with crypto.getRandomValues, which
 * every page has, and not crypto.randomUUID, which exists only in secure contexts (HTTPS or
 * localhost): a hub on a LAN address or a dev host name over plain HTTP has none.
 */
export function randomId(crypto = globalThis.crypto) {
  const bytes = crypto.getRandomValues(new Uint8Array(ID_BYTES));
  bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
  bytes[8] = (bytes[8] & 0x3f) | 0x80; // variant 10xx (RFC 9562)
  const hex = Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
  const groups = [hex.slice(0, 8), hex.slice(8, 12), hex.slice(12, 16), hex.slice(16, 20), hex.slice(20)];
  return groups.join("-");
}

/** `value` as a string: numbers and booleans spelt out; objects, null and undefined as "". */
function asText(value) {
  if (typeof value === "string") return value;
  return ["number", "boolean", "bigint"].includes(typeof value) ? String(value) : "";
}

/** `value` as display text: a string, controls as spaces, trimmed, cut at MAX_LABEL_CHARS. */
function displayText(value) {
  const text = asText(value)
    .replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, " ")
    .trim();
  const chars = Array.from(text); // code points, so a cut never splits a surrogate pair
  return chars.length > MAX_LABEL_CHARS ? `${chars.slice(0, MAX_LABEL_CHARS - 1).join("")}…` : text;
}

/**
 * Display strings for a platform, whatever its data holds (it comes from the host app or the
 * person who connected it): never throws. `name` falls back to "Unnamed platform"; `host` is
 * the instance URL's host, or the URL as written where it does not parse (`https://x:99999`).
 * Each is at most MAX_LABEL_CHARS characters. Show them as text (`textContent`), never as HTML.
 * @param {Partial<PlatformView>} platform @returns {{name: string, username: string, host: string}}
 */
export function describePlatform(platform) {
  const url = asText(platform?.instance_url).trim();
  let host = "";
  try {
    host = new URL(url).host;
  } catch {
    // Not a URL the browser accepts: show it as written.
  }
  return {
    name: displayText(platform?.name) || UNNAMED,
    username: displayText(platform?.username),
    host: displayText(host || url),
  };
}

/**
 * Full-jitter backoff: a delay drawn uniformly from [0, min(cap, base * 2**attempt)), or from
 * a window the hub asked for (`windowMs`, a restart's) when that is wider, still under the cap.
 */
export function backoffDelay(attempt, baseMs, capMs, random = Math.random, windowMs = 0) {
  return random() * Math.min(capMs, Math.max(windowMs, baseMs * 2 ** attempt));
}

/**
 * The window a 1012 close's reason asks the tab to reconnect within, in milliseconds ("hub
 * restarting; reconnect within 8000 ms"), or 0 when it names none: the hub spreads a
 * restart's tabs over it, so they do not all come back at once.
 */
export function restartWindowMs(reason) {
  const match = /reconnect within (\d{1,9}) ms/.exec(typeof reason === "string" ? reason : "");
  return match ? Number(match[1]) : 0;
}

/**
 * Reconnect delays with full jitter. The attempt count resets only after a connection has
 * stayed healthy for `healthyAfterMs`, so a hub that accepts and then drops at once is not
 * hammered.
 */
export class Backoff {
  constructor({ baseDelayMs, maxDelayMs, healthyAfterMs }, random = Math.random) {
    this.baseDelayMs = baseDelayMs;
    this.maxDelayMs = maxDelayMs;
    this.healthyAfterMs = healthyAfterMs;
    this.random = random;
    this.attempt = 0;
    this.healthyTimer = null;
  }

  /**
   * The delay before the next attempt, drawn over `windowMs` if the hub asked for that window
   * and it is the wider; each call counts one more attempt.
   */
  next(windowMs = 0) {
    this.lost();
    return backoffDelay(this.attempt++, this.baseDelayMs, this.maxDelayMs, this.random, windowMs);
  }

  /** A connection is up: forget the failures once it has stayed up for a while. */
  connected() {
    this.lost();
    this.healthyTimer = setTimeout(() => {
      this.healthyTimer = null;
      this.attempt = 0;
    }, this.healthyAfterMs);
  }

  /** The connection is gone before it proved healthy: keep counting. */
  lost() {
    clearTimeout(this.healthyTimer);
    this.healthyTimer = null;
  }
}

/** Calls `callback(value)` once calls to `push(value)` pause for `delayMs`, with the last value. */
export class Debouncer {
  constructor(delayMs, callback) {
    this.delayMs = delayMs;
    this.callback = callback;
    this.timer = null;
    this.value = undefined;
  }

  push(value) {
    this.value = value;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.flush(), this.delayMs);
  }

  get waiting() {
    return this.timer !== null;
  }

  flush() {
    if (this.timer === null) return;
    clearTimeout(this.timer);
    this.timer = null;
    const value = this.value;
    this.value = undefined;
    this.callback(value);
  }

  cancel() {
    clearTimeout(this.timer);
    this.timer = null;
    this.value = undefined;
  }
}

/**
 * The message in a frame from the hub, or null for a frame that is not one: not text, not JSON,
 * or not a JSON object with a string `type`. The type is not checked against the known ones.
 * @param {unknown} data @returns {ServerMessage|null}
 */
function decode(data) {
  if (typeof data !== "string") return null;
  let message;
  try {
    message = JSON.parse(data);
  } catch {
    return null;
  }
  const isMessage = typeof message === "object" && message !== null && !Array.isArray(message);
  return isMessage && typeof message.type === "string" ? message : null;
}

/**
 * Monotonic merge: the state to show, given the one shown and an incoming one. A state never
 * replaces a newer one; an equal version is the same state (it may refresh the platform list).
 * @param {StateView|null} shown @param {StateView|null|undefined} incoming @returns {StateView|null}
 */
export function mergeState(shown, incoming) {
  if (!incoming) return shown;
  if (!shown || incoming.version >= shown.version) return incoming;
  return shown;
}

/**
 * The switching half of a tab: debounce, optimistic target, at most one request in flight, the
 * same request id on every resend, and a deadline after which the choice rolls back.
 *
 * `send(request)` transmits `{id, platform, base}` and returns whether it could (false when
 * disconnected: the request stays in flight and `resend()` sends it again). `confirmed()` returns
 * the authoritative StateView (or null), and `changed()` is called whenever `target` may differ.
 */
export class Switcher {
  constructor({ debounceMs, switchTimeoutMs, send, confirmed, changed, newId = randomId }) {
    this.timeoutMs = switchTimeoutMs;
    this.send = send;
    this.confirmed = confirmed;
    this.changed = changed;
    this.newId = newId;
    /** The latest choice not yet sent. */ this.queued = null;
    /** The request sent and not yet answered. */ this.inFlight = null;
    this.debouncer = new Debouncer(debounceMs, () => this.next());
  }

  /** The platform the user chose and the hub has not decided on yet, or null. */
  get target() {
    return (this.queued ?? this.inFlight)?.platform ?? null;
  }

  /** @returns {Promise<Decision>} */
  choose(platform) {
    return new Promise((resolve) => {
      if (this.queued) {
        this.finish(this.queued, {
          ok: false,
          reason: "superseded",
          message: "A later choice replaced this one.",
        });
      }
      const choice = { platform, resolve, request: null, timer: null };
      choice.timer = setTimeout(() => this.expire(choice), this.timeoutMs);
      this.queued = choice;
      this.changed();
      this.debouncer.push();
    });
  }

  /** Send the queued choice, unless one is in flight (it goes when that one is answered). */
  next() {
    if (this.inFlight || !this.queued || this.debouncer.waiting) return;
    const choice = this.queued;
    const state = this.confirmed();
    if (!state) return; // nothing to base it on yet: next() runs again when a state arrives
    this.queued = null;
    if (state.active === choice.platform) {
      this.finish(choice, { ok: true, version: state.version, platform: choice.platform });
      this.changed();
      return;
    }
    choice.request = { id: this.newId(), platform: choice.platform, base: state.version };
    this.inFlight = choice;
    this.send(choice.request);
  }

  /** Send the request in flight again, with the same id (after a reconnect). */
  resend() {
    if (this.inFlight) this.send(this.inFlight.request);
  }

  /** The hub decided on request `id`; returns false if it is not the one in flight. */
  settle(id, decision) {
    if (this.inFlight?.request.id !== id) return false;
    const choice = this.inFlight;
    this.inFlight = null;
    this.finish(choice, decision);
    this.changed();
    this.next();
    return true;
  }

  /** Drop every choice with the same decision (the session ended, the client closed). */
  cancel(decision) {
    this.debouncer.cancel();
    for (const choice of [this.queued, this.inFlight]) if (choice) this.finish(choice, decision);
    this.queued = this.inFlight = null;
    this.changed();
  }

  expire(choice) {
    if (choice === this.queued) this.queued = null;
    else if (choice === this.inFlight) this.inFlight = null;
    else return;
    this.finish(choice, {
      ok: false,
      reason: "timeout",
      message: "The hub did not confirm the switch in time; nothing was changed.",
    });
    this.changed();
    this.next();
  }

  finish(choice, decision) {
    clearTimeout(choice.timer);
    choice.resolve(decision);
  }
}

/**
 * Same-origin tab-to-tab messages: a BroadcastChannel, or `storage` events where there is none.
 * Only non-sensitive data crosses: states, "ended", "extended" and tab-id claims. Never a token.
 */
export class TabChannel {
  constructor(name, onMessage) {
    this.name = name;
    this.onMessage = onMessage;
    if (typeof BroadcastChannel === "function") {
      this.channel = new BroadcastChannel(name);
      this.channel.onmessage = (event) => this.onMessage(event.data);
    } else if (typeof localStorage !== "undefined" && typeof addEventListener === "function") {
      this.listener = (event) => {
        if (event.key !== name || !event.newValue) return;
        try {
          this.onMessage(JSON.parse(event.newValue).message);
        } catch {
          // Not ours.
        }
      };
      addEventListener("storage", this.listener);
    }
  }

  post(message) {
    if (this.channel) {
      this.channel.postMessage(message);
    } else if (this.listener) {
      // Other tabs see a `storage` event only when the value changes: add a nonce.
      localStorage.setItem(this.name, JSON.stringify({ message, nonce: randomId() }));
      localStorage.removeItem(this.name);
    }
  }

  close() {
    this.channel?.close();
    if (this.listener) removeEventListener("storage", this.listener);
  }
}

/**
 * One WebSocket shared by the tabs of a browser profile and origin (`shareConnection`).
 *
 * The tabs elect a leader with the Web Locks API (the lock `shareName`): the leader holds the
 * only WebSocket and carries the others on it (the hub's `attach`); the others reach the hub
 * through it over a BroadcastChannel of the same name. To its HubClient each side is a
 * socket as a WebSocket is (`open()`): the leader's wraps the real one, relaying what the hub
 * says to one member (tagged with its `tab`) to that member and what it says to all to every
 * member; a member's posts what its client sends to the leader, which sends it as the
 * member's (a switch with its `tab`) and answers its pings itself. When the leader goes
 * (closed, crashed), the browser gives the lock to another tab, which announces itself: every
 * member's socket closes, and its client reconnects through the new leader as after any loss
 * (a switch in flight goes again with its id: the hub applies it once).
 */
export class SharedLink {
  #leader = false;
  #members = new Map(); // tab id: when last heard (the leader's)
  #hub = null; // the leader's socket, while it has had its hello
  #local = null; // this tab's socket (either kind)
  #release = () => {};
  #decide = () => {};
  #pruner = null;
  #checker = null;
  #awaiting = false; // a check of the leader went unanswered so far
  #quiet = null; // a socket whose close the members need not hear (this tab was demoted)
  #closed = false;
  #led = false; // this tab has held the lock
  #unavailable = false; // the lock was refused: this tab keeps a socket of its own
  #abort = new AbortController();
  #leaving = null;

  constructor({ name, tabId, onLeader, locks = globalThis.navigator?.locks, Channel = globalThis.BroadcastChannel }) {
    this.name = name;
    this.tabId = tabId; // () => this tab's id
    this.onLeader = onLeader; // called when this tab becomes the leader
    this.locks = locks;
    this.channel = new Channel(name);
    this.channel.onmessage = (event) => this.#fromTab(event.data);
    /** Settles once this tab knows whether it leads now (it may lead later, on a handover). */
    this.decided = new Promise((resolve) => {
      this.#decide = resolve;
    });
    this.#request({ ifAvailable: true });
    // A member tab closing says so, or the leader would count it until it is pruned.
    this.#leaving = () => {
      if (!this.#leader && this.#local?.member) this.#post({ kind: "detach", tab: this.tabId() });
    };
    globalThis.addEventListener?.("pagehide", this.#leaving);
    // The tab a person looks at checks its leader every LEADER_CHECK_MS: a leader that does
    // not answer (its page frozen by the browser, say) has its lock taken (steal).
    this.#checker = setInterval(() => this.#check(), LEADER_CHECK_MS);
  }

  /** Ask for the lock; lead once it is granted, until close() (or until it is stolen). */
  #request(options) {
    // A queued request is aborted by close(), or it would be granted to a closed link. (Web
    // Locks refuses a signal beside ifAvailable or steal: those never queue.)
    const queued = !options.steal && !options.ifAvailable;
    const request = queued ? { ...options, signal: this.#abort.signal } : options;
    this.locks
      .request(this.name, request, (lock) => {
        if (this.#closed) return null;
        if (lock) return this.#lead();
        this.#decide(); // another tab leads: wait in line for its end
        this.#request({});
        return null;
      })
      .catch(() => {
        if (this.#closed) return;
        if (this.#leader) this.#demote(); // another tab took the lock
        else if (!this.#led) this.#unavailable = true; // refused (a SecurityError): go alone
        this.#decide();
      });
  }

  #lead() {
    this.#leader = this.#led = true;
    this.#awaiting = false;
    this.#decide();
    this.#post({ kind: "leader", tab: this.tabId() });
    this.#pruner = setInterval(() => this.#prune(), MEMBER_SILENCE_MS / 4);
    this.onLeader();
    return new Promise((resolve) => {
      this.#release = resolve; // held until close()
    });
  }

  /** The lock was stolen from this tab (it was thought frozen): be a member again. */
  #demote() {
    this.#leader = false;
    clearInterval(this.#pruner);
    this.#members.clear();
    const hub = this.#hub;
    this.#hub = null;
    this.#quiet = hub; // its close is not the members' to hear: they follow the new leader
    hub?.close();
    this.#request({});
  }

  #check() {
    if (this.#leader || this.#closed || globalThis.document?.visibilityState === "hidden") return;
    if (this.#awaiting) {
      this.#awaiting = false;
      this.#request({ steal: true });
      return;
    }
    this.#awaiting = true;
    this.#post({ kind: "alive?", tab: this.tabId() });
  }

  /** Whether Web Locks and BroadcastChannel are both here. */
  static available() {
    return typeof globalThis.navigator?.locks?.request === "function" && typeof BroadcastChannel === "function";
  }

  get leader() {
    return this.#leader;
  }

  /** A socket for this tab: the real WebSocket if it leads, else a relay through the leader. */
  open(url) {
    if (this.#unavailable) return new WebSocket(url);
    this.#local = this.#leader ? this.#leaderSocket(url) : this.#memberSocket();
    return this.#local;
  }

  close() {
    if (!this.#leader) this.#post({ kind: "detach", tab: this.tabId() });
    clearInterval(this.#pruner);
    clearInterval(this.#checker);
    this.#abort.abort();
    globalThis.removeEventListener?.("pagehide", this.#leaving);
    this.#closed = true;
    this.channel.close();
    this.#release();
  }

  #post(message) {
    if (!this.#closed) this.channel.postMessage(message);
  }

  /** Detach the members not heard for MEMBER_SILENCE_MS: closed without a word (a crash). */
  #prune() {
    const silent = Date.now() - MEMBER_SILENCE_MS;
    for (const [tab, heard] of this.#members) {
      if (heard >= silent) continue;
      this.#members.delete(tab);
      this.#hub?.send(JSON.stringify({ type: "detach", tab }));
    }
  }

  #leaderSocket(url) {
    const link = this;
    const ws = new WebSocket(url);
    const socket = {
      get readyState() {
        return ws.readyState;
      },
      send: (data) => ws.send(data),
      close: (code) => ws.close(code),
      onmessage: null,
      onclose: null,
    };
    ws.onmessage = (event) => {
      if (link.#fromHub(ws, event.data)) socket.onmessage?.(event);
    };
    ws.onclose = (event) => {
      if (link.#hub === ws) link.#hub = null;
      // Only the socket in use speaks for the members (an abandoned one may close much later),
      // and a 4005 is the leader's own id's: to them it is a loss like any other.
      if (link.#quiet !== ws && link.#local === socket) {
        const code = event.code === CloseCode.TAB_REPLACED ? CloseCode.ABNORMAL : event.code;
        link.#post({ kind: "closed", code, reason: event.reason });
      }
      socket.onclose?.(event);
    };
    return socket;
  }

  /** Route a frame of the hub's: to a member, to every member, or here too (true). */
  #fromHub(ws, data) {
    let message = null;
    try {
      message = JSON.parse(data);
    } catch {
      return true;
    }
    const to = message?.tab;
    if (message?.type === "hello" && to === this.tabId()) {
      this.#hub = ws; // carry every member known: a new leader's, or after a reconnect
      for (const tab of this.#members.keys()) ws.send(JSON.stringify({ type: "attach", tab }));
      return true;
    }
    if (typeof to === "string" && to !== this.tabId()) {
      if (message.type === "detached") this.#members.delete(to);
      this.#post({ kind: "down", to, data });
      if (message.type === "hello" && Array.isArray(message.devices)) {
        // Its devices are the connection's newest list (the hub sends no presence for them).
        const presence = JSON.stringify({ type: "presence", devices: message.devices });
        this.#post({ kind: "down", to: null, data: presence });
        this.#local?.onmessage?.({ data: presence });
      }
      return false;
    }
    if (message?.type !== "pong") this.#post({ kind: "down", to: null, data });
    return true;
  }

  #memberSocket() {
    const link = this;
    const tab = this.tabId();
    const socket = {
      member: true,
      readyState: WebSocket.OPEN,
      send: (data) => link.#post({ kind: "up", tab, data }),
      close: () => {
        socket.readyState = WebSocket.CLOSED;
        link.#post({ kind: "detach", tab });
      },
      onmessage: null,
      onclose: null,
    };
    this.#post({ kind: "attach", tab });
    return socket;
  }

  /** A member's socket ends as the leader's did (or on a new leader: it reconnects). */
  #endMember(code, reason = "") {
    const socket = this.#local;
    if (!socket?.member || this.#leader || socket.readyState === WebSocket.CLOSED) return;
    socket.readyState = WebSocket.CLOSED;
    socket.onclose?.({ code, reason });
  }

  #fromTab(message) {
    if (!message || typeof message !== "object") return;
    if (this.#leader) {
      this.#asLeader(message);
      return;
    }
    switch (message.kind) {
      case "down":
        if (message.to === null || message.to === this.tabId()) {
          const socket = this.#local;
          if (!socket?.member || socket.readyState !== WebSocket.OPEN) break;
          const ended = message.to === null ? null : memberEnd(message.data);
          if (ended !== CloseCode.ABNORMAL) socket.onmessage?.({ data: message.data });
          // Then reconnect with the client's backoff, and attach again.
          if (ended !== null) this.#endMember(ended);
        }
        break;
      case "closed":
        this.#endMember(message.code, message.reason);
        break;
      case "alive":
        if (message.to === this.tabId()) this.#awaiting = false;
        break;
      case "leader":
        this.#awaiting = false; // it answers from now on: no second steal from it
        this.#endMember(CloseCode.ABNORMAL); // reconnects through the new leader
        break;
      default:
        break;
    }
  }

  #asLeader(message) {
    const tab = message.tab;
    if (typeof tab !== "string" || !TAB_ID.test(tab) || tab === this.tabId()) return;
    const hub = this.#hub;
    switch (message.kind) {
      case "alive?":
        this.#post({ kind: "alive", to: tab });
        break;
      case "attach":
        this.#members.set(tab, Date.now());
        hub?.send(JSON.stringify({ type: "attach", tab }));
        break;
      case "detach":
        if (this.#members.delete(tab)) hub?.send(JSON.stringify({ type: "detach", tab }));
        break;
      case "up": {
        if (!this.#members.has(tab) || typeof message.data !== "string") return;
        this.#members.set(tab, Date.now());
        const frame = decode(message.data);
        if (frame?.type === "ping") {
          // The leader answers: the member learns that its leader (and its link) is alive.
          if (hub) this.#post({ kind: "down", to: tab, data: '{"type":"pong"}' });
        } else if (frame?.type === "switch") {
          hub?.send(JSON.stringify({ ...frame, tab }));
        }
        break;
      }
      default:
        break;
    }
  }
}

/**
 * The close a member's socket takes for a frame the hub addressed to it, or null to deliver
 * it: `detached` (another connection took the tab) and an attach refused (`error` naming the
 * tab: the tab limit, or the rate) end it, so the client retries with its backoff.
 */
function memberEnd(data) {
  const message = decode(data);
  if (message?.type === "detached") return CloseCode.ABNORMAL;
  if (message?.type !== "error") return null;
  if (message.code === "tab_limit") return CloseCode.TAB_LIMIT;
  return message.code === "rate_limited" ? CloseCode.TRY_AGAIN_LATER : null;
}

/**
 * The HTTP fallback, kept apart from the WebSocket path as centrifuge-js keeps its transports:
 * `GET state` (the session probe after a failed attempt, and degraded mode's poll), `POST switch`
 * (degraded mode's switches, with the request ids the WebSocket would use) and the poll timer.
 * It carries requests and answers only: what an answer means, and the status, stay with the client.
 * An answer's body is parsed JSON, or null where it is not JSON.
 */
export class HttpFallback {
  /** `fetch` is looked up on every request by default, so a page may wrap it at any time. */
  constructor({ api, pollIntervalMs }, fetch = (...args) => globalThis.fetch(...args)) {
    this.api = api;
    this.pollIntervalMs = pollIntervalMs;
    this.fetch = fetch;
    this.pollTimer = null;
  }

  /** @returns {Promise<HttpAnswer|null>} the answer to `GET state` (a StateResponse), or null if none came. */
  state() {
    return this.#request("state", { credentials: "include" });
  }

  /**
   * @param {{id: string, platform: number, base: number}} request
   * @returns {Promise<HttpAnswer|null>} the answer to `POST switch` (Switched, Rejected), or null if none came.
   */
  switch(request) {
    return this.#request("switch", {
      method: "POST",
      headers: { "content-type": "application/json" },
      credentials: "include",
      body: JSON.stringify(request),
    });
  }

  /** Call `poll()` every pollIntervalMs until stopPolling(); while polling, calls change nothing. */
  startPolling(poll) {
    this.pollTimer ??= setInterval(poll, this.pollIntervalMs);
  }

  stopPolling() {
    clearInterval(this.pollTimer);
    this.pollTimer = null;
  }

  async #request(path, init) {
    let response;
    try {
      response = await this.fetch(new URL(path, this.api), init);
    } catch {
      return null;
    }
    const body = await response.json().catch(() => null);
    return { status: response.status, ok: response.ok, body };
  }
}

// The client.

export class HubClient extends EventTarget {
  /** @type {Status} */ #status = Status.CONNECTING;
  /** @type {StateView|null} */ #confirmed = null;
  /** @type {ClientState|null} */ #view = null;
  /** @type {UserInfo|null} */ #user = null;
  #socket = null;
  #heard = false; // the socket delivered a hello
  #failures = 0; // connection attempts in a row that never got a hello
  #reconnectTimer = null;
  #pinger = null;
  #pongTimer = null;
  #expiresAt = null;
  #hold = null; // the hold on switches the hub announced, or null
  /** @type {Device[]} */ #devices = []; // the person's devices, as the hub last told them
  #reported = new Set(); // unknown message types already warned about (null: frames that are none)
  #mismatched = false; // a hello named another protocol version (reported once)
  #nonce = randomId();
  #claimed = false; // another live tab holds the id this tab found in sessionStorage
  #tabId = null; // this client's tab id, once chosen
  #ownsStoredId = false; // whether this client's id is the one sessionStorage keeps
  #endReason = null; // from session_ended, for the 4001 close that follows
  #endMessage = null; // and its words
  #listeners = [];

  /** @param {Partial<typeof DEFAULTS>} [options] */
  constructor(options = {}) {
    super();
    this.options = { ...DEFAULTS, ...options };
    const origin = globalThis.location?.href ?? "http://localhost/";
    const url = new URL(this.options.url, origin);
    if (url.protocol === "http:" || url.protocol === "https:") {
      url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    }
    this.url = url;
    this.api = new URL(this.options.api.replace(/\/?$/, "/"), origin);
    this.http = new HttpFallback({ api: this.api, pollIntervalMs: this.options.pollIntervalMs });
    this.storage = this.options.storage ?? globalThis.sessionStorage;
    this.backoff = new Backoff(this.options);
    this.switcher = new Switcher({
      debounceMs: this.options.debounceMs,
      switchTimeoutMs: this.options.switchTimeoutMs,
      send: (request) => this.#sendSwitch(request),
      confirmed: () => this.#confirmed,
      changed: () => this.#render(),
    });
    this.channel = this.options.channelName
      ? new TabChannel(this.options.channelName, (message) => this.#fromTab(message))
      : null;
    /** The connection shared with this browser's other tabs, or null: a socket of its own. */
    this.link =
      this.options.shareConnection && SharedLink.available()
        ? new SharedLink({ name: this.options.shareName, tabId: () => this.tabId, onLeader: () => this.#lead() })
        : null;
    this.#listen(globalThis, "online", () => this.#wake());
    if (globalThis.document) {
      this.#listen(document, "visibilitychange", () => {
        if (document.visibilityState === "visible") this.#wake();
      });
    }
    this.#start();
  }

  /** @returns {ClientState|null} the state to show: authoritative, with the pending choice. */
  get state() {
    return this.#view;
  }

  /** @returns {Status} */
  get status() {
    return this.#status;
  }

  /** @returns {UserInfo|null} */
  get user() {
    return this.#user;
  }

  /** The session's expiry as the hub last reported it (ISO 8601), or null. */
  get expiresAt() {
    return this.#expiresAt;
  }

  /** @returns {HoldView|null} the hold on switches (a job of the host app runs), or null. */
  get hold() {
    return this.#hold;
  }

  /**
   * The person's devices (live login sessions), newest sign-in first, each with its open tabs
   * and whether it is this tab's own; empty until the first hello. Kept while disconnected.
   * @returns {Device[]}
   */
  get presence() {
    return this.#devices;
  }

  /**
   * This tab's id: kept across reloads in sessionStorage, renewed when a duplicated tab
   * clashes. A second HubClient in the same page gets an id of its own (not stored).
   */
  get tabId() {
    if (this.#tabId === null) {
      const stored = this.storage?.getItem(this.options.tabKey);
      if (stored && TAB_ID.test(stored) && !PAGE_TAB_IDS.has(stored)) {
        this.#takeId(stored, true);
      } else {
        this.#takeId(randomId(), !(stored && PAGE_TAB_IDS.has(stored)));
      }
    }
    return this.#tabId;
  }

  /**
   * Ask the hub to make `platform` active. Rapid calls coalesce; only the last is sent.
   * @returns {Promise<Decision>}
   */
  switchPlatform(platform) {
    if (this.#over()) {
      return Promise.resolve({ ok: false, reason: this.#status, message: this.#goneMessage() });
    }
    return this.switcher.choose(Number(platform));
  }

  /** Move the session's idle expiry forward ("stay signed in"); resolves with the new expiry. */
  async extendSession() {
    const body = await this.#post("session/extend");
    this.#sessionExtended(body.expires_at);
    this.channel?.post({ kind: "extended", user: this.#user?.id, expires_at: body.expires_at });
    return body.expires_at;
  }

  /** Log out this browser's session (or, with `everywhere`, every session of the user). */
  async logout({ everywhere = false } = {}) {
    const body = await this.#post(everywhere ? "logout-all" : "logout");
    this.#endSession("logout", true);
    return body;
  }

  /**
   * End another device of the person (or this one): its tabs end with "revoked". `session` is
   * a device's `session` (its handle) from `presence`; resolves with what ended, and rejects
   * with the hub's words when it is not a live session of the person.
   */
  async revokeDevice(session) {
    if (typeof session !== "string" || !HANDLE.test(session)) {
      throw new Error("Name a device by its session handle, from hub.presence.");
    }
    return this.#post(`sessions/${session}/revoke`);
  }

  /** Stop for good: close the connection, cancel timers and pending switches. */
  close() {
    if (this.#status === Status.CLOSED) return;
    this.#shutdown({ ok: false, reason: "closed", message: "The hub client was closed." });
    this.#setStatus(Status.CLOSED);
  }

  // Connecting.

  async #start() {
    // A tab duplicated by the browser carries a copy of this tab's sessionStorage, and so its
    // id. Ask the other tabs first: a live tab with the same id answers, and this one takes a
    // new id. (The hub also closes the older of two connections with one id with 4005.)
    const stored = this.storage?.getItem(this.options.tabKey);
    if (stored && this.channel && !PAGE_TAB_IDS.has(stored)) {
      this.channel.post({ kind: "claim", tab: stored, nonce: this.#nonce });
      await new Promise((resolve) => setTimeout(resolve, this.options.claimWindowMs));
      // (The page may have read tabId meanwhile, and so taken the stored, clashing id.)
      if (this.#claimed && (this.#tabId === null || this.#tabId === stored)) {
        this.#takeId(randomId(), true);
      }
    }
    if (this.link) await this.link.decided;
    this.#connect();
  }

  /** This tab now leads the shared connection: trade its relay for the real socket at once. */
  #lead() {
    const socket = this.#socket;
    if (!socket || this.#over()) return;
    socket.onmessage = socket.onclose = null;
    this.#socket = null;
    this.#stopHeartbeat();
    this.#connect();
  }

  #connect() {
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    if (this.#over()) return;
    const url = new URL(this.url);
    url.searchParams.set("tab", this.tabId);
    let socket;
    try {
      socket = this.link ? this.link.open(url) : new WebSocket(url);
    } catch {
      this.#lost(CloseCode.ABNORMAL);
      return;
    }
    this.#socket = socket;
    this.#heard = false;
    socket.onmessage = (event) => {
      if (this.#socket === socket) this.#receive(event.data);
    };
    socket.onclose = (event) => {
      if (this.#socket === socket) this.#lost(event.code, event.reason);
    };
  }

  /** Drop the socket now, without waiting for a closing handshake a dead link never finishes. */
  #abandon(code = CloseCode.PONG_TIMEOUT) {
    const socket = this.#socket;
    if (!socket) return;
    socket.onmessage = socket.onclose = null;
    try {
      // close() takes only 1000 and 3000-4999: any other code goes as a normal close.
      socket.close(code === CloseCode.PONG_TIMEOUT ? code : CloseCode.NORMAL);
    } catch {
      // Already closing.
    }
    this.#lost(code);
  }

  #lost(code, reason = "") {
    this.#socket = null;
    this.#stopHeartbeat();
    this.backoff.lost();
    if (this.#over()) return;
    if (code === CloseCode.SESSION_ENDED) {
      this.#endSession(this.#endReason ?? "revoked", true, this.#endMessage);
      return;
    }
    if (code === CloseCode.TAB_REPLACED) this.#takeId(randomId(), this.#ownsStoredId);
    if (this.#heard) {
      this.#failures = 0;
    } else {
      this.#failures += 1;
      this.#probe();
    }
    if (this.#status !== Status.DEGRADED) this.#setStatus(Status.RECONNECTING);
    // A restart's 1012 may say within how long to come back: the tabs spread over it.
    this.#scheduleReconnect(code === CloseCode.SERVICE_RESTART ? restartWindowMs(reason) : 0);
  }

  #scheduleReconnect(windowMs = 0) {
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = setTimeout(() => this.#connect(), this.backoff.next(windowMs));
  }

  /** Back online, or the tab is visible again: try at once instead of waiting out the backoff. */
  #wake() {
    if (this.#over()) return;
    if (this.#reconnectTimer !== null) this.#connect();
    if (this.#status === Status.DEGRADED) this.#poll();
  }

  // Messages from the hub.

  /** @param {unknown} data a frame as the socket delivered it */
  #receive(data) {
    // Any frame, even one that is not a message, shows the link is alive.
    clearTimeout(this.#pongTimer);
    this.#pongTimer = null;
    const message = decode(data);
    if (message === null) {
      this.#skip(data, null);
      return;
    }
    switch (message.type) {
      case "hello":
        if (message.protocol !== PROTOCOL && !this.#mismatched) {
          this.#mismatched = true;
          const said = `The hub speaks protocol ${message.protocol}; this client speaks ${PROTOCOL}. Use the navigation.js the hub serves (or a package of major version ${message.protocol}).`;
          console.error(`HubClient: ${said}`);
          this.#emit("error", { code: "protocol_mismatch", message: said });
        }
        this.#heard = true;
        this.#failures = 0;
        this.#user = message.user;
        this.#sessionExtended(message.session.expires_at, false);
        if (message.tab !== this.tabId) this.#takeId(message.tab, this.#ownsStoredId);
        this.backoff.connected();
        this.http.stopPolling();
        this.#startHeartbeat(message.heartbeat_s);
        this.#apply(message.state);
        this.#setHold(message.hold ?? null);
        this.#setPresence(message.devices ?? []);
        this.#setStatus(Status.OPEN);
        this.switcher.resend();
        break;
      case "state":
        this.#apply(message.state);
        break;
      case "hold":
        this.#setHold(message.hold);
        break;
      case "presence":
        this.#setPresence(message.devices);
        break;
      case "switched":
        this.#switched(message.id, message.version);
        break;
      case "rejected":
        this.#rejected(message);
        break;
      case "session_expiring":
        this.#expiresAt = message.expires_at;
        this.#emit("session", { kind: "expiring", expires_at: message.expires_at });
        break;
      case "session_ended":
        this.#endReason = message.reason;
        this.#endMessage = message.message; // #endSession checks it is words
        this.#endSession(message.reason, true, this.#endMessage);
        break;
      case "error":
        this.#emit("error", { code: message.code, message: message.message });
        break;
      case "pong":
        break;
      default:
        // A newer hub may add messages: this client keeps working, and says what it skipped.
        this.#skip(message, message.type);
        break;
    }
  }

  /**
   * Report a frame this client cannot act on: an "unknown" event every time, and one warning
   * for each unknown type (`type` null: for all the frames that are not messages).
   */
  #skip(message, type) {
    this.#emit("unknown", { message });
    if (this.#reported.has(type)) return;
    this.#reported.add(type);
    console.warn(
      type === null
        ? 'navigation.js: a hub frame that is not a message (a JSON object with a string "type") was skipped'
        : `navigation.js: a hub message of unknown type ${JSON.stringify(type)} was skipped`,
    );
  }

  #switched(id, version) {
    const request = this.switcher.inFlight?.request;
    if (request?.id !== id) return;
    const confirmed = this.#confirmed;
    if (confirmed && version > confirmed.version) {
      this.#apply({ ...confirmed, version, active: request.platform });
    }
    this.switcher.settle(id, { ok: true, version, platform: request.platform });
  }

  /** Emit "presence" when the person's devices or their tabs change. */
  #setPresence(devices) {
    if (!Array.isArray(devices)) return;
    if (JSON.stringify(devices) === JSON.stringify(this.#devices)) return;
    this.#devices = devices;
    this.#emit("presence", devices);
  }

  /** Emit "hold" when a hold starts, changes or ends. */
  #setHold(hold) {
    if (JSON.stringify(hold) === JSON.stringify(this.#hold)) return;
    this.#hold = hold;
    this.#emit("hold", hold);
  }

  /** @param {Rejected} message */
  #rejected(message) {
    if (message.state) this.#apply(message.state);
    const detail = { reason: message.reason, message: message.message, state: message.state };
    if (this.switcher.settle(message.id, { ok: false, ...detail })) this.#emit("rejected", detail);
  }

  /** Show an authoritative state if it is not older than the one shown; share it with tabs. */
  #apply(state, share = true) {
    const shown = this.#confirmed;
    if (mergeState(shown, state) !== state) return;
    if (shown?.version === state.version && JSON.stringify(shown) === JSON.stringify(state)) return;
    this.#confirmed = state;
    if (share) this.channel?.post({ kind: "state", user: this.#user?.id, state });
    this.#render();
    this.switcher.next(); // a choice made before the first state waits for it
  }

  #render() {
    const confirmed = this.#confirmed;
    if (!confirmed) return;
    const pending = this.switcher.target;
    const view = {
      version: confirmed.version,
      active: pending ?? confirmed.active,
      platforms: confirmed.platforms,
      pending,
    };
    const old = this.#view;
    if (
      old &&
      old.version === view.version &&
      old.active === view.active &&
      old.pending === view.pending &&
      old.platforms === view.platforms
    ) {
      return;
    }
    this.#view = Object.freeze(view);
    this.#emit("state", this.#view);
  }

  // Messages from other tabs of this browser.

  #fromTab(message) {
    if (!message || typeof message !== "object") return;
    const mine = message.user == null || this.#user == null || message.user === this.#user.id;
    switch (message.kind) {
      case "claim":
        if (message.nonce !== this.#nonce && message.tab === this.#tabId) {
          this.channel.post({ kind: "taken", tab: message.tab, nonce: message.nonce });
        }
        break;
      case "taken":
        if (message.nonce === this.#nonce) this.#claimed = true;
        break;
      case "state":
        if (mine && !this.#over() && message.state) this.#apply(message.state, false);
        break;
      case "extended":
        if (mine && !this.#over()) this.#sessionExtended(message.expires_at);
        break;
      case "ended":
        if (mine) this.#endSession(message.reason, false, message.message);
        break;
      default:
        break;
    }
  }

  // Switching.

  #sendSwitch(request) {
    const socket = this.#socket;
    if (socket && this.#heard && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "switch", ...request }));
    } else if (this.#status === Status.DEGRADED) {
      this.#switchOverHttp(request);
    }
    // Otherwise it stays in flight and goes out again, with the same id, after the next hello.
  }

  async #switchOverHttp(request) {
    const answer = await this.http.switch(request);
    if (answer === null) return; // Unreachable: resent at the next poll or hello.
    const body = answer.body;
    if (answer.status === 401) {
      this.#refused(body);
    } else if (body?.type === "switched") {
      this.#switched(body.id, body.version);
    } else if (body?.type === "rejected") {
      this.#rejected(body);
    }
  }

  // Heartbeat.

  #startHeartbeat(seconds) {
    this.#stopHeartbeat();
    this.#pinger = setInterval(() => {
      if (this.#socket?.readyState !== WebSocket.OPEN) return;
      this.#socket.send('{"type":"ping"}');
      // Any frame clears it; silence past the timeout means the link is dead.
      this.#pongTimer ??= setTimeout(() => this.#abandon(CloseCode.PONG_TIMEOUT), this.options.pongTimeoutMs);
    }, seconds * 1000);
  }

  #stopHeartbeat() {
    clearInterval(this.#pinger);
    clearTimeout(this.#pongTimer);
    this.#pinger = this.#pongTimer = null;
  }

  // HTTP: the session probe and degraded mode.

  /** After a failed attempt, ask over HTTP whether the session still stands (and the state). */
  async #probe() {
    const answer = await this.http.state();
    if (answer === null) {
      if (this.#status === Status.DEGRADED) this.#setStatus(Status.RECONNECTING);
      return; // The hub is down: keep reconnecting.
    }
    if (this.#over() || this.#heard) return;
    const body = answer.body;
    if (answer.status === 401) {
      this.#refused(body);
      return;
    }
    if (!answer.ok || !body?.state) return;
    this.#user = body.user;
    this.#apply(body.state);
    this.#setHold(body.hold ?? null); // degraded mode hears holds by polling, too
    if (this.#failures >= this.options.degradedAfter) this.#enterDegraded();
  }

  #enterDegraded() {
    const first = this.#status !== Status.DEGRADED;
    this.#setStatus(Status.DEGRADED);
    if (first) this.switcher.resend();
    this.http.startPolling(() => this.#poll());
  }

  async #poll() {
    if (this.#over() || this.#heard) return;
    await this.#probe();
    if (this.#status === Status.DEGRADED) this.switcher.resend();
  }

  async #post(path) {
    let response;
    try {
      response = await fetch(new URL(path, this.api), { method: "POST", credentials: "include" });
    } catch (error) {
      throw new Error("The hub cannot be reached; try again.", { cause: error });
    }
    const body = await response.json().catch(() => ({}));
    if (response.status === 401) this.#refused(body);
    if (!response.ok) throw new Error(body.message ?? `The hub answered ${response.status}.`);
    return body;
  }

  // Sessions.

  /** The hub answered 401: the session is over; its body says why (ErrorBody.reason). */
  #refused(body) {
    // The body's message is for developers ("unknown or collected"); a person reads the same
    // words whichever way the end was learnt.
    const reason = body?.reason === "logout" || body?.reason === "revoked" ? body.reason : "expired";
    this.#endSession(reason, true);
  }

  #sessionExtended(expiresAt, announce = true) {
    const moved = this.#expiresAt !== null && expiresAt !== this.#expiresAt;
    this.#expiresAt = expiresAt;
    if (moved && announce) this.#emit("session", { kind: "extended", expires_at: expiresAt });
  }

  #endSession(reason, share, message = null) {
    if (this.#over()) return;
    const words = typeof message === "string" && message ? message : (ENDED_MESSAGES[reason] ?? "The session ended.");
    if (share) this.channel?.post({ kind: "ended", user: this.#user?.id, reason, message: words });
    this.#shutdown({ ok: false, reason: "ended", message: words });
    this.#setStatus(Status.ENDED);
    this.#emit("session", { kind: "ended", reason, message: words });
  }

  #shutdown(decision) {
    const socket = this.#socket;
    this.#socket = null;
    if (socket) {
      socket.onmessage = socket.onclose = null;
      socket.close(CloseCode.NORMAL);
    }
    this.#stopHeartbeat();
    this.http.stopPolling();
    this.backoff.lost();
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    this.switcher.cancel(decision);
    for (const [target, type, listener] of this.#listeners) {
      target.removeEventListener(type, listener);
    }
    this.#listeners = [];
    this.channel?.close();
    this.link?.close();
    PAGE_TAB_IDS.delete(this.#tabId);
  }

  /** Hold `id` as this client's tab id (in sessionStorage too when `stored`). */
  #takeId(id, stored) {
    PAGE_TAB_IDS.delete(this.#tabId);
    this.#tabId = id;
    this.#ownsStoredId = stored;
    if (!this.#over()) PAGE_TAB_IDS.add(id); // a closed client holds no id of the page
    if (stored) this.storage?.setItem(this.options.tabKey, id);
  }

  // Small helpers.

  #over() {
    return this.#status === Status.ENDED || this.#status === Status.CLOSED;
  }

  #goneMessage() {
    return this.#status === Status.ENDED ? "The session ended." : "The hub client was closed.";
  }

  #setStatus(status) {
    if (status === this.#status) return;
    const previous = this.#status;
    this.#status = status;
    this.#emit("status", { status, previous });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #listen(target, type, listener) {
    if (typeof target?.addEventListener !== "function") return;
    target.addEventListener(type, listener);
    this.#listeners.push([target, type, listener]);
  }
}
