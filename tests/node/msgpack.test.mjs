// The MessagePack parser: a stock client with socket.io-msgpack-parser and `parser=msgpack` in
// its handshake query, beside a JSON client in the same rooms, over each transport (the
// gateway's WebSocket transport; long-polling on socketioxide). Both get the same events in the
// same order with the same offsets, live and replayed after a reconnect with recovery; the
// msgpack client's requests (join, leave, refresh, ping, acks) work; large integers decode to
// the same numbers JSON.parse gives.

import { describe, test, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  TRANSPORTS,
  transportIndex,
  URL,
  WAIT_MS,
  close,
  closeAll,
  connectAs,
  joinOk,
  publish,
  publishOk,
  request,
  sample,
  token,
  waitFor,
  waitUntil,
} from "./lib.mjs";

afterEach(closeAll);

const EVENTS = ["script_submitted", "batch_created", "timetable_published", "incident_reported", "new_notification"];
const CHANNELS = ["script_submission", "batch_update", "exam_timetable", "incident", "notification"];

/** The channel events a socket received so far, in order: `[channel, envelope]`. */
const received = (socket) =>
  socket.inbox.filter((e) => CHANNELS.includes(e.event)).map((e) => [e.event, e.args[0]]);

/** Waits (with a deadline) until `socket` has received `n` channel events; returns them. */
async function receivedN(socket, n) {
  await waitUntil(socket, () => received(socket).length >= n, WAIT_MS, `${n} channel events`);
  return received(socket);
}

for (const transport of TRANSPORTS) {
  const as = (parser, opts = {}) => connectAs(10, 1, "STAFF", { transport, parser, ...opts });
  const room = `batch:${31_001 + transportIndex(transport)}`;

  describe(`msgpack beside JSON over ${transport}`, () => {
    test("same events, same order, same offsets; requests and acks work", async () => {
      const { socket: json } = await as("json");
      const { socket: mp, auth } = await as("msgpack");
      // Socket.IO packets really are MessagePack (binary) for one and JSON text for the other.
      const binary = (s) => s.raw.filter((d) => typeof d !== "string").length;
      assert.ok(binary(mp) >= 2, `msgpack client got ${binary(mp)} binary packets`);
      assert.equal(binary(json), 0);
      assert.equal(auth.role, "STAFF");

      for (const s of [json, mp]) await joinOk(s, room);
      const published = [];
      for (const event of EVENTS) published.push(await publishOk(sample(event, 1)));
      for (let i = 0; i < 3; i++) {
        published.push(await publishOk({ ...sample("batch_created", 1, { batchId: i }), rooms: [room] }));
      }
      // Integers past 2^53, past 2^64 and a fraction, as published in JSON text.
      const graded = {
        channel: "script_submission",
        event: "script_graded",
        institutionId: 1,
        payload: {
          scriptId: 1, batchId: 2, studentId: "MAT/2022/0417", courseCode: "MTH 301", gradedBy: 61,
          gradedByName: "Dr. Musa", score: 3, maxScore: 0.1, grade: "B", comment: null,
          gradedAt: "2026-03-14T09:26:53Z", institutionId: 1,
        },
      };
      const big = JSON.stringify(graded)
        .replace('"scriptId":1', '"scriptId":9007199254740993')
        .replace('"batchId":2', '"batchId":-9007199254740993')
        .replace('"score":3', '"score":18446744073709551615');
      const bigRes = await publish(big);
      assert.equal(bigRes.status, 200, JSON.stringify(bigRes.body));

      const want = published.length + 1;
      const [a, b] = [await receivedN(json, want), await receivedN(mp, want)];
      assert.deepEqual(b, a, "the msgpack client got what the JSON client got");
      assert.deepEqual(
        a.map(([, env]) => [env.room, env.offset]),
        [...published, bigRes.body].map((r) => [r.rooms[0].room, r.rooms[0].offset]),
      );
      const bigEnv = a.at(-1)[1];
      assert.equal(bigEnv.payload.scriptId, JSON.parse("9007199254740993"));
      assert.equal(bigEnv.payload.batchId, JSON.parse("-9007199254740993"));
      assert.equal(b.at(-1)[1].payload.score, JSON.parse("18446744073709551615"));
      assert.equal(b.at(-1)[1].payload.maxScore, 0.1);

      // Requests of the msgpack client, answered in kind.
      const pong = await request(mp, "ping");
      assert.ok(Number.isInteger(pong.timestamp), JSON.stringify(pong));
      assert.ok(Number.isInteger((await waitFor(mp, "pong")).timestamp));
      const refreshed = await request(mp, "refresh", { token: token(10, 1, "STAFF", { ttl: 7200 }) });
      assert.equal(refreshed.ok, true, JSON.stringify(refreshed));
      assert.ok(refreshed.exp > Date.now() / 1000 + 3600);
      const refused = await request(mp, "join", { room: "nope" });
      assert.equal(refused.ok, false);
      assert.equal(typeof refused.error.code, "string");
      assert.deepEqual(await request(mp, "leave", room), { ok: true, room });
      const after = await publishOk({ ...sample("batch_created", 1), rooms: [room] });
      const last = await publishOk({ ...sample("batch_created", 1), rooms: ["institution:1"] });
      const [a2, b2] = [await receivedN(json, want + 2), await receivedN(mp, want + 1)];
      assert.deepEqual(a2.slice(-2).map(([, e]) => e.offset), [after.rooms[0].offset, last.rooms[0].offset]);
      assert.deepEqual(b2.at(-1), a2.at(-1));
      assert.equal(b2.length, want + 1, "after leaving, only the institution event");
    });

    test("same replay after a reconnect with recovery", async () => {
      const first = [await as("json"), await as("msgpack")];
      const since = first[0].auth.rooms.reduce((m, r) => ({ ...m, [r.room]: { epoch: r.epoch, offset: r.offset } }), {});
      assert.deepEqual(
        first[1].auth.rooms.map((r) => [r.room, r.epoch, r.offset]),
        first[0].auth.rooms.map((r) => [r.room, r.epoch, r.offset]),
      );
      for (const { socket } of first) close(socket);
      const missed = [];
      for (const event of EVENTS) missed.push(await publishOk(sample(event, 1)));

      const back = [await as("json", { since }), await as("msgpack", { since })];
      for (const { auth } of back) {
        for (const r of auth.rooms) assert.equal(r.recovered, true, JSON.stringify(auth.rooms));
      }
      assert.deepEqual(back[1].auth.rooms, back[0].auth.rooms);
      const [a, b] = [await receivedN(back[0].socket, missed.length), await receivedN(back[1].socket, missed.length)];
      assert.deepEqual(b, a);
      assert.deepEqual(
        a.map(([, env]) => [env.room, env.offset]),
        missed.map((r) => [r.rooms[0].room, r.rooms[0].offset]),
      );
      const live = await publishOk(sample("batch_created", 1));
      const [a2, b2] = [await receivedN(back[0].socket, missed.length + 1), await receivedN(back[1].socket, missed.length + 1)];
      assert.deepEqual(b2.at(-1), a2.at(-1));
      assert.equal(a2.at(-1)[1].offset, live.rooms[0].offset);
    });
  });
}

test("an unknown parser is refused at the polling handshake with a code", async () => {
  // (The WebSocket handshake's refusal is tested frame by frame in tests/wire_protocol.rs.)
  const res = await fetch(`${URL}/socket.io/?EIO=4&transport=polling&parser=cbor`, {
    signal: AbortSignal.timeout(WAIT_MS),
  });
  assert.equal(res.status, 400);
  assert.equal((await res.json()).error.code, "unsupported_parser");
});
