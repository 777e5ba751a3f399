// What both Node peers share with bench/ceiling.py and bench/peer.py: the platforms, a room
// per user with an in-memory version, and the version rule.
import { parseArgs } from "node:util";

export const PLATFORMS = [1, 2, 3].map((i) => ({
  id: i,
  name: `P${i}`,
  kind: "mastodon",
  instance_url: "https://x.example",
  username: "u",
  is_default: i === 1,
}));

export class Room {
  constructor() {
    this.version = 0;
    this.active = 1;
    this.tabs = new Set();
  }

  state() {
    return { version: this.version, active: this.active, platforms: PLATFORMS };
  }

  /** Apply a switch if its base is current: the new version, or null (stale). */
  switch(message) {
    if (message.base !== this.version) return null;
    this.version += 1;
    this.active = message.platform;
    return this.version;
  }
}

const rooms = new Map();

export function roomOf(user) {
  let room = rooms.get(user);
  if (room === undefined) {
    room = new Room();
    rooms.set(user, room);
  }
  return room;
}

export function options(extra = {}) {
  const { values } = parseArgs({
    options: { port: { type: "string", default: "8300" }, ...extra },
  });
  return { ...values, port: Number(values.port) };
}

export function ready(port) {
  // bench/targets.py waits for the port; this line is for a person running it by hand.
  console.error(`listening on 127.0.0.1:${port}`);
}
