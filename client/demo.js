// The demo page's script (client/index.html): a file, not an inline <script>, because the hub's
// Content-Security-Policy runs scripts from 'self' only. For the same reason the page has no
// inline event handlers and no style attributes: listeners are added here, styles are classes.
import { HubClient, Status, TabChannel, describePlatform } from "./navigation.js";

const $ = (id) => document.getElementById(id);
// Tests (and developers) may tune the client before the page loads: window.hubOptions; and
// "?share" in the address shares one connection among this browser's tabs (shareConnection).
const options = { ...(window.hubOptions ?? {}) };
if (new URLSearchParams(location.search).has("share")) options.shareConnection = true;
// Another tab of this browser signed in: follow it. (The client's own channel carries states and
// session ends; this page adds the "login" message, which the client ignores.)
const pages = new TabChannel(options.channelName ?? "platform-hub", (message) => {
  if (message?.kind === "login" && !$("login-view").hidden) resume();
});
let hub = null;
let shownPlatforms = "";

const STATUS_WORDS = {
  [Status.CONNECTING]: "Connecting",
  [Status.OPEN]: "Live",
  [Status.RECONNECTING]: "Reconnecting…",
  [Status.DEGRADED]: "Live (HTTP fallback)",
  [Status.ENDED]: "Signed out",
  [Status.CLOSED]: "Closed",
};

const UNREACHABLE = "The hub cannot be reached. Try again in a moment.";

let busyShown = false; // the message shown is a switch refused by a hold

function say(text, kind = "info") {
  $("message").textContent = text;
  $("message").className = kind;
  busyShown = false;
}

/** Say what went wrong in the page itself (a bug, a browser without an API), not "unreachable". */
function explain(error) {
  console.error(error);
  say(`The page failed: ${error?.message ?? error}`, "error");
}
addEventListener("error", (event) => explain(event.error ?? event.message));
addEventListener("unhandledrejection", (event) => explain(event.reason));

/**
 * Call the hub's HTTP API: resolves with `{ok, body, message}` for any answer (`message` is the
 * hub's sentence, or names the status), and rejects, saying so, only when none came.
 */
async function callHub(method, path, body) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: body ? { "content-type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
  } catch (error) {
    throw new Error(UNREACHABLE, { cause: error });
  }
  const answer = await response.json().catch(() => null);
  const message = answer?.message ?? `The hub answered ${response.status} ${response.statusText}.`;
  return { ok: response.ok, body: answer, message };
}

function announce(text) {
  $("announcer").textContent = text;
}

function showLogin(text) {
  $("app-view").hidden = true;
  $("who").hidden = true;
  $("login-view").hidden = false;
  shownPlatforms = "";
  if (text) say(text);
  $("username").focus();
}

function render(state) {
  const platforms = Array.isArray(state.platforms) ? state.platforms : [];
  const key = JSON.stringify(platforms);
  if (key !== shownPlatforms) {
    shownPlatforms = key;
    $("platforms").replaceChildren(...platforms.map(platformRow));
    $("no-platforms").hidden = platforms.length > 0;
  }
  for (const row of $("platforms").children) {
    const id = Number(row.dataset.id);
    const input = row.querySelector("input");
    input.checked = id === state.active;
    row.classList.toggle("active", id === state.active);
    const tag = row.querySelector(".tag");
    tag.hidden = !(id === state.pending || row.dataset.default === "true");
    tag.className = id === state.pending ? "tag pending" : "tag";
    tag.textContent = id === state.pending ? "Switching…" : "Default";
  }
  $("version").textContent = state.version;
}

/** A span of platform data: text only, its direction its own (dir=auto isolates it). */
function dataSpan(className, text, title = text) {
  const span = document.createElement("span");
  span.className = className;
  span.dir = "auto";
  span.textContent = text;
  span.title = title;
  return span;
}

/** The title of a shortened name: the name in full (describePlatform cuts long ones). */
const whole = (value, shown) => (typeof value === "string" && value.trim() ? value : shown);

/** One choice of the platform list; any data renders (describePlatform never throws). */
function platformRow(platform) {
  const shown = describePlatform(platform);
  const row = document.createElement("label");
  row.className = "platform";
  row.dataset.id = platform?.id;
  row.dataset.default = platform?.is_default === true;
  const input = document.createElement("input");
  input.type = "radio";
  input.name = "platform";
  input.value = platform?.id;
  const text = document.createElement("span");
  const handle = [shown.username && `@${shown.username}`, shown.host].filter(Boolean).join(" · ");
  text.append(dataSpan("name", shown.name, whole(platform?.name, shown.name)), dataSpan("handle", handle));
  const tag = document.createElement("span");
  tag.className = "tag";
  row.append(input, text, tag);
  return row;
}

// Platform management (docs/protocol.md, "HTTP API"): every change reaches all tabs as a state.
async function platformCall(method, path, body) {
  let answer;
  try {
    answer = await callHub(method, path, body);
  } catch (error) {
    say(error.message, "error");
    return null;
  }
  if (!answer.ok) {
    say(answer.message, "error");
    return null;
  }
  renderManaged(answer.body?.platforms);
  return answer.body;
}

let managedVersion = -1;
async function refreshManaged(version) {
  if (version === managedVersion) return;
  managedVersion = version;
  await platformCall("GET", "/api/platforms");
}

function renderManaged(platforms) {
  $("managed").replaceChildren(...(Array.isArray(platforms) ? platforms : []).map((platform) => {
    const row = document.createElement("div");
    const active = platform?.is_active === true;
    row.className = `managed-row${active ? "" : " inactive"}`;
    row.dataset.id = platform?.id;
    const shown = describePlatform(platform);
    const text = shown.name + (platform?.is_default === true ? " (default)" : "");
    const name = dataSpan("name", text, whole(platform?.name, text));
    const button = (label, action) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "quiet";
      b.textContent = label;
      b.dataset.action = action;
      return b;
    };
    row.append(name, button("Rename", "rename"),
      button(active ? "Deactivate" : "Reactivate", active ? "off" : "on"));
    if (active && platform.is_default !== true) row.append(button("Make default", "default"));
    row.append(button("Delete", "delete"));
    return row;
  }));
}

$("managed").addEventListener("click", async (e) => {
  const action = e.target.dataset?.action;
  if (!action) return;
  const id = e.target.closest(".managed-row").dataset.id;
  say("");
  if (action === "delete") return platformCall("DELETE", `/api/platforms/${id}`);
  if (action === "rename") {
    const name = prompt("New name");
    return name ? platformCall("PATCH", `/api/platforms/${id}`, { name }) : null;
  }
  const body = action === "default" ? { is_default: true } : { is_active: action === "on" };
  return platformCall("PATCH", `/api/platforms/${id}`, body);
});

$("add-platform").addEventListener("submit", async (e) => {
  e.preventDefault();
  say("");
  const added = await platformCall("POST", "/api/platforms", {
    name: $("new-name").value,
    kind: $("new-kind").value,
    instance_url: $("new-url").value,
    username: $("new-username").value,
    is_default: $("new-default").checked,
  });
  if (added) $("add-platform").reset();
});

$("manage").addEventListener("toggle", () => {
  if ($("manage").open) refreshManaged(null);
});

// The person's devices (docs/protocol.md, "presence"): each live login session, its open tabs,
// and a way to sign another one out.
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function renderDevices(devices) {
  const list = Array.isArray(devices) ? devices : [];
  $("devices-title").textContent = `Signed in on ${plural(Math.max(list.length, 1), "device")}`;
  $("devices").replaceChildren(...list.map((device) => {
    const row = document.createElement("li");
    row.className = "device";
    row.dataset.session = device.session;
    const since = new Date(device.signed_in_at).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
    const open = device.tabs > 0 ? `${plural(device.tabs, "tab")} open` : "no tab open";
    const when = `${device.current ? "this device · " : ""}${open} · signed in ${since}`;
    row.append(dataSpan("name", String(device.description)), dataSpan("when", when));
    if (!device.current) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "quiet";
      button.textContent = "Sign out";
      button.dataset.session = device.session;
      row.append(button);
    }
    return row;
  }));
}

// With a shared connection (shareConnection), which tab of this browser carries it.
function renderLink() {
  $("link").hidden = !hub?.link;
  if (!hub?.link) return;
  $("link").textContent = hub.link.leader
    ? "This browser's tabs share one connection to the hub, and this tab carries it."
    : "This browser's tabs share one connection to the hub, carried by another tab.";
}

$("devices").addEventListener("click", async (e) => {
  const session = e.target.dataset?.session;
  if (!hub || !session || e.target.tagName !== "BUTTON") return;
  e.target.disabled = true;
  try {
    await hub.revokeDevice(session);
    announce("That device is signed out.");
  } catch (error) {
    say(error.message, "error");
    e.target.disabled = false;
  }
});

/** Show the signed-in page and connect; a failure says its cause (it is not the network's). */
function start(user) {
  try {
    connect(user);
  } catch (error) {
    explain(error);
  }
}

function connect(user) {
  hub?.close();
  hub = null;
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  $("who").hidden = false;
  $("expiry").hidden = true;
  $("hold").hidden = true;
  renderDevices([]);
  $("user").textContent = user?.name ?? "";
  say("");
  hub = new HubClient(options);
  window.hub = hub;
  $("tab").textContent = hub.tabId.slice(0, 8);
  hub.addEventListener("state", (e) => {
    render(e.detail);
    renderLink(); // a new leader's hello comes with a state, not a new status
    if ($("manage").open) refreshManaged(e.detail.version);
  });
  hub.addEventListener("status", (e) => {
    const { status, previous } = e.detail;
    $("status").textContent = STATUS_WORDS[status] ?? status;
    $("status").className = `badge ${status}`;
    $("tab").textContent = hub.tabId.slice(0, 8);
    renderLink();
    if (status === Status.RECONNECTING) announce("Connection lost. Reconnecting…");
    else if (status === Status.DEGRADED) announce("Live updates are blocked; using the HTTP fallback.");
    else if (status === Status.OPEN && previous !== Status.CONNECTING) announce("Connected again.");
  });
  hub.addEventListener("hold", (e) => {
    const hold = e.detail;
    $("hold").hidden = !hold;
    // The choices look paused while held (the banner says why); a click still asks, and the
    // hub's refusal says why it waits.
    $("platforms").classList.toggle("held", Boolean(hold));
    if (hold) {
      const until = new Date(hold.expires_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      $("hold-text").textContent = `Busy: ${hold.reason}. Switching is paused until it is done (at the latest ${until}).`;
    } else {
      if (busyShown) say("");
      announce("Switching is possible again.");
    }
  });
  hub.addEventListener("presence", (e) => renderDevices(e.detail));
  hub.addEventListener("rejected", (e) => {
    say(e.detail.message, "error");
    busyShown = e.detail.reason === "busy";
  });
  hub.addEventListener("error", (e) => say(e.detail.message, "error"));
  hub.addEventListener("session", (e) => {
    const detail = e.detail;
    if (detail.kind === "expiring") {
      const at = new Date(detail.expires_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      $("expiry-text").textContent = `Your session expires at ${at}.`;
      $("expiry").hidden = false;
    } else if (detail.kind === "extended") {
      $("expiry").hidden = true;
    } else if (detail.kind === "ended") {
      showLogin(detail.message);
    }
  });
}

$("platforms").addEventListener("change", async (e) => {
  if (!hub || e.target.name !== "platform") return;
  say("");
  const decision = await hub.switchPlatform(Number(e.target.value));
  if (!decision.ok && decision.reason === "timeout") say(decision.message, "error");
});

$("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("login-button").disabled = true;
  let answer;
  try {
    answer = await callHub("POST", "/api/login", {
      username: $("username").value,
      password: $("password").value,
    });
  } catch (error) {
    say(error.message, "error");
    return;
  } finally {
    $("login-button").disabled = false;
  }
  if (!answer.ok) {
    say(answer.message, "error");
    return;
  }
  $("password").value = "";
  pages.post({ kind: "login" });
  start(answer.body?.user);
});

$("stay").addEventListener("click", async () => {
  try {
    await hub.extendSession();
    announce("Session extended.");
  } catch (error) {
    say(error.message, "error");
  }
});

for (const [button, everywhere] of [["logout", false], ["logout-all", true]]) {
  $(button).addEventListener("click", async () => {
    try {
      await hub.logout({ everywhere });
    } catch (error) {
      say(error.message, "error");
    }
  });
}

async function resume() {
  let answer;
  try {
    answer = await callHub("GET", "/api/state");
  } catch (error) {
    showLogin(error.message);
    return;
  }
  if (answer.ok) start(answer.body?.user);
  else showLogin("");
}

resume();
