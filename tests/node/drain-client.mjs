// A stock socket.io-client that lives through a gateway drain: driven by tests/failover.rs.
// It recovers the way the README tells applications to: it remembers its position in every
// room (from `authenticated` and from each event) and passes them as `since` on every
// (re)connect, so an event published while it was between two connections still reaches it.
// TRANSPORTS is "websocket" or "polling" (that transport only, never upgrading) or "default"
// (the client's default options: polling, then the upgrade to WebSocket; each `connect` step is
// reported once the session has upgraded).
// Prints one JSON line per step on stdout; exits 0 when it reconnected and received an event
// published afterwards, 1 otherwise. Bounded: gives up after DEADLINE_MS.
import { io } from "socket.io-client";

const url = process.env.GATEWAY_URL;
const token = process.env.TOKEN;
const config = process.env.TRANSPORTS || "websocket";
const DEADLINE_MS = 20000;
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");

const positions = {}; // room -> { epoch, offset }
const socket = io(url, {
  auth: (cb) => cb({ token, since: positions }),
  ...(config === "default" ? { upgrade: true } : { transports: config.split(","), upgrade: false }),
  reconnectionDelay: 100,
  reconnectionDelayMax: 500,
  randomizationFactor: 0,
});
let connects = 0;
socket.on("authenticated", (me) => {
  for (const { room, epoch, offset } of me.rooms) positions[room] = { epoch, offset };
  say({ step: "authenticated", rooms: me.rooms });
});
socket.on("connect", () => {
  connects += 1;
  const n = connects;
  const engine = socket.io.engine;
  const report = () => say({ step: "connect", n, transport: engine.transport.name });
  if (config !== "default" || engine.transport.name === "websocket") return report();
  engine.once("upgrade", report);
});
// Watched from the engine's open on, so an upgrade that fails before `connect` is seen too.
socket.io.on("open", () => {
  socket.io.engine.once("upgradeError", (err) => {
    say({ step: "failed", why: `connect ${connects + 1}: the upgrade to websocket failed: ${err?.message ?? err}` });
    process.exit(1);
  });
});
socket.on("disconnect", (reason) => say({ step: "disconnect", reason }));
socket.on("connect_error", (err) => say({ step: "connect_error", message: err.message }));
socket.on("incident", (e) => {
  if (positions[e.room]) positions[e.room].offset = e.offset;
  if (connects >= 2) {
    say({ step: "event", offset: e.offset, id: e.id });
    socket.close();
    process.exit(0);
  }
});
setTimeout(() => {
  say({ step: "gave_up" });
  process.exit(1);
}, DEADLINE_MS);
