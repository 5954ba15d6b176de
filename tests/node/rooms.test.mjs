// join / leave under the room policy. The gateway runs with GATEWAY_ROOM_ROLES=incident=ADMIN
// and a small GATEWAY_MAX_ROOMS_PER_SOCKET (MAX_ROOMS, at least 2).

import { describe, test, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  TRANSPORTS,
  closeAll,
  connectAs,
  envInt,
  expectNothing,
  joinOk,
  publishOk,
  request,
  sample,
  token,
  waitFor,
} from "./lib.mjs";

/** The gateway's GATEWAY_MAX_ROOMS_PER_SOCKET. */
const MAX_ROOMS = envInt("MAX_ROOMS");

afterEach(closeAll);

/** Asserts a refused join/leave ack with `code`. */
function refused(ack, code, what) {
  assert.equal(ack.ok, false, `${what} was accepted: ${JSON.stringify(ack)}`);
  assert.equal(ack.error?.code, code, what);
  assert.equal(typeof ack.error.message, "string", what);
  assert.ok(ack.error.message.length > 0, what);
}

/** Publishes a batch_created event of `tenant` to `room`; returns the publish result. */
function toRoom(tenant, room, batchNumber = room) {
  return publishOk({ ...sample("batch_created", tenant, { batchNumber }), rooms: [room] });
}

for (const transport of TRANSPORTS) {
  describe(`rooms over ${transport}`, () => {
    test("join accepts a bare name and { room }, answers the room's position, and events of the room then arrive", async () => {
      const { socket } = await connectAs(10, 1, "STAFF", { transport });
      const first = await joinOk(socket, "batch:456");
      const exam = await joinOk(socket, "exam:31", { room: "exam:31" });
      // Joining twice is harmless, does not double deliveries, and reports the same position.
      assert.deepEqual(await joinOk(socket, "batch:456"), first);

      const ra = await toRoom(1, "batch:456");
      const rb = await toRoom(1, "exam:31");
      // The ack's offset is the room's last event: the next one is one past it.
      assert.equal(ra.rooms[0].offset, first.offset + 1);
      assert.equal(rb.rooms[0].offset, exam.offset + 1);
      const a = await waitFor(socket, "batch_update");
      const b = await waitFor(socket, "batch_update");
      assert.deepEqual([a.room, b.room], ["batch:456", "exam:31"]);
      assert.deepEqual([a.offset, b.offset], [first.offset + 1, exam.offset + 1]);
      assert.equal(a.payload.batchNumber, "batch:456");
      await expectNothing(socket, "batch_update");

      // Joined again, the room reports where it stands now, in the same history.
      assert.deepEqual(await joinOk(socket, "batch:456"), { ...first, offset: first.offset + 1 });
      // A second socket joining the room is told the same position.
      const { socket: other } = await connectAs(11, 1, "STAFF", { transport });
      assert.deepEqual(await joinOk(other, "batch:456"), { ...first, offset: first.offset + 1 });
    });

    test("malformed room names are refused with invalid_room", async () => {
      const { socket } = await connectAs(10, 1, "STAFF", { transport });
      const bad = ["batch", "batch:", ":456", "Batch:456", "batch:45 6", "batch:4/5", "ba-tch:1", `batch:${"9".repeat(200)}`];
      for (const room of bad) {
        refused(await request(socket, "join", room), "invalid_room", `join ${room}`);
        refused(await request(socket, "join", { room }), "invalid_room", `join { room: ${room} }`);
      }
      refused(await request(socket, "leave", "nocolon"), "invalid_room", "leave nocolon");
    });

    test("requests that are not a room name are refused with invalid_request", async () => {
      const { socket } = await connectAs(10, 1, "STAFF", { transport });
      for (const arg of [42, {}, { room: 7 }, { name: "batch:1" }, ["batch:1"], null]) {
        refused(await request(socket, "join", arg), "invalid_request", `join ${JSON.stringify(arg)}`);
      }
      refused(await request(socket, "leave", { room: false }), "invalid_request", "leave { room: false }");
    });

    test("automatic rooms of others are forbidden; one's own cannot be left", async () => {
      const { socket } = await connectAs(10, 1, "STAFF", { transport });
      for (const room of ["institution:2", "user:11", "user:99", "institution:01"]) {
        refused(await request(socket, "join", room), "forbidden_room", `join ${room}`);
      }
      // Joining one's own automatic rooms is a no-op success that reports their position.
      const { socket: me, auth } = await connectAs(10, 1, "STAFF", { transport });
      const [inst, user] = auth.rooms;
      assert.deepEqual(await joinOk(me, "institution:1"), { ok: true, ...inst });
      assert.deepEqual(await joinOk(me, "user:10"), { ok: true, ...user });
      await joinOk(socket, "institution:1");
      await joinOk(socket, "user:10");
      for (const room of ["institution:1", "user:10", "user:11"]) {
        refused(await request(socket, "leave", room), "forbidden_room", `leave ${room}`);
      }
      // Still in its own rooms, and never in user 11's.
      await publishOk(sample("new_notification", 1, { userId: 11, notificationId: "for-11" }));
      await publishOk(sample("new_notification", 1, { userId: 10, notificationId: "for-10" }));
      await publishOk(sample("batch_created", 1));
      assert.equal((await waitFor(socket, "notification")).payload.notificationId, "for-10");
      assert.equal((await waitFor(socket, "batch_update")).room, "institution:1");
      await expectNothing(socket, ["notification", "batch_update"]);
    });

    test("kinds outside GATEWAY_ROOM_KINDS are refused with room_kind_not_allowed", async () => {
      const { socket } = await connectAs(10, 1, "ADMIN", { transport });
      for (const room of ["secret:1", "admin:1", "tenant:2"]) {
        refused(await request(socket, "join", room), "room_kind_not_allowed", `join ${room}`);
      }
      for (const room of ["batch:1", "exam:1", "course:1", "timetable:1"]) {
        assert.deepEqual(await request(socket, "leave", room), { ok: true, room }, `leave ${room}`);
      }
    });

    test("role-restricted kinds: incident=ADMIN", async () => {
      const { socket: staff } = await connectAs(10, 1, "STAFF", { transport });
      const { socket: admin } = await connectAs(11, 1, "ADMIN", { transport });
      refused(await request(staff, "join", "incident:9031"), "forbidden_role", "STAFF joins incident");
      refused(await request(staff, "join", { room: "incident:9031" }), "forbidden_role", "STAFF joins { incident }");
      await joinOk(admin, "incident:9031");
      // Other kinds stay open to any role.
      await joinOk(staff, "batch:456");

      await publishOk({ ...sample("incident_reported", 1), rooms: ["incident:9031"] });
      assert.equal((await waitFor(admin, "incident")).room, "incident:9031");
      await expectNothing(staff, "incident");
    });

    test(`too_many_rooms beyond ${MAX_ROOMS} joined rooms; leave frees a slot`, async () => {
      const { socket } = await connectAs(10, 1, "STAFF", { transport });
      for (let i = 1; i <= MAX_ROOMS; i++) {
        await joinOk(socket, `batch:${i}`);
      }
      refused(await request(socket, "join", `batch:${MAX_ROOMS + 1}`), "too_many_rooms", "join past the limit");
      refused(await request(socket, "join", { room: "exam:1" }), "too_many_rooms", "join past the limit");
      // Already joined: still fine. Automatic rooms do not count.
      await joinOk(socket, "batch:2");
      await joinOk(socket, "user:10");
      // The refused room really was not joined.
      await toRoom(1, `batch:${MAX_ROOMS + 1}`);
      await expectNothing(socket, "batch_update");

      assert.deepEqual(await request(socket, "leave", { room: "batch:1" }), { ok: true, room: "batch:1" });
      const freed = `batch:${MAX_ROOMS + 1}`;
      await joinOk(socket, freed);
      refused(await request(socket, "join", `batch:${MAX_ROOMS + 2}`), "too_many_rooms", "join past the limit again");
    });

    test("after leave, no more events from that room", async () => {
      const { socket } = await connectAs(10, 1, "STAFF", { transport });
      await joinOk(socket, "batch:456");
      await joinOk(socket, "batch:457");
      await toRoom(1, "batch:456", "before-leave");
      assert.equal((await waitFor(socket, "batch_update")).payload.batchNumber, "before-leave");

      assert.deepEqual(await request(socket, "leave", "batch:456"), { ok: true, room: "batch:456" });
      await toRoom(1, "batch:456", "after-leave");
      // A later event in a room it is still in arrives; the left room's event, relayed first,
      // would have arrived before it.
      await toRoom(1, "batch:457", "sentinel");
      assert.equal((await waitFor(socket, "batch_update")).payload.batchNumber, "sentinel");
      await expectNothing(socket, "batch_update");

      // Leaving a room one is not in is a no-op success; leaving twice too.
      assert.deepEqual(await request(socket, "leave", { room: "batch:456" }), { ok: true, room: "batch:456" });
      assert.deepEqual(await request(socket, "leave", "course:1"), { ok: true, room: "course:1" });
    });
  });
}

for (const transport of TRANSPORTS) {
  test(`a refresh that takes a role away also takes away the rooms that role alone could join (${transport})`, async () => {
    const { socket } = await connectAs(10, 1, "ADMIN", { transport });
    const { socket: admin } = await connectAs(11, 1, "ADMIN", { transport });
    await joinOk(socket, "incident:77");
    await joinOk(socket, "incident:79");
    await joinOk(socket, "batch:456");
    await joinOk(admin, "incident:77");

    // Same role again: nothing is left.
    const same = await request(socket, "refresh", { token: token(10, 1, "ADMIN", { ttl: 600 }) });
    assert.deepEqual(same, { ok: true, exp: same.exp, left: [] });

    const ack = await request(socket, "refresh", { token: token(10, 1, "STAFF", { ttl: 900 }) });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    assert.equal(typeof ack.exp, "number");
    assert.deepEqual([...ack.left].sort(), ["incident:77", "incident:79"]);
    refused(await request(socket, "join", "incident:78"), "forbidden_role", "STAFF joins incident after refresh");
    refused(await request(socket, "join", "incident:77"), "forbidden_role", "STAFF rejoins incident after refresh");

    // No more incident events; the rooms any role may join, and the automatic ones, stay.
    await publishOk({ ...sample("incident_reported", 1), rooms: ["incident:77"] });
    await publishOk({ ...sample("incident_reported", 1), rooms: ["incident:79"] });
    assert.equal((await waitFor(admin, "incident")).room, "incident:77");
    await toRoom(1, "batch:456", "kept");
    assert.equal((await waitFor(socket, "batch_update")).payload.batchNumber, "kept");
    await publishOk(sample("new_notification", 1, { userId: 10, notificationId: "still-mine" }));
    assert.equal((await waitFor(socket, "notification")).payload.notificationId, "still-mine");
    await expectNothing(socket, "incident");

    // The left rooms no longer count against the room limit: MAX_ROOMS - 1 more fit.
    for (let i = 1; i < MAX_ROOMS; i++) await joinOk(socket, `exam:${i}`);
    refused(await request(socket, "join", `exam:${MAX_ROOMS}`), "too_many_rooms", "join past the limit after refresh");

    // Given the role back, it may join again (a refresh does not rejoin by itself).
    const back = await request(socket, "refresh", { token: token(10, 1, "ADMIN", { ttl: 900 }) });
    assert.deepEqual(back.left, []);
    assert.equal((await request(socket, "leave", "exam:1")).ok, true);
    await joinOk(socket, "incident:77");
    await publishOk({ ...sample("incident_reported", 1, { incidentId: 1 }), rooms: ["incident:77"] });
    assert.equal((await waitFor(socket, "incident")).payload.incidentId, 1);
  });
}
