// The official socket.io-client, driven line by line by tests/interop/jsclient.py.
//
// Configuration: one JSON argument (or env INTEROP_CONFIG), e.g.
//   {"url": "http://127.0.0.1:1234", "namespaces": ["/", "/chat"],
//    "transports": ["websocket"], "auth": {"token": "t"}, "ackReply": "ok"}
// `auth` may also be {"/chat": {...}} keyed by namespace when `authPerNamespace` is true.
//
// `reconnection` (default true) is the Manager's: false means nothing reconnects until a
// `connect` command.
//
// Output: one JSON object per line on stdout, per happening:
//   {"ev":"ready","reconnection":false}                (the Manager's effective setting)
//   {"ev":"connect","ns":"/","id":"...","recovered":true}
//   {"ev":"event","ns":"/","name":"tick","args":[1,"<offset>"],"ack":false}
//   {"ev":"disconnect","ns":"/","reason":"transport close"}
//   {"ev":"connect_error","ns":"/","message":"..."}
//   {"ev":"ack","ns":"/","ref":"<ref>","args":[...]}     (reply to an emit_ack)
//   {"ev":"done","ref":"<ref>"}                        (a command that has no other output)
//   {"ev":"error","message":"..."}                     (a bad command)
// Events the server sends with an ack id have `"ack": true` and are acknowledged with
// [config.ackReply ?? "ack", ...args].
//
// Commands: one JSON object per line on stdin:
//   {"cmd":"close_engine"}                       socket.io.engine.close(): abrupt close
//   {"cmd":"emit","ns":"/","event":"x","args":[...]}
//   {"cmd":"emit_ack","ns":"/","event":"x","args":[...],"ref":"r1"}
//   {"cmd":"disconnect","ns":"/"}                socket.disconnect(): a deliberate leave
//   {"cmd":"connect","ns":"/"}                   socket.connect() again (same Socket object)
//      After close_engine the Sockets stay active: the first `connect` reopens the Manager
//      and every active Socket sends its CONNECT when it opens. A `connect` for another
//      namespace while that CONNECT is pending sends a second one on the same connection,
//      which python-socketio refuses (CONNECT_ERROR): connect one namespace only.
//   {"cmd":"exit"}
// End of stdin also exits, so the process never outlives the test.

import { createInterface } from "node:readline";
import { Manager } from "socket.io-client";

const config = JSON.parse(process.argv[2] ?? process.env.INTEROP_CONFIG ?? "{}");
if (!config.url) {
  process.stderr.write("client.mjs: config.url is required\n");
  process.exit(2);
}

function encode(value) {
  if (value instanceof ArrayBuffer) return { $binary: Buffer.from(value).toString("base64") };
  if (ArrayBuffer.isView(value)) {
    const bytes = Buffer.from(value.buffer, value.byteOffset, value.byteLength);
    return { $binary: bytes.toString("base64") };
  }
  if (Array.isArray(value)) return value.map(encode);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, encode(v)]));
  }
  return value;
}

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

const manager = new Manager(config.url, {
  transports: config.transports ?? ["websocket"],
  reconnection: config.reconnection ?? true,
  reconnectionDelay: config.reconnectionDelay ?? 100,
  reconnectionDelayMax: config.reconnectionDelayMax ?? 200,
  randomizationFactor: 0,
  timeout: config.timeout ?? 5000,
  perMessageDeflate: false,
});

const sockets = new Map();
for (const ns of config.namespaces ?? ["/"]) {
  const auth = config.authPerNamespace ? config.auth?.[ns] : config.auth;
  const socket = manager.socket(ns, auth === undefined ? {} : { auth });
  socket.on("connect", () => {
    out({ ev: "connect", ns, id: socket.id, recovered: Boolean(socket.recovered) });
  });
  socket.on("disconnect", (reason) => out({ ev: "disconnect", ns, reason }));
  socket.on("connect_error", (err) => out({ ev: "connect_error", ns, message: err.message }));
  socket.onAny((name, ...args) => {
    const last = args[args.length - 1];
    const ack = typeof last === "function" ? args.pop() : null;
    out({ ev: "event", ns, name, args: encode(args), ack: ack !== null });
    if (ack) ack(config.ackReply ?? "ack", ...args);
  });
  sockets.set(ns, socket);
}

function socketFor(cmd) {
  const socket = sockets.get(cmd.ns ?? "/");
  if (!socket) throw new Error(`no socket for namespace ${cmd.ns}`);
  return socket;
}

function handle(cmd) {
  switch (cmd.cmd) {
    case "close_engine":
      manager.engine.close();
      break;
    case "emit":
      socketFor(cmd).emit(cmd.event, ...(cmd.args ?? []));
      break;
    case "emit_ack":
      socketFor(cmd).emit(cmd.event, ...(cmd.args ?? []), (...reply) => {
        out({ ev: "ack", ns: cmd.ns ?? "/", ref: cmd.ref ?? null, args: encode(reply) });
      });
      return; // its output is the ack
    case "disconnect":
      socketFor(cmd).disconnect();
      break;
    case "connect":
      socketFor(cmd).connect();
      break;
    case "exit":
      shutdown(0);
      return;
    default:
      throw new Error(`unknown command ${JSON.stringify(cmd)}`);
  }
  if (cmd.ref !== undefined) out({ ev: "done", ref: cmd.ref });
}

let exiting = false;
function shutdown(code) {
  if (exiting) return;
  exiting = true;
  for (const socket of sockets.values()) socket.disconnect();
  manager.engine?.close();
  // let stdout drain before leaving
  process.stdout.write("", () => process.exit(code));
}

const input = createInterface({ input: process.stdin });
input.on("line", (line) => {
  if (!line.trim()) return;
  try {
    handle(JSON.parse(line));
  } catch (err) {
    out({ ev: "error", message: String(err?.message ?? err) });
  }
});
input.on("close", () => shutdown(0));
process.on("SIGTERM", () => shutdown(0));
process.on("SIGINT", () => shutdown(0));

out({ ev: "ready", reconnection: manager.reconnection() });
