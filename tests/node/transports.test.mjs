// The stock client's transports: its default options (polling, then the upgrade to WebSocket)
// receive a stream of events that runs through the upgrade, each once and in order; and every
// client configuration gets the same answers (an unknown event with an ack included).

import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { io, NodeWebSocket, NodeXHR } from "socket.io-client";
import {
  TRANSPORTS,
  URL,
  WAIT_MS,
  closeAll,
  connectAs,
  consumeAll,
  engineTransport,
  expectNothing,
  joinOk,
  publishOk,
  request,
  sample,
  token,
  track,
  waitFor,
  waitUntil,
} from "./lib.mjs";

afterEach(closeAll);

/** Events the stream keeps publishing once the client has upgraded (and past its join). */
const AFTER_UPGRADE = 20;
/** Events the held-back upgrade waits for over polling before it may start. */
const BEFORE_UPGRADE = 10;
/** Most events the stream publishes before giving up on the upgrade. */
const MAX_STREAM = 2000;

/**
 * The stock client's WebSocket transport, whose opening (the upgrade's probe) waits for
 * `probeGate`: everything else is the client's own upgrade.
 */
let probeGate = Promise.resolve();
class HeldWebSocket extends NodeWebSocket {
  doOpen() {
    probeGate.then(() => {
      if (this.readyState === "opening") super.doOpen();
    });
  }
}

/**
 * Runs a stream of events to `user:<sub>` and `batch:<sub>` from before `socket` connects until
 * it has upgraded, joined, and received AFTER_UPGRADE more; checks that every event past the
 * positions the client was given arrives once, in offset order. `beforeProbe` runs once the
 * client is connected and joined (under default options the upgrade may be done by then).
 * Returns how many events each transport carried.
 */
async function streamThroughUpgrade(socket, sub, beforeProbe = async () => {}) {
  const rooms = [`user:${sub}`, `batch:${sub}`];
  const offsetIn = (result, room) => result.rooms.find((x) => x.room === room).offset;
  const phases = [];
  const published = [];
  // Index in `published` of the first event published after the upgrade; the position the
  // join of the batch room answered.
  let upgradedAt = null;
  let joinedAt = null;
  const pastJoin = () => (joinedAt === null ? 0 : published.filter((r) => offsetIn(r, rooms[1]) > joinedAt).length);

  let running;
  const started = new Promise((resolve) => {
    running = resolve;
  });
  const stream = (async () => {
    while (published.length < MAX_STREAM && !socket.stopStream) {
      const upgradeDone = upgradedAt !== null && published.length >= upgradedAt + AFTER_UPGRADE;
      if (upgradeDone && pastJoin() >= AFTER_UPGRADE) return;
      const req = { ...sample("batch_created", 1, { batchId: published.length }), rooms };
      published.push(await publishOk(req));
      running();
    }
    throw new Error(`the stream ended without an upgrade (${phases.join(", ")})`);
  })();
  // The stream is under way before the client connects (a failure surfaces here).
  await Promise.race([started, stream]);

  socket.connect();
  const engine = socket.io.engine;
  assert.equal(engine.transport.name, "polling", "the session starts on polling");
  // Which transport carried each event.
  const via = { polling: 0, websocket: 0 };
  socket.onAny((event) => {
    if (event === "batch_update") via[engine.transport.name] += 1;
  });
  engine.on("upgrading", () => phases.push(`probed after ${published.length} events`));
  engine.on("upgrade", () => {
    phases.push(`upgraded after ${published.length} events`);
    upgradedAt = published.length;
  });
  try {
    await waitFor(socket, "connect");
    const auth = await waitFor(socket, "authenticated");
    const from = { [rooms[0]]: auth.rooms.find((r) => r.room === rooms[0]).offset };
    from[rooms[1]] = (await joinOk(socket, rooms[1])).offset;
    joinedAt = from[rooms[1]];
    await beforeProbe(via);
    await stream;
    assert.equal(engine.transport.name, "websocket", `upgraded (${phases.join(", ")})`);

    // Each room: every event past the position the client was given, once, in offset order.
    const want = Object.fromEntries(
      rooms.map((room) => [
        room,
        published.map((r) => ({ id: r.id, offset: offsetIn(r, room) })).filter((e) => e.offset > from[room]),
      ]),
    );
    const got = (room) =>
      socket.inbox
        .filter((e) => e.event === "batch_update" && e.args[0].room === room)
        .map((e) => ({ id: e.args[0].id, offset: e.args[0].offset }));
    const total = rooms.reduce((n, room) => n + want[room].length, 0);
    await waitUntil(socket, () => rooms.every((room) => got(room).length >= want[room].length), WAIT_MS, `${total} events`);
    for (const room of rooms) {
      assert.ok(want[room].length >= AFTER_UPGRADE, `${room}: ${want[room].length} events to receive`);
      assert.deepEqual(got(room), want[room], `${room} (${phases.join(", ")}; by transport ${JSON.stringify(via)})`);
    }
    consumeAll(socket);
    await expectNothing(socket);
    assert.equal(engine.transport.name, "websocket");
    console.log(`${phases.join(", ")}; events by transport: ${JSON.stringify(via)}`);
    return via;
  } finally {
    socket.stopStream = true;
    await stream.catch(() => {});
  }
}

test("the stock client with default options: a stream published through its upgrade arrives once each, in order", async () => {
  // Default options: no `transports`, `upgrade: true`.
  const socket = io(URL, {
    auth: { token: token(70, 1) },
    forceNew: true,
    reconnection: false,
    autoConnect: false,
    timeout: WAIT_MS,
  });
  track(socket);
  await streamThroughUpgrade(socket, 70);
});

test("the stock client's upgrade started while events flow over polling: each once, in order, on both transports", async () => {
  // The default transports, with the probe held until events have arrived over polling.
  let release;
  probeGate = new Promise((resolve) => {
    release = resolve;
  });
  const socket = io(URL, {
    auth: { token: token(71, 1) },
    transports: [NodeXHR, HeldWebSocket],
    forceNew: true,
    reconnection: false,
    autoConnect: false,
    timeout: WAIT_MS,
  });
  track(socket);
  try {
    const via = await streamThroughUpgrade(socket, 71, async (via) => {
      await waitUntil(socket, () => via.polling >= BEFORE_UPGRADE, WAIT_MS, `${BEFORE_UPGRADE} events over polling`);
      release();
    });
    assert.ok(via.websocket >= AFTER_UPGRADE, JSON.stringify(via));
  } finally {
    release();
  }
});

for (const transport of TRANSPORTS) {
  test(`an unknown event with an ack is answered unknown_event, as over the gateway's WebSocket (${transport})`, async () => {
    const { socket: reference } = await connectAs(80, 1, "STAFF", { transport: "websocket" });
    const want = await request(reference, "no_such_event", {});
    assert.equal(want.ok, false, JSON.stringify(want));
    assert.equal(want.error?.code, "unknown_event", JSON.stringify(want));
    assert.equal(typeof want.error.message, "string");

    const { socket } = await connectAs(81, 1, "STAFF", { transport });
    assert.equal(socket.io.engine.transport.name, engineTransport(transport));
    let got;
    try {
      got = await request(socket, "no_such_event", {});
    } catch (err) {
      assert.fail(`no ack over ${transport}: ${err.message}`);
    }
    assert.deepEqual(got, want);
  });
}
