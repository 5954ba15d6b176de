// A stock socket.io-client that lives through a gateway drain: driven by tests/failover.rs.
// Prints one JSON line per step on stdout; exits 0 when it reconnected and received an event
// published afterwards, 1 otherwise. Bounded: gives up after DEADLINE_MS.
import { io } from "socket.io-client";

const url = process.env.GATEWAY_URL;
const token = process.env.TOKEN;
const transports = (process.env.TRANSPORTS || "websocket").split(",");
const DEADLINE_MS = 20000;
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");

const socket = io(url, {
  auth: { token },
  transports,
  upgrade: false,
  reconnectionDelay: 100,
  reconnectionDelayMax: 500,
  randomizationFactor: 0,
});
let connects = 0;
socket.on("connect", () => {
  connects += 1;
  say({ step: "connect", n: connects });
});
socket.on("disconnect", (reason) => say({ step: "disconnect", reason }));
socket.on("connect_error", (err) => say({ step: "connect_error", message: err.message }));
socket.on("incident", (e) => {
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
