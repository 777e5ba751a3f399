// The Node ceiling: `ws` doing the hub's per-user fan-out with an in-memory version, as
// bench/ceiling.py does with Python's websockets. Same wire protocol as the hub for what the
// benchmark uses (hello, switch, switched, rejected, state, ping/pong); no database, no
// sessions. A tab connects to /ws?user=N&tab=T. ws uses its native helper (bufferutil)
// when it installed; WS_NO_BUFFER_UTIL=1 turns it off.
//
//     node bench/node/ws-ceiling.mjs --port 8300
import { WebSocketServer } from "ws";
import { options, ready, roomOf } from "./shared.mjs";

const { port } = options();
const server = new WebSocketServer({ host: "127.0.0.1", port, path: "/ws", perMessageDeflate: false });

server.on("connection", (socket, request) => {
  const query = new URL(request.url, "http://localhost").searchParams;
  const user = Number(query.get("user"));
  const tab = query.get("tab") ?? "t";
  if (!Number.isSafeInteger(user)) {
    socket.close(1008, "no user");
    return;
  }
  const room = roomOf(user);
  room.tabs.add(socket);
  socket.on("close", () => room.tabs.delete(socket));
  socket.send(JSON.stringify({ type: "hello", tab, state: room.state() }));
  socket.on("message", (data) => {
    const message = JSON.parse(data);
    if (message.type === "ping") {
      socket.send('{"type":"pong"}');
      return;
    }
    const version = room.switch(message);
    if (version === null) {
      const reply = { type: "rejected", id: message.id, reason: "stale", message: "stale", state: room.state() };
      socket.send(JSON.stringify(reply));
      return;
    }
    socket.send(JSON.stringify({ type: "switched", id: message.id, version }));
    const cause = { kind: "switch", tab, request: message.id };
    // Encoded once; ws queues what a slow tab cannot take yet, it never waits for one.
    const frame = Buffer.from(JSON.stringify({ type: "state", state: room.state(), cause }));
    for (const other of room.tabs) other.send(frame, { binary: false });
  });
});
server.on("listening", () => ready(port));
