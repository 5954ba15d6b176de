"use strict";
// Benchmark baseline: a stock Socket.IO 4 server doing what realtime-gateway does for the
// benchmark's clients, and nothing more:
//   - verify the handshake's HS256 token (node's crypto HMAC-SHA256), refuse a bad one;
//   - put the socket in `institution:<tenant>` and `user:<sub>`, then emit `authenticated`;
//   - `join` a room of an allowed kind, with an ack `{ ok: true, room }`.
// Rooms are keyed by tenant (`<tenant>/<room>`), like the gateway's. Servers share Redis through
// @socket.io/redis-adapter; events come from @socket.io/redis-emitter (publish.js).
// One process per core: start it once per core with its own --port.
//
//   JWT_SECRET=... node server.js --port 4000 --redis redis://127.0.0.1:6379

const http = require("node:http");
const crypto = require("node:crypto");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const port = Number(arg("port", "4000"));
const host = arg("host", "127.0.0.1");
const redisUrl = arg("redis", process.env.REDIS_URL || "redis://127.0.0.1:6379");
const secret = Buffer.from(process.env.JWT_SECRET || "", "utf8");
if (secret.length < 32) {
  console.error("JWT_SECRET must be at least 32 bytes");
  process.exit(2);
}
const ROOM_KINDS = new Set(["batch", "exam", "course", "timetable", "incident"]);
const MAX_ROOMS = 50;

function fail(code) {
  const err = new Error(code);
  err.data = { code };
  return err;
}

function decode(part) {
  try {
    return JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
  } catch {
    throw fail("token_malformed");
  }
}

// HS256 only; sub, institutionId and role required; exp in the future.
function verify(token) {
  if (typeof token !== "string" || token === "") throw fail("token_missing");
  const parts = token.split(".");
  if (parts.length !== 3) throw fail("token_malformed");
  const header = decode(parts[0]);
  if (header.alg !== "HS256") throw fail("token_algorithm_not_allowed");
  const mac = crypto.createHmac("sha256", secret).update(`${parts[0]}.${parts[1]}`).digest();
  const sig = Buffer.from(parts[2], "base64url");
  if (sig.length !== mac.length || !crypto.timingSafeEqual(sig, mac)) {
    throw fail("token_invalid_signature");
  }
  const claims = decode(parts[1]);
  if (typeof claims.exp !== "number") throw fail("token_claim_missing");
  if (claims.exp * 1000 <= Date.now()) throw fail("token_expired");
  for (const name of ["sub", "institutionId", "role"]) {
    const v = claims[name];
    if (v === undefined || v === null || v === "") throw fail("token_claim_missing");
    if (typeof v !== "string" && typeof v !== "number") throw fail("token_claim_invalid");
  }
  return {
    userId: String(claims.sub),
    tenant: String(claims.institutionId),
    role: String(claims.role),
    exp: claims.exp,
  };
}

let ready = false;
const httpServer = http.createServer((req, res) => {
  const status = req.url === "/healthz" ? 200 : req.url === "/readyz" ? (ready ? 200 : 503) : 404;
  res.writeHead(status).end();
});

// The gateway's defaults: both transports, 25 s / 20 s heartbeat, 16 KiB client packets.
const io = new Server(httpServer, {
  serveClient: false,
  pingInterval: 25000,
  pingTimeout: 20000,
  maxHttpBufferSize: 16384,
});

io.use((socket, next) => {
  try {
    socket.data.identity = verify(socket.handshake.auth && socket.handshake.auth.token);
    next();
  } catch (e) {
    next(e.data ? e : fail("token_malformed"));
  }
});

io.on("connection", (socket) => {
  const id = socket.data.identity;
  const auto = [`institution:${id.tenant}`, `user:${id.userId}`];
  socket.join(auto.map((r) => `${id.tenant}/${r}`));
  let joined = 0;
  socket.on("join", (data, ack) => {
    const reply = typeof ack === "function" ? ack : () => {};
    const room = typeof data === "string" ? data : data && data.room;
    if (typeof room !== "string" || room.length > 128) {
      return reply({ ok: false, error: { code: "invalid_room" } });
    }
    const colon = room.indexOf(":");
    if (colon < 1 || colon === room.length - 1) {
      return reply({ ok: false, error: { code: "invalid_room" } });
    }
    if (!ROOM_KINDS.has(room.slice(0, colon))) {
      return reply({ ok: false, error: { code: "room_kind_not_allowed" } });
    }
    const key = `${id.tenant}/${room}`;
    if (!socket.rooms.has(key)) {
      if (joined >= MAX_ROOMS) return reply({ ok: false, error: { code: "too_many_rooms" } });
      joined += 1;
      socket.join(key);
    }
    reply({ ok: true, room });
  });
  socket.emit("authenticated", {
    userId: id.userId,
    institutionId: id.tenant,
    role: id.role,
    rooms: auto,
    exp: id.exp,
  });
});

async function main() {
  const pubClient = createClient({ url: redisUrl });
  const subClient = pubClient.duplicate();
  for (const c of [pubClient, subClient]) c.on("error", (e) => console.error("redis:", e.message));
  await Promise.all([pubClient.connect(), subClient.connect()]);
  io.adapter(createAdapter(pubClient, subClient));
  httpServer.listen(port, host, () => {
    ready = true;
    console.error(`listening ${host}:${port}`);
  });
}

for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
main().catch((e) => {
  console.error(e);
  process.exit(1);
});
