// The tabs of bench/storm.py in Node: the same tabs, backoff and report as its Python
// `tabs` role, at a fraction of the CPU. On 2 cores, 10,000 tabs in one Python process took
// a whole core and were the limit of every figure (the ceiling's too); browsers are other
// machines, so the tabs should cost the target's machine as little as they can.
//
//     node bench/node/storm-tabs.mjs --target ws://127.0.0.1:8000/ws --tabs 10000
//                                    [--per-user 4] [--within 60] [--tokens tokens.json]
//
// Each tab reconnects as client/navigation.js does, with its backoffDelay: after a loss, a
// delay drawn uniformly from [0, min(20 s, 0.5 s x 2^attempt)), or over the window a
// restart's 1012 names when that is wider (restartWindowMs), the attempt counted up by every
// failed try, reset by a hello; it never gives up. Once every tab has had a hello it prints
// {"connected", "connect_tabs_per_s"}; then it reads one line from stdin, the SIGTERM's time
// on the machine's monotonic clock (Python's time.monotonic()), and prints when each tab had
// its first hello after it, or what is missing after --within seconds, with the handshake
// errors by kind. Connections refused while nothing listened are counted apart.
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import WebSocket from "ws";

import { backoffDelay, restartWindowMs } from "../../client/navigation.js";

const BASE_MS = 500; // client/navigation.js's baseDelayMs
const CAP_MS = 20_000; // and maxDelayMs
const HEARTBEAT_S = 20; // under the hub's heartbeat (25 s): a tab pings, as the client does
const OPEN_TIMEOUT_MS = 10_000; // the opening handshake, as websockets' open_timeout
const HELLO_TIMEOUT_MS = 10_000; // then the hello
// Errors by the names the Python role counts them under, so the two reports compare.
const PYTHON_NAMES = { ECONNRESET: "ConnectionResetError", EPIPE: "BrokenPipeError" };

const { values } = parseArgs({
  options: {
    target: { type: "string" },
    tabs: { type: "string", default: "10000" },
    "per-user": { type: "string", default: "4" },
    within: { type: "string", default: "60" },
    tokens: { type: "string" },
  },
});
const tabCount = Number(values.tabs);
const perUser = Number(values["per-user"]);
const withinS = Number(values.within);
const tokens = values.tokens ? JSON.parse(readFileSync(values.tokens, "utf8")) : null;

/** Seconds on CLOCK_MONOTONIC, as Python's time.monotonic() reads it. */
const monotonic = () => Number(process.hrtime.bigint()) / 1e9;

const users = tokens
  ? Object.keys(tokens).map(Number)
  : Array.from({ length: Math.floor(tabCount / perUser) }, (_, i) => i + 1);
const tabs = users.flatMap((user) =>
  Array.from({ length: perUser }, (_, n) => ({ user, name: `u${user}t${n}`, hellos: [] })),
).slice(0, tabCount);

let errors = new Map();
let refused = 0;
const count = (kind) => errors.set(kind, (errors.get(kind) ?? 0) + 1);

function address(tab) {
  if (tokens) {
    const headers = { Authorization: `Bearer ${tokens[String(tab.user)]}` };
    return [`${values.target}?tab=${tab.name}`, headers];
  }
  return [`${values.target}?user=${tab.user}&tab=${tab.name}`, {}];
}

/** Keep one tab connected for ever, reconnecting with the client's backoff. */
function hold(tab) {
  let attempt = 0;
  const [url, headers] = address(tab);

  const retry = (windowMs) => {
    setTimeout(open, backoffDelay(attempt, BASE_MS, CAP_MS, Math.random, windowMs));
    attempt += 1;
  };

  function open() {
    let opened = false;
    let hello = false;
    let failed = false; // an error was counted for this try: its close is not the restart
    let silence = null;
    const socket = new WebSocket(url, {
      headers,
      handshakeTimeout: OPEN_TIMEOUT_MS,
      perMessageDeflate: false,
    });
    let helloTimer = null; // from the open, as the Python role's 10 s for the hello

    const quiet = () => {
      clearTimeout(silence);
      silence = setTimeout(() => {
        socket.send('{"type":"ping"}');
        quiet();
      }, HEARTBEAT_S * 1000);
    };
    socket.on("unexpected-response", (_request, response) => {
      count(`http ${response.statusCode}`);
      failed = true;
      socket.terminate(); // its error and close follow
    });
    socket.on("open", () => {
      opened = true;
      helloTimer = setTimeout(() => {
        if (!hello) {
          count("no hello within 10 s");
          failed = true;
          socket.terminate();
        }
      }, HELLO_TIMEOUT_MS);
    });
    socket.on("message", () => {
      if (!hello) {
        hello = true;
        clearTimeout(helloTimer);
        tab.hellos.push(monotonic());
        attempt = 0; // it stays up longer than the client's healthyAfterMs
      }
      quiet();
    });
    socket.on("error", (error) => {
      if (failed) return;
      failed = true;
      if (error.code === "ECONNREFUSED") refused += 1;
      else if (/timed out/i.test(error.message)) count("TimeoutError");
      else count(PYTHON_NAMES[error.code] ?? error.code ?? error.message.slice(0, 60));
    });
    socket.on("close", (code, reason) => {
      clearTimeout(helloTimer);
      clearTimeout(silence);
      if (opened && !hello && !failed) {
        count(`closed before its hello (${code === 1006 ? "abnormal" : code})`);
      }
      retry(code === 1012 ? restartWindowMs(reason.toString()) : 0);
    });
  }

  open();
}

// Listening from the start: a line written early is not lost.
const lines = createInterface({ input: process.stdin });
const firstLine = new Promise((resolve) => lines.once("line", resolve));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const started = monotonic();
for (const tab of tabs) hold(tab);
while (!tabs.every((tab) => tab.hellos.length > 0)) await sleep(50);
const connectRate = tabs.length / (monotonic() - started);
errors = new Map();
refused = 0;
console.log(JSON.stringify({ connected: tabs.length, connect_tabs_per_s: Math.round(connectRate) }));

const term = Number(await firstLine);
const deadline = monotonic() + withinS;
const back = (tab) => tab.hellos.find((t) => t > term);
while (monotonic() < deadline && !tabs.every(back)) await sleep(50);
const returned = tabs.map(back).filter((t) => t !== undefined).sort((a, b) => a - b);
console.log(
  JSON.stringify({
    back: returned.length,
    first_hello: returned[0] ?? null,
    last_hello: returned.at(-1) ?? null,
    median_hello: returned[Math.floor(returned.length / 2)] ?? null,
    refused,
    errors: Object.fromEntries(errors),
  }),
);
process.exit(0);
