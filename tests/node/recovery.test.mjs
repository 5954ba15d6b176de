// Recovery with the official client: a client that was offline sends the positions it holds
// (`auth.since` in the handshake for its automatic rooms, `join { room, since }` for the others)
// and gets every event it missed, exactly once and in offset order, before the answer; a position
// that cannot be served is answered with its reason, and then nothing old is sent.
//
// Runs against a gateway with GATEWAY_HISTORY_MAX_LEN = HISTORY_MAX_LEN and GATEWAY_MAX_REPLAY =
// MAX_REPLAY (at most HISTORY_MAX_LEN), and a second gateway on the same kind of bus,
// SMALL_GATEWAY_URL, that keeps only SMALL_HISTORY_MAX_LEN events per room (for too_old). BUS
// names the bus ("memory" or "redis"), for messages only.

import { describe, test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import {
  TRANSPORTS,
  transportOptions,
  transportIndex,
  assertTransport,
  URL,
  WAIT_MS,
  assertPosition,
  assertPositions,
  closeAll,
  connect,
  consumeAll,
  connectAs,
  envInt,
  envString,
  expectNothing,
  joinOk,
  publishAllOk,
  publishOk,
  request,
  sample,
  token,
  track,
  until,
  waitFor,
  waitUntil,
} from "./lib.mjs";

const HISTORY_MAX_LEN = envInt("HISTORY_MAX_LEN");
const MAX_REPLAY = envInt("MAX_REPLAY");
const SMALL_URL = envString("SMALL_GATEWAY_URL");
const SMALL_HISTORY_MAX_LEN = envInt("SMALL_HISTORY_MAX_LEN");
const BUS = envString("BUS");
assert.ok(MAX_REPLAY <= HISTORY_MAX_LEN, "the main gateway must keep at least MAX_REPLAY events per room");
assert.ok(SMALL_HISTORY_MAX_LEN + 10 <= MAX_REPLAY, "the small gateway's history must be well below MAX_REPLAY");

/**
 * How long the issue scenario's client stays offline at least: longer than the Redis gateway's
 * GATEWAY_UNSUBSCRIBE_DELAY, so the gateway really drops the rooms and subscribes them again.
 */
const OFFLINE_MS = 2500;
/** Events published while the client is offline (issue scenario 1). */
const MISSED = 500;

afterEach(closeAll);

/** The channel (Socket.IO event name) of the events `eventFor` publishes to a room. */
const CHANNEL_OF_KIND = { batch: "batch_update", institution: "script_submission", user: "notification" };
const CHANNELS = Object.values(CHANNEL_OF_KIND);

/** A publish request of a realistic event for `room` of `tenant`, numbered `seq`, with id `<tag>-<seq>`. */
function eventFor(room, tenant, seq, tag) {
  const [kind, id] = room.split(":");
  const base =
    kind === "user"
      ? sample("new_notification", tenant, { userId: Number(id), notificationId: `${tag}-${seq}` })
      : kind === "institution"
        ? sample("script_submitted", tenant, { scriptId: seq })
        : sample("batch_created", tenant, { batchNumber: `${tag}-${seq}` });
  assert.equal(base.channel, CHANNEL_OF_KIND[kind]);
  return { ...base, id: `${tag}-${seq}`, rooms: [room] };
}

/** Publishes `n` events to `room` (through `url`); returns `[{ id, offset }]` in order. */
async function fill(room, n, tag, { tenant = 1, url = URL } = {}) {
  const reqs = Array.from({ length: n }, (_, i) => eventFor(room, tenant, i, tag));
  const results = await publishAllOk(reqs, { url });
  return results.map((r) => ({ id: r.id, offset: r.rooms[0].offset }));
}

/** Envelopes of event channels in `socket`'s inbox from index `from` on, with their inbox index. */
function envelopes(socket, from = 0) {
  return socket.inbox
    .map((e, index) => ({ e, index }))
    .slice(from)
    .filter(({ e }) => CHANNELS.includes(e.event))
    .map(({ e, index }) => ({ ...e.args[0], index }));
}

/**
 * Emits `join` with `arg` and resolves `{ ack, index }`: the ack and the length of the inbox
 * when it arrived (everything at a lower index came before it). The callback form runs as the
 * ack packet is decoded, so the index is exact even when several packets arrive in one payload.
 */
function joinAt(socket, arg, timeoutMs = WAIT_MS) {
  return new Promise((resolve, reject) => {
    socket.timeout(timeoutMs).emit("join", arg, (err, ack) => {
      if (err) reject(new Error(`no join ack within ${timeoutMs} ms for ${JSON.stringify(arg)}`));
      else resolve({ ack, index: socket.inbox.length });
    });
  });
}

/** Waits until `socket` holds `n` envelopes of `room` from inbox index `from` on (deadline). */
async function collect(socket, room, n, from = 0, timeoutMs = WAIT_MS) {
  const got = () => envelopes(socket, from).filter((e) => e.room === room);
  await waitUntil(socket, () => got().length >= n, timeoutMs, `${n} events of ${room}`).catch((e) => {
    throw new assert.AssertionError({ message: `${e.message} (got ${got().length})` });
  });
  return got();
}

/** Asserts that `got` (envelopes) are exactly `want` (`[{ id, offset }]`), in that order. */
function assertExactly(got, want, what) {
  const seen = got.map((e) => `${e.offset}:${e.id}`);
  const expected = want.map((e) => `${e.offset}:${e.id}`);
  if (seen.length !== expected.length || seen.some((s, i) => s !== expected[i])) {
    const dup = seen.filter((s, i) => seen.indexOf(s) !== i);
    const missing = expected.filter((s) => !seen.includes(s));
    assert.fail(
      `${what}: ${seen.length} events, want ${expected.length}; duplicated: ${dup.slice(0, 10).join(" ") || "none"}; ` +
        `missing: ${missing.slice(0, 10).join(" ") || "none"}; offsets received: ${got.map((e) => e.offset).join(",")}`,
    );
  }
}

/** `{ [room]: { epoch, offset } }` as an entry or ack reports it. */
const at = (entry) => ({ epoch: entry.epoch, offset: entry.offset });

// ---------------------------------------------------------------------------------------------
// The client an application would write: reconnection on, positions tracked from every
// envelope and from the answers, sent back on every (re)connect.

/**
 * A socket.io-client socket for `sub` of `tenant` with reconnection enabled. It tracks a
 * position per room (epochs from `authenticated` and join answers, offsets from every envelope),
 * sends `auth: { token, since }` for its automatic rooms on every (re)connect, and on every
 * `connect` joins `rooms` with `since` when it holds a position. `offline()` cuts the transport
 * (the gateway loses the socket); the client reconnects by itself, but holds its handshake until
 * `online()`.
 */
function recoveringClient({ sub, tenant, transport, rooms = [] }) {
  const tok = token(sub, tenant);
  const auto = [`institution:${tenant}`, `user:${sub}`];
  const positions = new Map();
  const joins = new Map(); // room -> promise of the latest { ack, index }
  let gate = null;
  let release = null;
  const since = (names) =>
    Object.fromEntries(names.filter((r) => positions.has(r)).map((r) => [r, { ...positions.get(r) }]));
  const socket = io(URL, {
    ...transportOptions(transport),
    forceNew: true,
    autoConnect: false,
    reconnection: true,
    reconnectionDelay: 50,
    reconnectionDelayMax: 200,
    randomizationFactor: 0,
    timeout: WAIT_MS,
    // Called on every (re)connect: the positions are the latest ones.
    auth: (cb) => {
      const send = () => cb({ token: tok, since: since(auto) });
      if (gate) gate.then(send);
      else send();
    },
  });
  track(socket);
  const learn = (entry) => {
    const held = positions.get(entry.room);
    // Same history: never move back (buffered live events may already be past the answer's
    // offset). Another history: start over from the answer.
    const offset = held && held.epoch === entry.epoch ? Math.max(held.offset, entry.offset) : entry.offset;
    positions.set(entry.room, { epoch: entry.epoch, offset });
  };
  socket.onAny((event, env) => {
    if (CHANNELS.includes(event) && positions.has(env?.room)) {
      const held = positions.get(env.room);
      positions.set(env.room, { ...held, offset: Math.max(held.offset, env.offset) });
    }
  });
  socket.on("authenticated", (auth) => auth.rooms.forEach(learn));
  socket.on("resync", (r) => positions.delete(r.room));
  socket.on("connect", () => {
    for (const room of rooms) {
      const arg = positions.has(room) ? { room, since: { ...positions.get(room) } } : { room };
      const p = joinAt(socket, arg).then((r) => {
        if (r.ack?.ok) learn(r.ack);
        return r;
      });
      p.catch(() => {});
      joins.set(room, p);
    }
  });
  return {
    socket,
    positions,
    /** The latest join of `room`: `{ ack, index }`. */
    joined: (room) => joins.get(room),
    offline() {
      gate = new Promise((resolve) => {
        release = resolve;
      });
      socket.io.engine.close();
    },
    online() {
      const r = release;
      gate = null;
      r();
    },
  };
}

const sleepUntil = (epochMs) => new Promise((resolve) => setTimeout(resolve, until(epochMs)));

// ---------------------------------------------------------------------------------------------

for (const transport of TRANSPORTS) {
  /** A room of its own per transport and test, so nothing left over from another test counts. */
  const R = (n) => `batch:${(transportIndex(transport) + 1) * 10_000 + n}`;
  const as = (sub, tenant = 1, opts = {}) => connectAs(sub, tenant, "STAFF", { transport, ...opts });

  describe(`recovery over ${transport} (${BUS} bus)`, () => {
    test(`issue scenario 1: ${MISSED} events missed offline arrive exactly once, in order, before the answers; live ones after`, async () => {
      const ROOMS = ["batch:456", "institution:1", "user:10"];
      const c = recoveringClient({ sub: 10, tenant: 1, transport, rooms: ["batch:456"] });
      const { socket } = c;
      socket.connect();
      await waitFor(socket, "connect");
      const auth = await waitFor(socket, "authenticated");
      assertPositions(auth.rooms, ["institution:1", "user:10"]);
      const { ack: joined } = await c.joined("batch:456");
      assert.deepEqual(Object.keys(joined).sort(), ["epoch", "offset", "ok", "room"], JSON.stringify(joined));
      assertPosition(joined, "batch:456");
      await assertTransport(socket, transport);

      // Some traffic while online: the client's positions follow the envelopes.
      const warmup = await publishAllOk(ROOMS.map((room, i) => eventFor(room, 1, i, `warm-${transport}`)));
      for (const room of ROOMS) await collect(socket, room, 1);
      const before = Object.fromEntries(ROOMS.map((room) => [room, { ...c.positions.get(room) }]));
      ROOMS.forEach((room, i) => assert.equal(before[room].offset, warmup[i].rooms[0].offset, `position of ${room}`));

      // Offline: the transport drops, the gateway loses the socket.
      const offlineAt = Date.now();
      c.offline();
      await waitFor(socket, "disconnect");
      const reqs = Array.from({ length: MISSED }, (_, i) => eventFor(ROOMS[i % ROOMS.length], 1, i, `missed-${transport}`));
      const results = await publishAllOk(reqs);
      const missed = Object.fromEntries(ROOMS.map((room) => [room, []]));
      results.forEach((r, i) => {
        assert.deepEqual(r.rooms.map((x) => x.room), [ROOMS[i % ROOMS.length]]);
        missed[r.rooms[0].room].push({ id: r.id, offset: r.rooms[0].offset });
      });
      for (const room of ROOMS) {
        const offsets = missed[room].map((m) => m.offset);
        assert.deepEqual(offsets, offsets.map((_, i) => before[room].offset + 1 + i), `offsets published to ${room}`);
      }
      await sleepUntil(offlineAt + OFFLINE_MS);
      // Nothing reached the client while it was offline.
      assert.equal(envelopes(socket).length, 3);
      const reconnectFrom = socket.inbox.length;

      // Back online: the client reconnects by itself with auth.since, and joins batch:456 with
      // its position on connect.
      c.online();
      await waitFor(socket, "connect", 10_000);
      const again = await waitFor(socket, "authenticated", 10_000);
      const authIndex = socket.inbox.findIndex((e) => e.args[0] === again);
      const { ack, index: ackIndex } = await c.joined("batch:456");

      const last = (room) => missed[room].at(-1).offset;
      assert.deepEqual(again.rooms, [
        { room: "institution:1", ...before["institution:1"], offset: last("institution:1"), recovered: true, replayed: missed["institution:1"].length },
        { room: "user:10", ...before["user:10"], offset: last("user:10"), recovered: true, replayed: missed["user:10"].length },
      ]);
      assert.deepEqual(ack, {
        ok: true,
        room: "batch:456",
        epoch: before["batch:456"].epoch,
        offset: last("batch:456"),
        recovered: true,
        replayed: missed["batch:456"].length,
      });

      // Every missed event exactly once, in offset order per room, each before the answer that
      // covers its room.
      const got = envelopes(socket, reconnectFrom);
      assert.equal(got.length, MISSED, `${got.length} events after the reconnect, want ${MISSED}`);
      for (const room of ROOMS) {
        const mine = got.filter((e) => e.room === room);
        assertExactly(mine, missed[room], `replay of ${room}`);
        const answeredAt = room === "batch:456" ? ackIndex : authIndex;
        const late = mine.filter((e) => e.index >= answeredAt);
        assert.equal(late.length, 0, `${late.length} replayed events of ${room} came after its answer`);
      }
      const byId = new Map(reqs.map((r) => [r.id, r]));
      for (const e of got) assert.equal(JSON.stringify(e.payload), JSON.stringify(byId.get(e.id).payload), `payload of ${e.id}`);
      assert.equal(socket.inbox.some((e) => e.event === "resync"), false, "unexpected resync");
      // The positions the client holds now are the last events.
      for (const room of ROOMS) assert.deepEqual(c.positions.get(room), { epoch: before[room].epoch, offset: last(room) });

      // Live events published after the reconnect arrive after the replayed ones, next in line.
      const liveFrom = socket.inbox.length;
      const live = await publishAllOk(ROOMS.flatMap((room) => [0, 1].map((i) => eventFor(room, 1, i, `live-${transport}-${room}`))));
      for (const room of ROOMS) {
        const want = live.filter((r) => r.rooms[0].room === room).map((r) => ({ id: r.id, offset: r.rooms[0].offset }));
        assert.deepEqual(want.map((w) => w.offset), [last(room) + 1, last(room) + 2]);
        assertExactly(await collect(socket, room, 2, liveFrom), want, `live events of ${room}`);
      }
      const maxReplayIndex = Math.max(...got.map((e) => e.index));
      assert.ok(envelopes(socket, liveFrom).every((e) => e.index > maxReplayIndex));
      assert.equal(envelopes(socket).length, 3 + MISSED + 6);
      // Nothing else comes: no late duplicate, no resync.
      consumeAll(socket);
      await expectNothing(socket);
    });

    test("a position in another history: epoch_changed, and nothing old is sent", async () => {
      const room = R(1);
      const { socket: first } = await as(10);
      const p0 = await joinOk(first, room);
      const old = await fill(room, 3, `epoch-${transport}`);

      const { socket } = await as(10);
      const wrong = { epoch: `${p0.epoch}x`, offset: p0.offset };
      const { ack } = await joinAt(socket, { room, since: wrong });
      assert.deepEqual(ack, { ok: true, room, epoch: p0.epoch, offset: old.at(-1).offset, recovered: false, reason: "epoch_changed" });
      await expectNothing(socket, "batch_update");
      // It is in the room all the same: live events arrive, from the answer's position on.
      const live = await publishOk(eventFor(room, 1, 99, `epoch-live-${transport}`));
      const env = await waitFor(socket, "batch_update");
      assert.deepEqual([env.id, env.offset], [live.id, ack.offset + 1]);

      // Another tenant's room of the same name is another history: its epoch is not this one's.
      const { socket: other } = await as(10, 2);
      const theirs = await joinOk(other, room);
      assert.notEqual(theirs.epoch, p0.epoch);
      const { socket: mixed } = await as(12);
      const { ack: crossed } = await joinAt(mixed, { room, since: { epoch: theirs.epoch, offset: 0 } });
      assert.deepEqual([crossed.ok, crossed.recovered, crossed.reason], [true, false, "epoch_changed"]);
      assert.equal(crossed.epoch, p0.epoch);
      await expectNothing(mixed, "batch_update");
    });

    test("an offset the room has not reached: future_offset, and nothing old is sent", async () => {
      const room = R(2);
      const { socket: first } = await as(10);
      const p0 = await joinOk(first, room);
      const old = await fill(room, 2, `future-${transport}`);
      const now = old.at(-1).offset;

      const { socket } = await as(10);
      const { ack } = await joinAt(socket, { room, since: { epoch: p0.epoch, offset: now + 5 } });
      assert.deepEqual(ack, { ok: true, room, epoch: p0.epoch, offset: now, recovered: false, reason: "future_offset" });
      // At the room's offset exactly: recovered, nothing to replay.
      const { socket: current } = await as(11);
      const { ack: exact } = await joinAt(current, { room, since: { epoch: p0.epoch, offset: now } });
      assert.deepEqual(exact, { ok: true, room, epoch: p0.epoch, offset: now, recovered: true, replayed: 0 });
      await Promise.all([expectNothing(socket, "batch_update"), expectNothing(current, "batch_update")]);
    });

    test(`a gap of ${MAX_REPLAY} is replayed; one more is too_many and nothing old is sent`, async () => {
      const room = R(3);
      const { socket: first } = await as(10);
      const p0 = await joinOk(first, room);
      closeAll();
      const old = await fill(room, MAX_REPLAY + 1, `many-${transport}`);

      const { socket: edge } = await as(10);
      const { ack, index } = await joinAt(edge, { room, since: { epoch: p0.epoch, offset: p0.offset + 1 } }, 20_000);
      assert.deepEqual(ack, {
        ok: true,
        room,
        epoch: p0.epoch,
        offset: old.at(-1).offset,
        recovered: true,
        replayed: MAX_REPLAY,
      });
      const got = envelopes(edge);
      assertExactly(got, old.slice(1), `replay of ${MAX_REPLAY} events`);
      assert.ok(got.every((e) => e.index < index), "replayed events came after the answer");

      const { socket: far } = await as(11);
      const { ack: refused } = await joinAt(far, { room, since: { epoch: p0.epoch, offset: p0.offset } });
      assert.deepEqual(refused, { ok: true, room, epoch: p0.epoch, offset: old.at(-1).offset, recovered: false, reason: "too_many" });
      consumeAll(edge);
      await Promise.all([expectNothing(far, "batch_update"), expectNothing(edge, "batch_update")]);
    });

    test(`a gap older than the history (${SMALL_HISTORY_MAX_LEN} events on the small gateway): too_old`, async () => {
      const room = R(4);
      const cap = SMALL_HISTORY_MAX_LEN;
      const small = { transport, url: SMALL_URL };
      const { socket: first } = await connectAs(10, 1, "STAFF", small);
      const p0 = await joinOk(first, room);
      closeAll();
      const old = await fill(room, cap + 10, `old-${transport}`, { url: SMALL_URL });
      const now = old.at(-1).offset;
      const since = (offset) => ({ room, since: { epoch: p0.epoch, offset } });

      const { socket: gone } = await connectAs(10, 1, "STAFF", small);
      const { ack } = await joinAt(gone, since(p0.offset));
      assert.deepEqual(ack, { ok: true, room, epoch: p0.epoch, offset: now, recovered: false, reason: "too_old" });
      // One event older than what the history keeps.
      const { socket: justGone } = await connectAs(11, 1, "STAFF", small);
      const { ack: edgeAck } = await joinAt(justGone, since(now - cap - 1));
      assert.deepEqual([edgeAck.recovered, edgeAck.reason], [false, "too_old"]);
      await Promise.all([expectNothing(gone, "batch_update"), expectNothing(justGone, "batch_update", 0)]);

      // Exactly what the history keeps is replayed.
      const { socket: kept } = await connectAs(12, 1, "STAFF", small);
      const { ack: keptAck, index } = await joinAt(kept, since(now - cap));
      assert.deepEqual(keptAck, { ok: true, room, epoch: p0.epoch, offset: now, recovered: true, replayed: cap });
      const got = envelopes(kept);
      assertExactly(got, old.slice(-cap), `replay of the ${cap} kept events`);
      assert.ok(got.every((e) => e.index < index));
    });

    test("a malformed since is refused with invalid_since and joins nothing", async () => {
      const room = R(5);
      const { socket } = await as(10);
      const p0 = await joinOk(socket, room);
      const { socket: probe } = await as(11);
      const bad = [
        { epoch: p0.epoch, offset: "0" },
        { epoch: p0.epoch, offset: "abc" },
        { epoch: p0.epoch, offset: -1 },
        { epoch: p0.epoch, offset: 1.5 },
        { epoch: p0.epoch, offset: null },
        { epoch: p0.epoch },
        { offset: 0 },
        { epoch: 7, offset: 0 },
        { epoch: "", offset: 0 },
        { epoch: "e".repeat(65), offset: 0 },
        "0",
        42,
        [p0.epoch, 0],
      ];
      for (const since of bad) {
        const { ack } = await joinAt(probe, { room, since });
        assert.equal(ack.ok, false, `since ${JSON.stringify(since)} accepted: ${JSON.stringify(ack)}`);
        assert.equal(ack.error?.code, "invalid_since", `since ${JSON.stringify(since)}`);
        assert.equal(typeof ack.error.message, "string");
      }
      // Not in the room: an event of the room does not reach it.
      await publishOk(eventFor(room, 1, 0, `invalid-${transport}`));
      await waitFor(socket, "batch_update");
      await expectNothing(probe, "batch_update");
      // since: null is no position at all: a plain join.
      const { ack } = await joinAt(probe, { room, since: null });
      assert.deepEqual(ack, { ok: true, room, epoch: p0.epoch, offset: p0.offset + 1 });

      // In the handshake, a malformed position of an automatic room is answered per room.
      const { socket: hs } = await connect({
        transport,
        auth: { token: token(10, 1), since: { "institution:1": { epoch: p0.epoch, offset: "x" } } },
      });
      assert.ok(hs);
      const auth = await waitFor(hs, "authenticated");
      const [inst, user] = auth.rooms;
      assertPosition(inst, "institution:1");
      assert.deepEqual([inst.recovered, inst.reason], [false, "invalid_since"]);
      assertPositions([user], ["user:10"]);
    });

    test("a since for someone else's room is still refused by the room policy", async () => {
      const { socket: u11, auth } = await as(11);
      const theirs = assertPositions(auth.rooms, ["institution:1", "user:11"])["user:11"];
      await publishOk(sample("new_notification", 1, { userId: 11, notificationId: `private-${transport}` }));
      await waitFor(u11, "notification");
      const { socket: u2, auth: auth2 } = await as(20, 2);
      const otherTenant = assertPositions(auth2.rooms, ["institution:2", "user:20"])["institution:2"];

      const { socket } = await as(10);
      for (const [room, since] of [["user:11", theirs], ["institution:2", otherTenant], ["institution:2", { epoch: "x", offset: 0 }]]) {
        const { ack } = await joinAt(socket, { room, since });
        assert.deepEqual([ack.ok, ack.error?.code], [false, "forbidden_room"], `join ${room} with since: ${JSON.stringify(ack)}`);
      }
      const { ack: kind } = await joinAt(socket, { room: "secret:1", since: { epoch: "x", offset: 0 } });
      assert.equal(kind.error?.code, "room_kind_not_allowed");
      await expectNothing(socket, "notification");

      // In the handshake, positions of rooms that are not the socket's automatic rooms are
      // ignored: no entry, no event.
      const { socket: hs } = await connect({
        transport,
        auth: { token: token(10, 1), since: { "user:11": { ...theirs, offset: 0 }, "institution:2": { ...otherTenant, offset: 0 } } },
      });
      assert.ok(hs);
      assertPositions((await waitFor(hs, "authenticated")).rooms, ["institution:1", "user:10"]);
      await publishOk(sample("new_notification", 1, { userId: 11, notificationId: `private-2-${transport}` }));
      await publishOk(sample("batch_created", 2));
      assert.equal((await waitFor(u11, "notification")).payload.notificationId, `private-2-${transport}`);
      assert.equal((await waitFor(u2, "batch_update")).room, "institution:2");
      await Promise.all([expectNothing(hs), expectNothing(socket)]);
    });

    test("handshake since is answered per automatic room: one recovered, one in another history", async () => {
      const { auth } = await as(10);
      const p = assertPositions(auth.rooms, ["institution:1", "user:10"]);
      closeAll();
      const inst = await fill("institution:1", 4, `hs-inst-${transport}`);
      const user = await fill("user:10", 3, `hs-user-${transport}`);

      const { socket } = await connect({
        transport,
        auth: {
          token: token(10, 1),
          since: { "institution:1": { epoch: `${p["institution:1"].epoch}-old`, offset: 0 }, "user:10": p["user:10"] },
        },
      });
      assert.ok(socket);
      const again = await waitFor(socket, "authenticated");
      const authIndex = socket.inbox.findIndex((e) => e.args[0] === again);
      assert.deepEqual(again.rooms, [
        { room: "institution:1", epoch: p["institution:1"].epoch, offset: inst.at(-1).offset, recovered: false, reason: "epoch_changed" },
        { room: "user:10", epoch: p["user:10"].epoch, offset: user.at(-1).offset, recovered: true, replayed: 3 },
      ]);
      const got = envelopes(socket);
      assertExactly(got, user, "replay of user:10");
      assert.ok(got.every((e) => e.index < authIndex), "replayed events came after authenticated");
      await expectNothing(socket, "script_submission");
    });

    test("a join with since for a room already joined replays nothing again", async () => {
      const room = R(6);
      const { socket } = await as(10);
      const p0 = await joinOk(socket, room);
      const sent = await fill(room, 3, `again-${transport}`);
      assertExactly(await collect(socket, room, 3), sent, "live events");
      consumeAll(socket);
      const ack = await request(socket, "join", { room, since: at(p0) });
      assert.equal(ack.ok, true, JSON.stringify(ack));
      assert.deepEqual(at(ack), { epoch: p0.epoch, offset: sent.at(-1).offset });
      await expectNothing(socket, "batch_update");
    });

    test("events published while the client recovers arrive exactly once and in order", async () => {
      // Eight publishers keep the room busy while a client joins it with a position: events
      // already in the replay may still be on their way from the bus when the socket enters
      // the room, and must not reach it a second time.
      const ROUNDS = 12;
      const failures = [];
      for (let r = 0; r < ROUNDS; r++) {
        const room = R(100 + r);
        const { socket: first } = await as(10);
        const p0 = await joinOk(first, room);
        closeAll();
        await fill(room, 5, `busy-${transport}-${r}`);
        let stop = false;
        let last = 0;
        const publishers = Promise.all(
          Array.from({ length: 8 }, async (_, k) => {
            for (let i = 0; !stop; i++) {
              const res = await publishOk(eventFor(room, 1, i, `busy-${transport}-${r}-${k}`));
              last = Math.max(last, res.rooms[0].offset);
            }
          }),
        );
        const { socket } = await as(10);
        const { ack, index } = await joinAt(socket, { room, since: at(p0) });
        stop = true;
        await publishers;
        assert.equal(ack.recovered, true, JSON.stringify(ack));
        assert.ok(envelopes(socket).filter((e) => e.index < index).length >= 5, "the missed events came before the answer");
        await collect(socket, room, last - p0.offset);
        // A late duplicate would come right behind the live traffic.
        await expectNothing(socket, "resync", 200);
        const offsets = envelopes(socket).map((e) => e.offset);
        const want = Array.from({ length: last - p0.offset }, (_, i) => p0.offset + 1 + i);
        if (offsets.join() !== want.join()) failures.push(`round ${r}: ${offsets.join(",")}`);
        closeAll();
      }
      assert.deepEqual(failures, [], `${failures.length} of ${ROUNDS} recoveries were not exactly once, in order`);
    });
  });
}

