// Presence on one gateway (embedded bus or Redis), with the stock socket.io-client. The gateway
// runs with GATEWAY_PRESENCE_KINDS=exam,batch,incident,institution, GATEWAY_PRESENCE_EVENTS=exam
// and GATEWAY_PRESENCE_MAX_MEMBERS=MAX_MEMBERS (small).

import { describe, test, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  KEY,
  URL,
  WAIT_MS,
  close,
  closeAll,
  connect,
  connectAs,
  envInt,
  expectNothing,
  joinOk,
  request,
  waitFor,
} from "./lib.mjs";
import { expectNone, httpPresence, ofUsers, refused, settles } from "./presence-lib.mjs";

const MAX_MEMBERS = envInt("MAX_MEMBERS");

afterEach(closeAll);

/** Connects `sub` of `tenant` and joins `rooms`; returns the socket. */
async function member(sub, tenant, rooms, { role = "STUDENT", transport = "websocket" } = {}) {
  const { socket } = await connectAs(sub, tenant, role, { transport });
  for (const room of rooms) await joinOk(socket, room);
  return socket;
}

describe("presence on one gateway", () => {
  test("a user with several tabs is one member with that many connections; joins and leaves are reflected within 1 s and emitted once per user", async () => {
    const room = "exam:7";
    const watcher = await member(90, 1, [room], { role: "INVIGILATOR" });
    await settles(watcher, room, [{ userId: "90", role: "INVIGILATOR", connections: 1 }]);

    const tabs = [
      await member(10, 1, [room], { transport: "websocket" }),
      await member(10, 1, [room], { transport: "polling" }),
      await member(10, 1, [room], { transport: "websocket" }),
    ];
    const other = await member(11, 1, [room]);
    const expected = [
      { userId: "10", role: "STUDENT", connections: 3 },
      { userId: "11", role: "STUDENT", connections: 1 },
      { userId: "90", role: "INVIGILATOR", connections: 1 },
    ];
    await settles(watcher, room, expected);
    // Every member asks and gets the same exact answer, by either form of the request.
    for (const s of [...tabs, other]) {
      const ack = await request(s, "presence", { room });
      assert.deepEqual(ack, { ok: true, room, count: 3, members: expected });
    }

    // One presence_join per user (the watcher joined first), each an ordinary room event.
    const join10 = await waitFor(watcher, "presence_join", WAIT_MS, (e) => e.payload.userId === "10");
    const join11 = await waitFor(watcher, "presence_join", WAIT_MS, (e) => e.payload.userId === "11");
    for (const e of [join10, join11]) {
      assert.equal(e.room, room);
      assert.equal(e.channel, "presence_join");
      assert.equal(e.event, "presence_join");
      assert.deepEqual(e.payload, { room, userId: e.payload.userId, role: "STUDENT" });
      assert.ok(Number.isInteger(e.offset) && e.offset > 0, JSON.stringify(e));
    }
    await expectNone(watcher, "presence_join", ofUsers(10, 11));

    // Two of three tabs leave: still a member, with one connection, and no leave event.
    close(tabs[0]);
    await request(tabs[1], "leave", room);
    await settles(watcher, room, [
      { userId: "10", role: "STUDENT", connections: 1 },
      { userId: "11", role: "STUDENT", connections: 1 },
      { userId: "90", role: "INVIGILATOR", connections: 1 },
    ]);
    await expectNothing(watcher, "presence_leave");
    // The last tab goes: one presence_leave.
    close(tabs[2]);
    const leave = await waitFor(watcher, "presence_leave");
    assert.deepEqual(leave.payload, { room, userId: "10", role: "STUDENT" });
    assert.ok(leave.offset > join11.offset);
    await settles(watcher, room, [
      { userId: "11", role: "STUDENT", connections: 1 },
      { userId: "90", role: "INVIGILATOR", connections: 1 },
    ]);
    await expectNone(watcher, "presence_leave", ofUsers(10, 11, 90));
    await expectNone(watcher, "presence_join", ofUsers(10, 11));
  });

  test("presence events recover like any other room event", async () => {
    const room = "exam:8";
    const watcher = await member(29, 1, [room]);
    await settles(watcher, room, [{ userId: "29", role: "STUDENT", connections: 1 }]);
    const later = await member(31, 1, [room]);
    const joined = await waitFor(watcher, "presence_join", WAIT_MS, (e) => e.payload.userId === "31");
    close(later);
    const left = await waitFor(watcher, "presence_leave", WAIT_MS, (e) => e.payload.userId === "31");
    assert.equal(left.offset, joined.offset + 1);
    // Another tab of the watcher's user (no event of its own) recovers both from history.
    const back = await member(29, 1, []);
    const since = { epoch: (await request(watcher, "join", room)).epoch, offset: joined.offset - 1 };
    const again = await request(back, "join", { room, since });
    assert.equal(again.recovered, true, JSON.stringify(again));
    assert.equal(again.replayed, 2, JSON.stringify(again));
    const replayedJoin = await waitFor(back, "presence_join");
    const replayedLeave = await waitFor(back, "presence_leave");
    assert.deepEqual(replayedJoin, joined);
    assert.deepEqual(replayedLeave, left);
  });

  test("a room over GATEWAY_PRESENCE_MAX_MEMBERS answers with its count, truncated", async () => {
    const room = "batch:9";
    const sockets = [];
    for (let i = 0; i <= MAX_MEMBERS; i++) sockets.push(await member(100 + i, 1, [room]));
    await settles(sockets[0], room, null, MAX_MEMBERS + 1);
    const ack = await request(sockets[0], "presence", room);
    assert.deepEqual(ack, { ok: true, room, count: MAX_MEMBERS + 1, truncated: true });
    // No events for batch rooms (not in GATEWAY_PRESENCE_EVENTS).
    await expectNothing(sockets[0], ["presence_join", "presence_leave"]);
  });

  test("institution presence is counts only", async () => {
    const a = await member(40, 5, []);
    await member(41, 5, []);
    await member(41, 5, []);
    await settles(a, "institution:5", null, 2);
    const ack = await request(a, "presence", "institution:5");
    assert.deepEqual(ack, { ok: true, room: "institution:5", count: 2 });
  });

  test("bad requests get clear error codes", async () => {
    const s = await member(50, 1, ["exam:50", "course:1"]);
    const cases = [
      [undefined, "invalid_request"],
      [42, "invalid_request"],
      [{}, "invalid_request"],
      [{ room: 7 }, "invalid_request"],
      ["exam", "invalid_room"],
      ["Exam:1", "invalid_room"],
      ["galaxy:1", "room_kind_not_allowed"],
      ["course:1", "presence_not_enabled"],
      ["user:50", "presence_not_enabled"],
      ["exam:51", "forbidden_room"],
      ["institution:2", "forbidden_room"],
    ];
    for (const [arg, code] of cases) {
      refused(await request(s, "presence", arg), code, `presence ${JSON.stringify(arg)}`);
    }
    // Before authenticating: not_authenticated.
    const { socket } = await connect({});
    refused(await request(socket, "presence", "exam:50"), "not_authenticated", "presence before authenticate");
  });

  test("tenants are isolated: the same room name in two tenants is two presences, through the socket and HTTP", async () => {
    const room = "exam:77";
    const t1 = await member(60, 1, [room]);
    await member(61, 1, [room]);
    const t2 = await member(60, 2, [room], { role: "ADMIN" });
    const one = [
      { userId: "60", role: "STUDENT", connections: 1 },
      { userId: "61", role: "STUDENT", connections: 1 },
    ];
    const two = [{ userId: "60", role: "ADMIN", connections: 1 }];
    await settles(t1, room, one);
    await settles(t2, room, two);
    assert.deepEqual(await httpPresence(1, room), { status: 200, body: { room, count: 2, members: one } });
    assert.deepEqual(await httpPresence(2, room), { status: 200, body: { room, count: 1, members: two } });
    assert.deepEqual(await httpPresence(3, room), { status: 200, body: { room, count: 0, members: [] } });
    // A member of tenant 2 cannot reach tenant 1's room or institution by any name.
    refused(await request(t2, "presence", "institution:1"), "forbidden_room", "another tenant's institution");
    refused(await request(t2, "presence", "1/exam:77"), "invalid_room", "a tenant-qualified name");
  });

  test("GET /v1/presence needs a publish key and a valid tenant and room", async () => {
    const room = "exam:88";
    const s = await member(70, 1, [room]);
    await settles(s, room, [{ userId: "70", role: "STUDENT", connections: 1 }]);
    const ack = await request(s, "presence", room);
    const { ok, ...fromSocket } = ack;
    assert.equal(ok, true);
    assert.deepEqual(await httpPresence(1, room), { status: 200, body: fromSocket });

    const codeOf = async (query, key = KEY) => {
      const headers = key ? { authorization: `Bearer ${key}` } : {};
      const res = await fetch(`${URL}/v1/presence?${query}`, { headers, signal: AbortSignal.timeout(WAIT_MS) });
      const body = await res.json();
      return [res.status, body.error?.code, body.error?.field ?? null];
    };
    assert.deepEqual(await codeOf(`institutionId=1&room=${room}`, null), [401, "missing_api_key", null]);
    assert.deepEqual(await codeOf(`institutionId=1&room=${room}`, "not-the-key-0123456789"), [403, "invalid_api_key", null]);
    assert.deepEqual(await codeOf(`room=${room}`), [400, "invalid_request", "institutionId"]);
    assert.deepEqual(await codeOf(`institutionId=1`), [400, "invalid_request", "room"]);
    assert.deepEqual(await codeOf(`institutionId=a/b&room=${room}`), [400, "invalid_field", "institutionId"]);
    assert.deepEqual(await codeOf(`institutionId=1&room=exam`), [400, "invalid_room", "room"]);
    assert.deepEqual(await codeOf(`institutionId=1&room=course:1`), [400, "presence_not_enabled", null]);
  });
});
