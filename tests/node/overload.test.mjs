// A slow consumer with the official client: a client that stops reading while big events keep
// coming is cut at the TCP level once GATEWAY_SOCKET_BUFFER (SOCKET_BUFFER) events are queued
// for it; that is counted; the client sees a lost transport, reconnects by itself with the
// positions it holds, and gets every event it missed from history: every offset once, in order.
// A client that keeps reading gets everything live, untouched.
//
// Runs against a gateway with GATEWAY_SOCKET_BUFFER = SOCKET_BUFFER and a GATEWAY_MAX_REPLAY
// large enough for what a cut client can miss.

import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { io } from "socket.io-client";
import { WAIT_MS, closeAll, connectAs, envInt, metric, publishAllOk, sample, token, track, URL } from "./lib.mjs";

const SOCKET_BUFFER = envInt("SOCKET_BUFFER");
/**
 * Events published; each carries about 20 KB so the socket buffers fill quickly. The filler is
 * random, so permessage-deflate (which the stock client negotiates) cannot shrink it much.
 */
const EVENTS = 800;
const BIG = randomBytes(15_000).toString("base64");

afterEach(closeAll);

const waitUntil = async (cond, what, ms = 20_000) => {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

test("a stalled client is cut, counted, reconnects by itself and recovers every event", async () => {
  const room = "institution:1";
  // The way the README tells applications to hold a position and send it on every reconnect.
  const position = {};
  const seen = [];
  let authentications = [];
  const slow = io(URL, {
    transports: ["websocket"],
    forceNew: true,
    reconnectionDelay: 100,
    reconnectionDelayMax: 300,
    randomizationFactor: 0,
    auth: (cb) => cb({ token: token(20, 1, "ADMIN"), since: position.epoch ? { [room]: { ...position } } : undefined }),
  });
  track(slow);
  slow.on("authenticated", (me) => {
    authentications.push(me.rooms.find((r) => r.room === room));
    const entry = authentications.at(-1);
    position.epoch = entry.epoch;
    position.offset = entry.offset;
  });
  slow.on("script_submission", (e) => {
    seen.push(e.offset);
    position.offset = e.offset;
  });
  await waitUntil(() => authentications.length === 1, "the first authenticated");
  const { socket: fast } = await connectAs(21, 1, "ADMIN");
  const fastSeen = [];
  fast.on("script_submission", (e) => fastSeen.push(e.offset));
  const start = position.offset;

  // Stop reading: the kernel buffers fill, then the gateway's queue for this socket.
  const tcp = slow.io.engine.transport.ws._socket;
  tcp.pause();
  const cutBefore = await metric("gateway_slow_consumer_disconnects_total");
  const reqs = Array.from({ length: EVENTS }, (_, i) => ({
    ...sample("script_submitted", 1, { scriptId: i, notes: BIG }),
    rooms: [room],
  }));
  const results = await publishAllOk(reqs);
  const last = results.at(-1).rooms[0].offset;
  assert.equal(last, start + EVENTS);
  await waitUntil(
    async () => (await metric("gateway_slow_consumer_disconnects_total")) > cutBefore,
    `the stalled client to be cut (queue of ${SOCKET_BUFFER} events)`,
  );
  assert.ok((await metric("gateway_delivery_failures_total")) >= 1, "the refused delivery is counted");

  // Reading again, it finds its connection closed, reconnects and recovers from its position.
  tcp.resume();
  // The replay comes before the `authenticated` of the new connection: wait for both.
  await waitUntil(
    () => seen.at(-1) === last && authentications.length >= 2,
    `offset ${last} and a second authenticated on the reconnected client`,
  );
  const again = authentications.at(-1);
  assert.equal(again.recovered, true, JSON.stringify(again));
  const want = Array.from({ length: EVENTS }, (_, i) => start + 1 + i);
  assert.deepEqual(seen, want, "every offset once, in order, across the cut");

  await waitUntil(() => fastSeen.length === EVENTS, "every event on the reading client", WAIT_MS * 4);
  assert.deepEqual(fastSeen, want, "the reading client was not disturbed");
});
