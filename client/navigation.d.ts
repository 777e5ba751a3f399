// Types of client/navigation.js, the hub's browser client. The messages mirror server/protocol.py;
// docs/client.md documents every option, event and field. Checked with `tsc --strict` against
// tests/client/typecheck/sample.ts, a page written to the documented API (scripts/node-tests).

// Messages and bodies of the wire protocol.

export interface PlatformView {
  id: number;
  name: string;
  kind: string;
  instance_url: string;
  username: string;
  is_default: boolean;
  /** The host app's own id for the account: present only when it gave one (host API). */
  external_id?: string;
}

export interface StateView {
  version: number;
  active: number | null;
  platforms: PlatformView[];
}

export interface UserInfo {
  id: number;
  name: string;
}

export interface HoldView {
  reason: string;
  expires_at: string;
}

/** One of the person's devices: a live login session (never its token, never an address). */
export interface Device {
  /** The session's handle (random, never its token): pass it to revokeDevice(). */
  session: string;
  /** From the user agent: "Chrome on macOS", or "Unknown device". */
  description: string;
  signed_in_at: string;
  /** When a tab of it last connected or it last made a request (to within a minute). */
  last_active_at: string;
  /** Its open tabs, on every hub process. */
  tabs: number;
  /** Whether it is this tab's own session. */
  current: boolean;
}

export type RejectReason =
  | "stale"
  | "unknown_platform"
  | "inactive_platform"
  | "rate_limited"
  | "unavailable"
  | "bad_request"
  | "busy";

export type SessionEndReason = "logout" | "expired" | "revoked";

export type ErrorCode =
  | "bad_message"
  | "bad_request"
  | "invalid_credentials"
  | "unauthenticated"
  | "forbidden_origin"
  | "forbidden_host"
  | "unavailable"
  | "rate_limited"
  | "too_large"
  | "timeout"
  | "not_found"
  | "method_not_allowed"
  | "unknown_platform"
  | "inactive_platform"
  | "last_active_platform"
  | "name_taken"
  | "account_taken"
  | "too_many_platforms"
  | "default_taken"
  | "unknown_user"
  | "unknown_session";

/** A state as the client shows it: the hub's, with the platform a pending switch chose. */
export interface ClientState extends StateView {
  pending: number | null;
}

export type StatusValue = "connecting" | "open" | "reconnecting" | "degraded" | "ended" | "closed";

/** What `switchPlatform` resolves with. */
export type Decision =
  | { ok: true; version: number; platform: number }
  | {
      ok: false;
      reason: RejectReason | "superseded" | "timeout" | "ended" | "closed";
      message: string;
      state?: StateView | null;
    };

// The client.

/** The wire protocol's version this client speaks; the npm package's major version. */
export declare const PROTOCOL: 1;

export declare const CloseCode: Readonly<{
  NORMAL: 1000;
  ABNORMAL: 1006;
  SERVICE_RESTART: 1012;
  TRY_AGAIN_LATER: 1013;
  PONG_TIMEOUT: 4000;
  SESSION_ENDED: 4001;
  PROTOCOL_ABUSE: 4002;
  TAB_LIMIT: 4003;
  IDLE_TIMEOUT: 4004;
  TAB_REPLACED: 4005;
  SLOW_CONSUMER: 4008;
}>;

export declare const Status: Readonly<{
  CONNECTING: "connecting";
  OPEN: "open";
  RECONNECTING: "reconnecting";
  DEGRADED: "degraded";
  ENDED: "ended";
  CLOSED: "closed";
}>;

/** Where a tab keeps its id: sessionStorage, or anything with the same three methods. */
export interface TabIdStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface HubClientOptions {
  /** The hub's WebSocket endpoint, relative to the page; http(s) becomes ws(s). */
  url?: string;
  /** Base of the hub's HTTP API (session probe, degraded mode, logout, extendSession). */
  api?: string;
  baseDelayMs?: number;
  maxDelayMs?: number;
  healthyAfterMs?: number;
  pongTimeoutMs?: number;
  debounceMs?: number;
  switchTimeoutMs?: number;
  degradedAfter?: number;
  pollIntervalMs?: number;
  claimWindowMs?: number;
  /** The BroadcastChannel the tabs of this browser share; null: none. */
  channelName?: string | null;
  /** The sessionStorage key of the tab id. */
  tabKey?: string;
  /**
   * One WebSocket for all the tabs of this browser profile and origin: a leader elected with
   * Web Locks holds it, the others reach the hub through it over a BroadcastChannel. Where
   * either API is missing, each tab keeps a socket of its own. Default false.
   */
  shareConnection?: boolean;
  /** The name of the lock and the channel the shared connection uses. */
  shareName?: string;
  /** Where the tab id is kept (default: sessionStorage). */
  storage?: TabIdStorage;
}

export declare const DEFAULTS: Readonly<Required<Omit<HubClientOptions, "storage">>> & {
  readonly channelName: string;
};

export type SessionEventDetail =
  | { kind: "expiring"; expires_at: string }
  | { kind: "extended"; expires_at: string }
  | { kind: "ended"; reason: SessionEndReason; message: string };

/** Each event HubClient dispatches, with its CustomEvent's detail. */
export interface HubClientEventMap {
  state: CustomEvent<Readonly<ClientState>>;
  status: CustomEvent<{ status: StatusValue; previous: StatusValue }>;
  rejected: CustomEvent<{ reason: RejectReason; message: string; state: StateView | null }>;
  hold: CustomEvent<HoldView | null>;
  /** The person's devices changed: one came or went, or opened or closed a tab. */
  presence: CustomEvent<readonly Device[]>;
  session: CustomEvent<SessionEventDetail>;
  /** The hub's error frames, and the client's own protocol_mismatch (reported once). */
  error: CustomEvent<{ code: ErrorCode | "protocol_mismatch"; message: string }>;
  unknown: CustomEvent<{ message: unknown }>;
}

/** The connection shared by a browser's tabs (`shareConnection`). */
export declare class SharedLink {
  /** Whether Web Locks and BroadcastChannel are both here. */
  static available(): boolean;
  /** Whether this tab holds the shared WebSocket. */
  get leader(): boolean;
  /** Settles once this tab knows whether it leads now. */
  readonly decided: Promise<void>;
}

export declare class HubClient extends EventTarget {
  constructor(options?: HubClientOptions);
  readonly url: URL;
  readonly api: URL;
  /** The connection shared with this browser's other tabs, or null: a socket of its own. */
  readonly link: SharedLink | null;
  /** The state to show: authoritative, with the pending choice; null before the first. */
  get state(): Readonly<ClientState> | null;
  get status(): StatusValue;
  get user(): UserInfo | null;
  /** The session's expiry as the hub last reported it (ISO 8601), or null. */
  get expiresAt(): string | null;
  get hold(): HoldView | null;
  /** The person's devices, newest sign-in first; empty until the first hello. */
  get presence(): readonly Device[];
  get tabId(): string;
  /** Ask the hub to make `platform` active; rapid calls coalesce, only the last is sent. */
  switchPlatform(platform: number): Promise<Decision>;
  /** Move the session's idle expiry forward; resolves with the new expiry. */
  extendSession(): Promise<string>;
  /** Log out this browser's session, or with `everywhere` every session of the user. */
  logout(options?: { everywhere?: boolean }): Promise<{ sessions: number; tabs: number }>;
  /** End one of the person's devices (its `session` from `presence`); its tabs end. */
  revokeDevice(session: string): Promise<{ sessions: number; tabs: number }>;
  /** Stop for good: close the connection, cancel timers and pending switches. */
  close(): void;

  addEventListener<K extends keyof HubClientEventMap>(
    type: K,
    listener: (this: HubClient, event: HubClientEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof HubClientEventMap>(
    type: K,
    listener: (this: HubClient, event: HubClientEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

// For pages: platform data may hold anything.

/** Display strings of a platform, safe to show: name, @username and host, each bounded. */
export declare function describePlatform(platform: unknown): {
  name: string;
  username: string;
  host: string;
};

/** A random UUID (version 4), made with crypto.getRandomValues. */
export declare function randomId(crypto?: Crypto): string;

// The building blocks, exported for tests/client/*.test.js.

export declare function backoffDelay(
  attempt: number,
  baseMs: number,
  capMs: number,
  random?: () => number,
  windowMs?: number,
): number;

/** The window, in ms, a 1012 close's reason asks to reconnect within (0: none). */
export declare function restartWindowMs(reason: unknown): number;

export declare class Backoff {
  constructor(
    options: { baseDelayMs: number; maxDelayMs: number; healthyAfterMs: number },
    random?: () => number,
  );
  next(windowMs?: number): number;
  connected(): void;
  lost(): void;
}

export declare class Debouncer<T> {
  constructor(delayMs: number, callback: (value: T) => void);
  push(value: T): void;
  get waiting(): boolean;
  flush(): void;
  cancel(): void;
}

export declare function mergeState(
  shown: StateView | null,
  incoming: StateView | null | undefined,
): StateView | null;

/** One pending choice at a time: debounced, sent, settled by the hub's answer or a timeout. */
export declare class Switcher {
  constructor(options: {
    debounceMs: number;
    switchTimeoutMs: number;
    send: (request: { id: string; platform: number; base: number }) => boolean | void;
    confirmed: () => StateView | null;
    changed: () => void;
    newId?: () => string;
  });
  get target(): number | null;
  choose(platform: number): Promise<Decision>;
  next(): void;
  resend(): void;
  settle(id: string, decision: Decision): boolean;
  cancel(decision: Decision): void;
}

export declare class TabChannel {
  constructor(name: string, onMessage: (message: unknown) => void);
  post(message: unknown): void;
  close(): void;
}

export interface HttpAnswer {
  status: number;
  ok: boolean;
  body: unknown;
}

export declare class HttpFallback {
  constructor(
    options: { api: URL; pollIntervalMs: number },
    fetch?: (input: URL | string, init?: RequestInit) => Promise<Response>,
  );
  state(): Promise<HttpAnswer | null>;
  switch(request: { id: string; platform: number; base: number }): Promise<HttpAnswer | null>;
  startPolling(poll: () => void): void;
  stopPolling(): void;
}
