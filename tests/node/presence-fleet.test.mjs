// Presence across three gateways on one Redis, with the stock socket.io-client: the same exact
// answer on every gateway, joins and leaves reflected within 1 s and emitted once per user; then
// one gateway is SIGKILLed and its members leave within the lease (plus a tick), once.
//
// Set by the Rust driver: GATEWAY_URLS (three, comma separated; the third is the one killed),
// VICTIM_PID (its process id), LEASE_MS, RESULT_FILE (where the number of connections the
// victim held when it died is written, for the lifecycle stream check that follows).

import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { WAIT_MS, close, closeAll, connectAs, envInt, envString, expectNothing, joinOk, waitFor } from "./lib.mjs";
import { REFLECTED_MS, expectNone, httpPresence, ofUsers, settles } from "./presence-lib.mjs";

const URLS = envString("GATEWAY_URLS").split(",");
const [A, B, C] = URLS;
const VICTIM_PID = envInt("VICTIM_PID");
const LEASE_MS = envInt("LEASE_MS");
/** How often survivors renew and look for expired leases. */
const TICK_MS = Math.floor(LEASE_MS / 3);
const RESULT_FILE = envString("RESULT_FILE");

/** Sockets connected to the victim and not closed by the test. */
const onVictim = new Set();

async function member(sub, url, rooms, role = "STUDENT", transport = "websocket") {
  const { socket } = await connectAs(sub, 1, role, { url, transport });
  for (const room of rooms) await joinOk(socket, room);
  if (url === C) onVictim.add(socket);
  return socket;
}

function leaveAll(...sockets) {
  for (const s of sockets) {
    onVictim.delete(s);
    close(s);
  }
}

const inv = (userId, connections = 1) => ({ userId: String(userId), role: "INVIGILATOR", connections });
const stu = (userId, connections = 1) => ({ userId: String(userId), role: "STUDENT", connections });

describe("presence across three gateways", () => {
  after(closeAll);
  // Watchers, one per gateway, in both rooms.
  const watchers = [];

  test("every gateway gives the same exact answer; joins and leaves show within 1 s and are emitted once per user", async () => {
    const room = "exam:7";
    watchers.push(await member(90, A, [room, "exam:9"], "INVIGILATOR"));
    watchers.push(await member(91, B, [room, "exam:9"], "INVIGILATOR"));
    watchers.push(await member(92, C, [room], "INVIGILATOR"));
    const base = [inv(90), inv(91), inv(92)];
    for (const w of watchers) await settles(w, room, base);

    const tab10 = [await member(10, A, [room]), await member(10, B, [room], "STUDENT", "polling"), await member(10, C, [room])];
    const tabs11 = [await member(11, B, [room]), await member(11, B, [room])];
    await member(12, C, [room]);
    const all = [stu(10, 3), stu(11, 2), stu(12), inv(90), inv(91), inv(92)];
    for (const w of watchers) await settles(w, room, all);
    for (const url of URLS) {
      assert.deepEqual(await httpPresence(1, room, { url }), { status: 200, body: { room, count: 6, members: all } });
    }
    // One presence_join per user, on every gateway.
    for (const w of watchers) {
      for (const user of ["10", "11", "12"]) {
        await waitFor(w, "presence_join", WAIT_MS, (e) => e.room === room && e.payload.userId === user);
      }
      await expectNone(w, "presence_join", (e) => e.room === room && ofUsers(10, 11, 12)(e));
    }

    // 10 closes the tab on A (two left elsewhere): fewer connections, no leave. 11 goes: one leave.
    leaveAll(tab10[0], ...tabs11);
    const after = [stu(10, 2), stu(12), inv(90), inv(91), inv(92)];
    for (const w of watchers) await settles(w, room, after);
    for (const w of watchers) {
      const leave = await waitFor(w, "presence_leave", WAIT_MS, (e) => e.room === room);
      assert.deepEqual(leave.payload, { room, userId: "11", role: "STUDENT" });
      await expectNone(w, "presence_leave", (e) => e.room === room);
    }
  });

  test("a SIGKILLed gateway's members leave within the lease plus a tick, with one presence_leave each", async () => {
    const room = "exam:9";
    await member(20, C, [room]);
    await member(20, C, [room]);
    await member(21, C, [room]);
    const twentyOneOnA = await member(21, A, [room]);
    const before = [stu(20, 2), stu(21, 2), inv(90), inv(91)];
    for (const w of watchers.slice(0, 2)) await settles(w, room, before);
    for (const w of watchers.slice(0, 2)) {
      for (const user of ["20", "21"]) await waitFor(w, "presence_join", WAIT_MS, (e) => e.room === room && e.payload.userId === user);
    }

    writeFileSync(RESULT_FILE, JSON.stringify({ lost: onVictim.size }));
    const killedAt = Date.now();
    process.kill(VICTIM_PID, "SIGKILL");

    const survivors = watchers.slice(0, 2);
    const within = LEASE_MS + TICK_MS + REFLECTED_MS;
    for (const w of survivors) await settles(w, room, [stu(21), inv(90), inv(91)], 3, { within: within - (Date.now() - killedAt) });
    console.log(`members of the killed gateway left after ${Date.now() - killedAt} ms (lease ${LEASE_MS} ms, tick ${TICK_MS} ms)`);
    // exam:7 loses the victim's watcher and 12; 10 keeps its tab on B.
    for (const w of survivors) await settles(w, "exam:7", [stu(10), inv(90), inv(91)], 3, { within: REFLECTED_MS });

    // One presence_leave per user that had no other connection, on every surviving gateway.
    for (const w of survivors) {
      const left9 = await waitFor(w, "presence_leave", WAIT_MS, (e) => e.room === room);
      assert.deepEqual(left9.payload, { room, userId: "20", role: "STUDENT" });
      const left7 = [
        await waitFor(w, "presence_leave", WAIT_MS, (e) => e.room === "exam:7"),
        await waitFor(w, "presence_leave", WAIT_MS, (e) => e.room === "exam:7"),
      ];
      assert.deepEqual(left7.map((e) => e.payload.userId).sort(), ["12", "92"]);
    }
    for (const w of survivors) await expectNothing(w, "presence_leave");
    assert.ok(twentyOneOnA.connected);
  });
});
