// Stock socket.io-client sockets spread over several gateways and a load balancer, both
// transports, driven by tests/redis_bus.rs. Prints {"step":"ready"} once every socket has joined
// its room, then expects EXPECT events on every member socket and none on the outsider.
// Exits 0 when all arrived (prints {"step":"done"}), 1 on a deadline or an unexpected event.
import { io } from "socket.io-client";

const targets = process.env.TARGETS.split(","); // base URLs: each gateway and the balancer
const token = process.env.TOKEN;
const outsiderToken = process.env.OUTSIDER_TOKEN;
const expect = Number(process.env.EXPECT);
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const fail = (why) => {
  say({ step: "failed", why });
  process.exit(1);
};
setTimeout(() => fail("deadline"), 30000);

const connect = (url, transports, tok) =>
  new Promise((resolve, reject) => {
    const s = io(url, { auth: { token: tok }, transports, upgrade: false, reconnection: false, forceNew: true });
    s.on("connect_error", (e) => reject(new Error(`${url} ${transports}: ${e.message}`)));
    s.on("authenticated", () => resolve(s));
  });
const join = (s, room) =>
  new Promise((resolve, reject) =>
    s.timeout(5000).emit("join", room, (err, ack) => (err || !ack.ok ? reject(err ?? new Error(JSON.stringify(ack))) : resolve())),
  );

const members = [];
for (const url of targets) {
  for (const transports of [["websocket"], ["polling"]]) {
    const s = await connect(url, transports, token).catch((e) => fail(e.message));
    await join(s, "batch:456").catch((e) => fail(e.message));
    members.push({ s, name: `${url} ${transports}`, got: [] });
  }
}
const outsider = await connect(targets[0], ["websocket"], outsiderToken).catch((e) => fail(e.message));
await join(outsider, "batch:999").catch((e) => fail(e.message));
outsider.onAny((event) => fail(`outsider received ${event}`));

for (const m of members) {
  m.s.on("batch_update", (e) => {
    if (e.room !== "batch:456") fail(`${m.name}: event for ${e.room}`);
    m.got.push(e.offset);
    if (members.every((x) => x.got.length >= expect)) {
      for (const x of members) {
        const want = Array.from({ length: expect }, (_, i) => i + 1);
        if (JSON.stringify(x.got) !== JSON.stringify(want)) fail(`${x.name}: offsets ${x.got}`);
      }
      say({ step: "done", sockets: members.length });
      process.exit(0);
    }
  });
}
say({ step: "ready", sockets: members.length });
