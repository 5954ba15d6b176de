// The client against a real gateway: positions, de-duplication, shared rooms, re-joining after
// a reconnect, token refresh, refused tokens, and resync after a lost history.
import assert from "node:assert/strict";
import { test } from "node:test";
import { client, outgoing, publish, quiet, token, until } from "./helpers.mjs";

let next = Math.floor(Math.random() * 1e6);
/** A room no other test uses. */
const freshRoom = () => `batch:${++next}`;

test("connects, authenticates, and tracks the position of every room", async () => {
  const c = client(10);
  const statuses = [];
  c.onStatus((s) => statuses.push(s));
  await until("connected", () => c.status === "connected");
  assert.equal(c.me.userId, "10");
  assert.ok(c.positions()["institution:1"], "a position for the automatic tenant room");
  assert.ok(c.positions()["user:10"], "a position for the automatic user room");

  const room = freshRoom();
  const ack = await c.join(room);
  assert.equal(ack.room, room);
  assert.equal(ack.offset, 0);
  const got = [];
  c.on("batch_update", "batch_created", (e) => got.push(e), { room });
  for (let i = 1; i <= 3; i++) await publish([room], i);
  await until("three events", () => got.length === 3);
  assert.deepEqual(got.map((e) => e.offset), [1, 2, 3]);
  assert.deepEqual(got.map((e) => e.payload.batchId), [1, 2, 3]);
  assert.deepEqual(c.positions()[room], { epoch: ack.epoch, offset: 3 });
  assert.deepEqual(c.rooms(), [room]);
  assert.deepEqual(statuses, ["connected"]);
});

test("drops an event it has already seen; room-less handlers get each event once", async () => {
  const c = client(11);
  await until("connected", () => c.status === "connected");
  const a = freshRoom();
  const b = freshRoom();
  await Promise.all([c.join(a), c.join(b)]);
  const any = [];
  const inA = [];
  const inB = [];
  c.on("batch_update", (e) => any.push(e));
  c.on("batch_update", (e) => inA.push(e), { room: a });
  c.on("batch_update", "batch_created", (e) => inB.push(e), { room: b });
  // One event addressed to both rooms: one copy per room arrives.
  const { id } = await publish([a, b], 1);
  await until("both copies", () => inA.length === 1 && inB.length === 1);
  await quiet();
  assert.deepEqual(any.map((e) => e.id), [id], "a room-less handler sees the event once");
  assert.equal(inA[0].id, id);
  assert.equal(inB[0].id, id);

  // The same envelope handed to the client again (as a replay overlapping live delivery
  // would) is dropped: nothing is dispatched and the position does not move.
  const [receive] = c.socket.listenersAny();
  receive("batch_update", { ...inA[0] });
  receive("batch_update", { ...inA[0], id: "another-id" });
  assert.equal(inA.length, 1);
  assert.equal(any.length, 1);
  assert.equal(c.positions()[a].offset, 1);
});

test("rooms are reference-counted: one join, one leave", async () => {
  const c = client(12);
  const sent = outgoing(c);
  await until("connected", () => c.status === "connected");
  const room = freshRoom();
  const [first, second] = await Promise.all([c.join(room), c.join(room)]);
  assert.equal(first, second);
  assert.equal(sent.join, 1, "two joins of one room send one join");
  const got = [];
  c.on("batch_update", (e) => got.push(e.offset), { room });

  c.leave(room);
  await quiet();
  assert.equal(sent.leave, undefined, "the room is still wanted by the second joiner");
  await publish([room], 1);
  await until("the event while one joiner remains", () => got.length === 1);

  // The last leave goes out; an unmount immediately followed by a mount (React StrictMode)
  // sends nothing.
  c.leave(room);
  void c.join(room);
  await quiet();
  assert.equal(sent.leave, undefined);
  assert.equal(sent.join, 1);
  c.leave(room);
  await until("the leave", () => sent.leave === 1);
  assert.deepEqual(c.rooms(), []);
  // Out of the room: its next event does not arrive; one to the user room still does.
  const mine = [];
  c.on("batch_update", (e) => mine.push(e), { room: "user:12" });
  await publish([room], 2);
  await publish(["user:12"], 3);
  await until("the user-room event", () => mine.length === 1);
  await quiet();
  assert.deepEqual(got, [1]);
});

test("re-joins its rooms after a reconnect and recovers what it missed, once, in order", async () => {
  const c = client(13);
  const sent = outgoing(c);
  await until("connected", () => c.status === "connected");
  const room = freshRoom();
  await c.join(room);
  const got = [];
  c.on("batch_update", (e) => got.push(e.offset), { room });
  await publish([room], 1);
  await until("the first event", () => got.length === 1);
  const statuses = [];
  c.onStatus((s) => statuses.push(s));

  // Cut the transport; publish while the client is away (it waits at least 1 s to retry).
  c.socket.io.engine.close();
  await until("reconnecting", () => c.status === "reconnecting");
  for (let i = 2; i <= 6; i++) await publish([room], i);
  await until("connected again", () => c.status === "connected");
  await until("the missed events", () => got.length === 6);
  await quiet();
  assert.deepEqual(got, [1, 2, 3, 4, 5, 6]);
  assert.equal(sent.join, 2, "the room was joined again without being asked");
  assert.deepEqual(statuses, ["reconnecting", "connected"]);
  // Live events flow again.
  await publish([room], 7);
  await until("a live event", () => got.length === 7);
});

test("refreshes its token before it expires and stays connected", async () => {
  let issued = 0;
  const c = client(14, { getToken: () => (issued++, token(14, 1, { ttl: 3 })) });
  const sent = outgoing(c);
  const statuses = [];
  c.onStatus((s) => statuses.push(s));
  await until("connected", () => c.status === "connected");
  const room = freshRoom();
  await c.join(room);
  // Well past the first `exp`: without refreshes the gateway would disconnect at the first `exp`.
  await until("three refreshes", () => (sent.refresh ?? 0) >= 3, 12_000);
  assert.ok(issued >= 3, `getToken called for the handshake and each refresh (${issued})`);
  const got = [];
  c.on("batch_update", (e) => got.push(e), { room });
  await publish([room], 1);
  await until("an event after the refreshes", () => got.length === 1);
  assert.equal(c.status, "connected");
  assert.deepEqual(statuses, ["connected"], "never left connected");
});

test("a refused token makes the status unauthorized with the gateway's code; connect() retries", async () => {
  for (const [tok, code] of [
    [token(15, 1, { secret: "another-secret-0123456789abcdef-01234" }), "token_invalid_signature"],
    [token(15, 1, { ttl: -60 }), "token_expired"],
  ]) {
    let current = tok;
    const c = client(15, { getToken: () => current });
    await until(code, () => c.status === "unauthorized");
    assert.equal(c.error.code, code);
    assert.ok(c.error.message.length > 0);
    // It stays refused (no retry loop with the same token) until the application acts.
    await quiet();
    assert.equal(c.status, "unauthorized");
    current = token(15);
    c.connect();
    await until("connected with a new token", () => c.status === "connected");
    assert.equal(c.error, undefined);
  }
});

test("a failing getToken is retried with backoff", async () => {
  let calls = 0;
  const c = client(16, {
    getToken: () => {
      if (++calls === 1) throw new Error("identity service unavailable");
      return token(16);
    },
  });
  await until("connected after a retry", () => c.status === "connected");
  assert.equal(calls, 2);
});

test("onResync fires when the room's history was lost (epoch changed)", async () => {
  const room = freshRoom();
  // Positions saved by an earlier page whose history is gone: an epoch the gateway never made.
  const saved = { [room]: { epoch: "lost-epoch", offset: 5 } };
  const storage = { load: () => structuredClone(saved), save: (p) => Object.assign(saved, structuredClone(p)) };
  const c = client(17, { storage });
  const fired = [];
  c.onResync(room, (r) => fired.push(`room:${r}`));
  c.onResync("*", (r) => fired.push(`any:${r}`));
  const ack = await c.join(room);
  assert.equal(ack.recovered, false);
  assert.equal(ack.reason, "epoch_changed");
  assert.deepEqual(fired, [`room:${room}`, `any:${room}`]);
  assert.notEqual(c.positions()[room].epoch, "lost-epoch");
  await until("the new position saved", () => saved[room].epoch === ack.epoch);
  // The resync answered; events flow from the new position.
  const got = [];
  c.on("batch_update", (e) => got.push(e.offset), { room });
  await publish([room], 1);
  await until("an event", () => got.length === 1);
});

test("a join the gateway refuses rejects with its code", async () => {
  const c = client(18);
  await assert.rejects(c.join("user:99"), (e) => e.code === "forbidden_room");
  await assert.rejects(c.join("nope"), (e) => typeof e.code === "string" && e.code.startsWith("invalid"));
});
