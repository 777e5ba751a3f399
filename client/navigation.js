// The hub's browser client: one dependency-free ES module, no build step.
// This is the minimal client of the first slice: connect, resync from hello, switch with the
// last-seen version, reconnect with full-jitter backoff, stop on the terminal close 4001.
// docs/protocol.md describes every message; the typedefs below mirror server/protocol.py.

/**
 * @typedef {{id: number, name: string, kind: string, instance_url: string, username: string, is_default: boolean}} Platform
 * @typedef {{version: number, active: number|null, platforms: Platform[]}} State
 * @typedef {{type: "hello", protocol: number, tab: string, user: {id: number, name: string}, state: State, session: {expires_at: string}, heartbeat_s: number}} Hello
 * @typedef {{type: "switched", id: string, version: number}} Switched
 * @typedef {{type: "rejected", id: string, reason: string, message: string, state: State|null}} Rejected
 * @typedef {{type: "state", state: State, cause: {kind: "switch", tab: string|null, request: string}}} StateMessage
 * @typedef {{type: "session_expiring", expires_at: string}} SessionExpiring
 * @typedef {{type: "session_ended", reason: "logout"|"expired"|"revoked"}} SessionEnded
 * @typedef {{type: "error", code: string, message: string}} ErrorMessage
 * @typedef {{type: "pong"}} Pong
 * @typedef {Hello|Switched|Rejected|StateMessage|SessionExpiring|SessionEnded|ErrorMessage|Pong} ServerMessage
 */

export const CloseCode = Object.freeze({
  SESSION_ENDED: 4001,
  PROTOCOL_ABUSE: 4002,
  TAB_LIMIT: 4003,
  IDLE_TIMEOUT: 4004,
  TAB_REPLACED: 4005,
  SLOW_CONSUMER: 4008,
});

function tabId() {
  let id = sessionStorage.getItem("hub.tab");
  if (!id) {
    id = crypto.randomUUID();
    sessionStorage.setItem("hub.tab", id);
  }
  return id;
}

export class HubClient extends EventTarget {
  /** @param {{url?: string, baseDelayMs?: number, maxDelayMs?: number}} [options] */
  constructor(options = {}) {
    super();
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    this.url = new URL(options.url ?? "/ws", `${scheme}//${location.host}`);
    this.baseDelayMs = options.baseDelayMs ?? 500;
    this.maxDelayMs = options.maxDelayMs ?? 20000;
    /** @type {State|null} */ this.state = null;
    this.status = "connecting";
    this.attempt = 0;
    this.closed = false;
    /** @type {Map<string, {resolve: Function}>} */ this.waiting = new Map();
    this.timers = new Set();
    this.connect();
  }

  connect() {
    if (this.closed) return;
    this.url.searchParams.set("tab", tabId());
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.onmessage = (event) => this.receive(JSON.parse(event.data));
    socket.onclose = (event) => this.lost(event.code);
  }

  /** @param {ServerMessage} message */
  receive(message) {
    switch (message.type) {
      case "hello":
        this.attempt = 0;
        this.setStatus("open");
        this.heartbeat(message.heartbeat_s);
        this.apply(message.state, true);
        break;
      case "state":
        this.apply(message.state);
        break;
      case "switched":
        this.settle(message.id, { ok: true, version: message.version });
        break;
      case "rejected":
        if (message.state) this.apply(message.state);
        this.dispatchEvent(new CustomEvent("rejected", { detail: message }));
        this.settle(message.id, { ok: false, reason: message.reason, message: message.message });
        break;
      case "session_expiring":
        this.dispatchEvent(new CustomEvent("session", { detail: { kind: "expiring", expires_at: message.expires_at } }));
        break;
      case "session_ended":
        this.dispatchEvent(new CustomEvent("session", { detail: { kind: "ended", reason: message.reason } }));
        break;
      case "pong":
        break;
      case "error":
        console.warn("hub error", message.code, message.message);
        break;
      default:
        console.warn("hub: unknown message type", message);
    }
  }

  /** Show a state only if it is newer than the one shown: versions never go back. */
  apply(state, force = false) {
    if (!force && this.state && state.version <= this.state.version) return;
    if (this.state && state.version < this.state.version) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }

  settle(id, decision) {
    this.waiting.get(id)?.resolve(decision);
    this.waiting.delete(id);
  }

  /** Ask the hub to make a platform active; resolves with its decision. */
  switchPlatform(platformId) {
    const id = crypto.randomUUID();
    const base = this.state?.version ?? 0;
    return new Promise((resolve) => {
      this.waiting.set(id, { resolve });
      if (this.socket?.readyState !== WebSocket.OPEN) {
        this.settle(id, { ok: false, reason: "unavailable", message: "Not connected to the hub." });
        return;
      }
      this.socket.send(JSON.stringify({ type: "switch", id, platform: platformId, base }));
    });
  }

  heartbeat(seconds) {
    clearInterval(this.pinger);
    this.pinger = setInterval(() => {
      if (this.socket?.readyState === WebSocket.OPEN) this.socket.send('{"type":"ping"}');
    }, seconds * 1000);
  }

  lost(code) {
    clearInterval(this.pinger);
    for (const id of [...this.waiting.keys()]) {
      this.settle(id, { ok: false, reason: "unavailable", message: "Connection lost." });
    }
    if (this.closed) return;
    if (code === CloseCode.SESSION_ENDED) {
      this.closed = true;
      this.setStatus("ended");
      return;
    }
    if (code === CloseCode.TAB_REPLACED) sessionStorage.removeItem("hub.tab");
    this.setStatus("reconnecting");
    // Full jitter: sleep = random(0, min(cap, base * 2**n)).
    const delay = Math.random() * Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** this.attempt++);
    const timer = setTimeout(() => { this.timers.delete(timer); this.connect(); }, delay);
    this.timers.add(timer);
  }

  setStatus(status) {
    if (status === this.status) return;
    const old = this.status;
    this.status = status;
    this.dispatchEvent(new CustomEvent("status", { detail: { oldState: old, newState: status } }));
  }

  close() {
    this.closed = true;
    clearInterval(this.pinger);
    for (const timer of this.timers) clearTimeout(timer);
    this.socket?.close(1000);
  }
}
