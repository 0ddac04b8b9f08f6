// Reference server for bench/against_js.py: JS socket.io 4.8, its in-memory adapter,
// connection state recovery on. It speaks the same control surface as bench/_node.py
// so the Python driver treats it like any other row:
//
//   node bench/js/server.js [--name N]
//
// prints {"port": P, "control": C, "name": N} once it listens on 127.0.0.1, then serves
// Socket.IO on P and, on C, POST /emit {count, room, size} and GET /cpu. An emit in
// socket.io is synchronous (it queues to local sockets and returns), so /emit runs them
// in one loop, as a JS handler emitting in a loop would; "window" is ignored.
// Compression is off (httpCompression, perMessageDeflate), as on the Python servers.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

const nameAt = process.argv.indexOf("--name");
const name = nameAt > 0 ? process.argv[nameAt + 1] : "js";

const httpServer = http.createServer();
const io = new Server(httpServer, {
  httpCompression: false,
  perMessageDeflate: false,
  maxHttpBufferSize: 1e8,
  connectionStateRecovery: { maxDisconnectionDuration: 600 * 1000, skipMiddlewares: true },
});

io.on("connection", (socket) => {
  const auth = socket.handshake.auth || {};
  if (!socket.recovered && typeof auth.room === "string" && auth.room) {
    socket.join(auth.room);
  }
  socket.on("where", (ack) => {
    if (typeof ack === "function") ack(name);
  });
});

function readJson(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString() || "{}"));
      } catch (err) {
        reject(err);
      }
    });
    req.on("error", reject);
  });
}

function reply(res, status, body) {
  res.writeHead(status, { "Content-Type": "application/json" });
  res.end(JSON.stringify(body));
}

const control = http.createServer(async (req, res) => {
  try {
    if (req.method === "POST" && req.url === "/emit") {
      const body = await readJson(req);
      const count = Number(body.count);
      const pad = "x".repeat(Number(body.size ?? 100));
      const t0 = performance.now();
      for (let i = 0; i < count; i++) {
        const target = body.room ? io.to(body.room) : io;
        target.emit("ev", { i, pad });
      }
      reply(res, 200, { elapsed: (performance.now() - t0) / 1000 });
    } else if (req.method === "GET" && req.url === "/cpu") {
      const usage = process.cpuUsage();
      reply(res, 200, { cpu: (usage.user + usage.system) / 1e6 });
    } else {
      reply(res, 404, { error: "not found" });
    }
  } catch (err) {
    reply(res, 400, { error: String(err) });
  }
});

httpServer.listen(0, "127.0.0.1", () => {
  control.listen(0, "127.0.0.1", () => {
    process.stdout.write(JSON.stringify({
      port: httpServer.address().port, control: control.address().port, name,
    }) + "\n");
  });
});

function stop() {
  io.close();
  control.close();
  setTimeout(() => process.exit(0), 200).unref();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
