// A page written to docs/client.md's API, type-checked with `tsc --strict --noEmit`
// (scripts/node-tests). Each @ts-expect-error line must fail to compile: the types stay tight.
import {
  CloseCode,
  DEFAULTS,
  type Decision,
  describePlatform,
  HubClient,
  type HubClientOptions,
  type StateView,
  Status,
} from "../../../client/navigation.js";

const options: HubClientOptions = {
  url: "wss://hub.example.com/ws",
  api: "https://hub.example.com/api",
  channelName: null,
  storage: window.localStorage,
  debounceMs: 0,
};
const hub = new HubClient(options);
new HubClient({ url: "/ws", channelName: "my-app" });
new HubClient();

function render(state: StateView, pending: number | null): string {
  const active = state.platforms.find((platform) => platform.id === state.active);
  const shown = active ? describePlatform(active) : null;
  // The host app maps the platform back to its own account by external id (absent if none).
  const account: string | null = active?.external_id ?? null;
  return `${state.version} ${shown?.name ?? "none"} @${shown?.username ?? ""} ${pending ?? ""} ${account}`;
}

hub.addEventListener("state", (event) => {
  render(event.detail, event.detail.pending);
});
hub.addEventListener("status", (event) => {
  const { status, previous } = event.detail;
  if (status === Status.ENDED || previous === "closed") hub.close();
});
hub.addEventListener("rejected", (event) => {
  const why: string = event.detail.message;
  if (event.detail.reason === "busy" && event.detail.state) render(event.detail.state, null);
  void why;
});
hub.addEventListener("hold", (event) => {
  const until: string | undefined = event.detail?.expires_at;
  void until;
});
hub.addEventListener("presence", (event) => {
  const others = event.detail.filter((device) => !device.current);
  const first: string | undefined = others[0]?.session;
  const tabs: number = hub.presence.reduce((sum, device) => sum + device.tabs, 0);
  if (first !== undefined) void hub.revokeDevice(first).then((ended) => ended.tabs + tabs);
  void others.map((device) => `${device.description} since ${device.signed_in_at}`);
});
hub.addEventListener("session", (event) => {
  const detail = event.detail;
  if (detail.kind === "ended") {
    const words: string = detail.message;
    const reason: "logout" | "expired" | "revoked" = detail.reason;
    void [words, reason];
  } else {
    const at: string = detail.expires_at;
    void at;
  }
});
hub.addEventListener("error", (event) => console.warn(event.detail.code, event.detail.message));
hub.addEventListener("unknown", (event) => console.warn(event.detail.message));

async function choose(platform: number): Promise<void> {
  const decision: Decision = await hub.switchPlatform(platform);
  if (decision.ok) {
    const version: number = decision.version;
    void version;
  } else if (decision.reason === "stale") {
    console.info(decision.message, decision.state?.version);
  }
  const expiry: string = await hub.extendSession();
  const ended = await hub.logout({ everywhere: true });
  void [expiry, ended.tabs, hub.tabId, hub.user?.name, hub.hold, hub.expiresAt, hub.state?.pending];
}
void choose;

const code: number = CloseCode.SESSION_ENDED;
const delay: number = DEFAULTS.baseDelayMs;
void [code, delay];

// @ts-expect-error a platform is a number
void hub.switchPlatform("2");
// @ts-expect-error unknown options are refused
new HubClient({ urll: "/ws" });
hub.addEventListener("session", (event) => {
  // @ts-expect-error expires_at exists only on expiring and extended
  void event.detail.expires_at;
});
hub.addEventListener("status", (event) => {
  // @ts-expect-error a status is one of six strings
  const wrong: "online" = event.detail.status;
  void wrong;
});
