// The server the socket.io-protocol test-suite expects, in JS socket.io 4.8: the
// reference the Python servers of suite_app.py are compared with.
//
//   node tests/protocol/suite_server.js off|on
//
// The configuration is the one in the suite's README; "on" adds connection state
// recovery (socket.io's in-memory adapter). socket.io comes from bench/js (`npm ci`
// there). Listens on an ephemeral port of 127.0.0.1 and prints {"port": P}.
"use strict";

const path = require("node:path");
const { createRequire } = require("node:module");

const benchJs = path.join(__dirname, "..", "..", "bench", "js", "package.json");
const { Server } = createRequire(benchJs)("socket.io");

const recovery = process.argv[2] === "on";
const io = new Server({
  pingInterval: 300,
  pingTimeout: 200,
  maxPayload: 1000000,
  connectTimeout: 1000,
  cors: { origin: "*" },
  ...(recovery ? { connectionStateRecovery: {} } : {}),
});

io.on("connection", (socket) => {
  socket.emit("auth", socket.handshake.auth);

  socket.on("message", (...args) => {
    socket.emit("message-back", ...args);
  });

  socket.on("message-with-ack", (...args) => {
    const ack = args.pop();
    ack(...args);
  });
});

io.of("/custom").on("connection", (socket) => {
  socket.emit("auth", socket.handshake.auth);
});

const httpServer = require("node:http").createServer();
io.attach(httpServer);
httpServer.listen(0, "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ port: httpServer.address().port }) + "\n");
});

function stop() {
  io.close();
  setTimeout(() => process.exit(0), 200).unref();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
