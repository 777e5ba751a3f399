// Socket.IO 4 on Node, the peer a team is most likely to pick: one room per user, the switch
// decided in memory with the same version rule as bench/peer.py (python-socketio). Tabs
// connect over WebSocket (Engine.IO 4) with ?user=N&tab=T; the hub's messages are events.
//
//     node bench/node/socketio-peer.mjs --port 8400 [--tuned]
//
// Without --tuned: Socket.IO's defaults, as `npm install socket.io` gives them (bench/
// targets.py also turns ws's optional native add-ons off, which that install lacks). With
// --tuned: what https://socket.io/docs/v4/performance-tuning recommends that applies here:
// ws's native add-ons (bufferutil, utf-8-validate) and discarding each connection's initial
// HTTP request (memory). Not applied: a custom parser (msgpack; the tabs speak JSON) and
// another WebSocket engine (eiows, a native build).
import { createServer } from "node:http";
import { Server } from "socket.io";
import { options, ready, roomOf } from "./shared.mjs";

const { port, tuned } = options({ tuned: { type: "boolean", default: false } });
const http = createServer();
const io = new Server(http);
if (tuned) {
  io.engine.on("connection", (rawSocket) => {
    // The handshake's query is read from the request later: keep what it says first.
    const query = new URL(rawSocket.request.url, "http://localhost").searchParams;
    rawSocket.peer = { user: query.get("user"), tab: query.get("tab") };
    rawSocket.request = null;
  });
}

io.on("connection", (socket) => {
  const named = socket.conn.peer ?? socket.handshake.query;
  const user = Number(named.user);
  const tab = named.tab ?? "t";
  if (!Number.isSafeInteger(user)) {
    socket.disconnect(true); // no user: never one room for every tab
    return;
  }
  const room = roomOf(user);
  const name = `user-${user}`;
  socket.join(name);
  socket.emit("hello", { tab, state: room.state() });
  socket.on("switch", (message) => {
    const version = room.switch(message);
    if (version === null) {
      socket.emit("rejected", { id: message.id, reason: "stale", message: "stale", state: room.state() });
      return;
    }
    socket.emit("switched", { id: message.id, version });
    io.to(name).emit("state", { state: room.state(), cause: { kind: "switch", tab, request: message.id } });
  });
  socket.on("ping", () => socket.emit("pong", {}));
});
http.listen(port, "127.0.0.1", () => ready(port));
