// Stock socket.io-client sockets written the way the README tells applications to: they track
// their position in every room, send it on every reconnect (auth.since for the automatic rooms,
// join { room, since } for the others) and reconnect by themselves. Driven by tests/failover.rs.
//
// TRANSPORTS is "websocket" or "polling" (that transport only, never upgrading) or "default"
// (the client's default options: polling, then the upgrade to WebSocket; "ready" waits until
// every session has upgraded, and each reconnect goes through polling and the upgrade again).
//
// Each client connects through the load balancer from its own loopback address (an http.Agent
// with localAddress), so the balancer's address hash spreads them over the gateways. Prints
// {"step":"ready"} when all are in their rooms; then reads one line on stdin, the last offset
// of every room ({"exam:1": N, ...}); waits until every client has every event up to it; checks
// each room's offsets are exactly 1..N, once each, in order; prints {"step":"done", ...}.
import http from "node:http";
import readline from "node:readline";
import { io } from "socket.io-client";

const url = process.env.LB_URL;
const tokens = JSON.parse(process.env.TOKENS); // [{ token, sub }]
const config = process.env.TRANSPORTS || "websocket";
const ROOMS = ["exam:1"];
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const fail = (why) => {
  say({ step: "failed", why });
  process.exit(1);
};
setTimeout(() => fail("deadline"), 60000);

const clients = tokens.map(({ token, sub }, i) => {
  const positions = {}; // room -> { epoch, offset }
  const start = {}; // room -> the offset it stood at when the client first entered it
  const seen = {}; // room -> offsets in arrival order
  const agent = new http.Agent({ keepAlive: true, localAddress: `127.0.0.${10 + i}` });
  const remember = (entries) => {
    for (const { room, epoch, offset, recovered, reason } of entries) {
      if (recovered === false) fail(`client ${sub}: ${room} not recovered (${reason})`);
      if (!positions[room]) {
        positions[room] = { epoch, offset };
        start[room] = offset;
      }
      else positions[room].epoch = epoch;
    }
  };
  const auto = () =>
    Object.fromEntries(Object.entries(positions).filter(([room]) => room.startsWith("institution:") || room.startsWith("user:")));
  const socket = io(url, {
    ...(config === "default" ? { upgrade: true } : { transports: config.split(","), upgrade: false }),
    agent,
    forceNew: true,
    reconnectionDelay: 100,
    reconnectionDelayMax: 300,
    randomizationFactor: 0,
    auth: (cb) => cb({ token, since: auto() }),
  });
  const c = { sub, socket, seen, start, positions, joined: 0, reconnects: -1 };
  socket.on("authenticated", (me) => remember(me.rooms));
  socket.on("connect", () => {
    c.reconnects += 1;
    for (const room of ROOMS) {
      socket.timeout(10000).emit("join", { room, since: positions[room] }, (err, ack) => {
        if (err || !ack.ok) return; // the connection dropped meanwhile: the next connect retries
        remember([ack]);
        c.joined += 1;
      });
    }
  });
  socket.on("incident", (e) => {
    (seen[e.room] ??= []).push(e.offset);
    if (positions[e.room]) positions[e.room].offset = e.offset;
  });
  socket.on("resync", (r) => fail(`client ${sub}: resync ${JSON.stringify(r)}`));
  return c;
});

const waitUntil = async (cond) => {
  while (!cond()) await new Promise((r) => setTimeout(r, 20));
};
const upgraded = (c) => config !== "default" || c.socket.io.engine?.transport?.name === "websocket";
await waitUntil(() => clients.every((c) => c.joined >= ROOMS.length && c.positions["institution:1"] && upgraded(c)));
say({ step: "ready", clients: clients.length });

const rl = readline.createInterface({ input: process.stdin });
const line = await new Promise((resolve) => rl.once("line", resolve));
const last = JSON.parse(line);
await waitUntil(() =>
  clients.every((c) => Object.entries(last).every(([room, n]) => (c.seen[room]?.at(-1) ?? 0) >= n)),
);
for (const c of clients) {
  for (const [room, n] of Object.entries(last)) {
    const got = c.seen[room] ?? [];
    // Every event after the client's first position in the room, none skipped at the start.
    const first = (c.start[room] ?? 0) + 1;
    const want = Array.from({ length: n - first + 1 }, (_, i) => first + i);
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      const dup = got.length - new Set(got).size;
      fail(
        `client ${c.sub} ${room}: ${got.length} of ${want.length} received (offsets ${first}..${n}), ` +
          `${dup} duplicated, first received ${got[0]}`,
      );
    }
  }
}
say({ step: "done", reconnects: clients.reduce((a, c) => a + c.reconnects, 0) });
for (const c of clients) c.socket.close();
process.exit(0);
