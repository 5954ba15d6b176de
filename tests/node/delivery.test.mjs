// Delivery with the official client over each transport: automatic rooms, tenant isolation,
// every catalog channel, envelopes, offsets and payload fidelity.

import { describe, test, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  TRANSPORTS,
  transportIndex,
  engineTransport,
  assertEnvelope,
  closeAll,
  connectAs,
  expectNothing,
  joinOk,
  publish,
  publishOk,
  request,
  sample,
  waitFor,
} from "./lib.mjs";

afterEach(closeAll);

const CHANNEL_OF = {
  script_submitted: "script_submission",
  batch_created: "batch_update",
  timetable_published: "exam_timetable",
  incident_reported: "incident",
  new_notification: "notification",
};

for (const transport of TRANSPORTS) {
  const as = (sub, tenant, role = "STAFF") => connectAs(sub, tenant, role, { transport });

  describe(`delivery over ${transport}`, () => {
    test("an event to user:10 reaches user 10 only", async () => {
      const { socket: u10 } = await as(10, 1);
      const { socket: u11 } = await as(11, 1);
      const { socket: otherTenantU10 } = await as(10, 2);

      const req = { ...sample("new_notification", 1, { userId: 10 }), rooms: ["user:10"] };
      const res = await publishOk(req);
      assert.deepEqual(res.rooms.map((r) => r.room), ["user:10"]);
      assertEnvelope(await waitFor(u10, "notification"), req, res, "user:10");
      await Promise.all([expectNothing(u11), expectNothing(otherTenantU10), expectNothing(u10, "notification")]);

      // Any channel may address a user room.
      const direct = { ...sample("batch_created", 1), rooms: ["user:11"] };
      const directRes = await publishOk(direct);
      assertEnvelope(await waitFor(u11, "batch_update"), direct, directRes, "user:11");
      await Promise.all([expectNothing(u10), expectNothing(otherTenantU10)]);
    });

    test("the default route reaches every socket of the tenant and none of another", async () => {
      const mine = await Promise.all([as(10, 1), as(11, 1, "ADMIN"), as(12, 1)]);
      // Two sockets of one user count as two recipients.
      mine.push(await as(10, 1));
      const { socket: other } = await as(10, 2);

      const req = sample("script_submitted", 1);
      const res = await publishOk(req);
      assert.deepEqual(res.rooms.map((r) => r.room), ["institution:1"]);
      for (const { socket } of mine) {
        assertEnvelope(await waitFor(socket, "script_submission"), req, res, "institution:1");
      }
      await expectNothing(other);
      for (const { socket } of mine) await expectNothing(socket, "*", 0);
    });

    test("tenant isolation: batch:456 of tenant 1 is not batch:456 of tenant 2", async () => {
      const { socket: t1 } = await as(10, 1);
      const { socket: t2 } = await as(10, 2);
      for (const s of [t1, t2]) {
        await joinOk(s, "batch:456");
      }
      const req = { ...sample("batch_created", 1), rooms: ["batch:456"] };
      const res = await publishOk(req);
      const env = await waitFor(t1, "batch_update");
      assertEnvelope(env, req, res, "batch:456");
      assert.equal(env.payload.institutionId, 1);
      await expectNothing(t2);

      // And the other way round: tenant 2's event to the same room name stays in tenant 2.
      const req2 = { ...sample("batch_created", 2, { batchNumber: "T2-456" }), rooms: ["batch:456"] };
      const res2 = await publishOk(req2);
      assertEnvelope(await waitFor(t2, "batch_update"), req2, res2, "batch:456");
      await expectNothing(t1);
      // Offsets are per tenant's room: tenant 2's event did not advance tenant 1's batch:456.
      const req3 = { ...sample("batch_created", 1, { batchNumber: "T1-again" }), rooms: ["batch:456"] };
      const res3 = await publishOk(req3);
      assert.equal(res3.rooms[0].offset, res.rooms[0].offset + 1);
      assertEnvelope(await waitFor(t1, "batch_update"), req3, res3, "batch:456");
      await expectNothing(t2);
    });

    test("a publisher cannot address another tenant's room or claim another tenant in the payload", async () => {
      const { socket: t2 } = await as(20, 2);
      const crossRoom = await publish({ ...sample("batch_created", 1), rooms: ["institution:2"] });
      assert.equal(crossRoom.status, 400);
      assert.equal(crossRoom.body.code ?? crossRoom.body.error?.code, "tenant_mismatch", JSON.stringify(crossRoom.body));
      const crossPayload = await publish({ ...sample("batch_created", 1), payload: sample("batch_created", 2).payload });
      assert.equal(crossPayload.status, 400);
      assert.equal(crossPayload.body.code ?? crossPayload.body.error?.code, "tenant_mismatch", JSON.stringify(crossPayload.body));
      await expectNothing(t2);
    });

    test("each catalog channel is delivered as its own Socket.IO event with a full envelope", async () => {
      const { socket } = await as(10, 1);
      for (const [event, channel] of Object.entries(CHANNEL_OF)) {
        const req = { ...sample(event, 1), id: `evt-${transport}-${event}` };
        assert.equal(req.channel, channel);
        const res = await publishOk(req);
        assert.equal(res.id, req.id);
        const room = channel === "notification" ? "user:10" : "institution:1";
        const env = await waitFor(socket, channel);
        assertEnvelope(env, req, res, room);
        assert.deepEqual(env.payload, req.payload);
      }
      await expectNothing(socket);
    });

    test("offset grows by exactly one per event in a room", async () => {
      const room = `batch:${900 + transportIndex(transport)}`;
      const { socket } = await as(10, 1);
      const joined = await joinOk(socket, room);
      const results = [];
      for (let i = 0; i < 5; i++) {
        const req = { ...sample("batch_created", 1, { batchNumber: `seq-${i}` }), rooms: [room] };
        results.push([req, await publishOk(req)]);
      }
      const offsets = [];
      for (const [req, res] of results) {
        const env = await waitFor(socket, "batch_update");
        assertEnvelope(env, req, res, room);
        offsets.push(env.offset);
      }
      // The first event is one past the position the join reported; no gaps and no repeats.
      const first = offsets[0];
      assert.equal(first, joined.offset + 1, `first offset ${first} after joining at ${joined.offset}`);
      assert.deepEqual(offsets, [first, first + 1, first + 2, first + 3, first + 4]);
      // An event to two rooms takes the next offset in each; rooms count independently.
      const both = { ...sample("batch_created", 1, { batchNumber: "both" }), rooms: [room, "institution:1"] };
      const res = await publishOk(both);
      const byRoom = Object.fromEntries(res.rooms.map((r) => [r.room, r.offset]));
      assert.equal(byRoom[room], first + 5);
      const a = await waitFor(socket, "batch_update");
      const b = await waitFor(socket, "batch_update");
      assert.deepEqual(
        [a, b].map((e) => [e.room, e.offset, e.id]).sort(),
        [[room, first + 5, res.id], ["institution:1", byRoom["institution:1"], res.id]].sort(),
      );
    });

    test("payload field order and bytes are preserved", async () => {
      const { socket } = await as(10, 1);
      // Keys in an order no serializer would choose, nested values, unicode and escapes.
      const payload = {
        institutionId: 1,
        totalSlots: 40,
        zeta: { z: 1, a: [3, 2, 1], m: null },
        courseCode: "MTH 301",
        batchId: 456,
        examName: "Ünïcödé — \"quoted\" \\ exam",
        createdByName: "Exams & Records",
        batchNumber: "MTH301-B07",
        examId: 31,
        createdBy: 204,
        big: 12345678901234,
        alpha: true,
      };
      const req = { channel: "batch_update", event: "batch_created", institutionId: 1, payload };
      const res = await publishOk(req);
      const env = await waitFor(socket, "batch_update");
      assertEnvelope(env, req, res, "institution:1");
      assert.deepEqual(Object.keys(env.payload), Object.keys(payload));
      assert.equal(JSON.stringify(env.payload), JSON.stringify(payload));

      // Byte for byte: whitespace and number spelling as the publisher wrote them, seen in the
      // raw Socket.IO packet.
      const raw = '{ "institutionId" : 1,\n  "batchId": 457, "batchNumber": "B-1",  "examId": 31, "examName": "x",'
        + ' "courseCode": "C", "totalSlots": 40, "createdBy": 1, "createdByName": "n", "ratio": 1.50, "scale": 2E3,'
        + ' "note": "caf\\u00e9 \\ud83d\\ude00" }';
      const body = `{"channel":"batch_update","event":"batch_created","institutionId":1,"payload":${raw}}`;
      const { status, body: rawRes } = await publish(body);
      assert.equal(status, 200, JSON.stringify(rawRes));
      const rawEnv = await waitFor(socket, "batch_update");
      assert.equal(rawEnv.id, rawRes.id);
      const packet = socket.raw.find((d) => typeof d === "string" && d.includes(rawRes.id));
      assert.ok(packet, "raw packet of the event not seen");
      assert.ok(packet.includes(`"payload":${raw}`), `payload bytes changed in ${JSON.stringify(packet)}`);
    });

    test("a notification without rooms goes to user:<payload.userId> only", async () => {
      const { socket: u10 } = await as(10, 1);
      const { socket: u11 } = await as(11, 1);
      const { socket: u11Other } = await as(11, 2);

      const req = sample("new_notification", 1, { userId: 11, notificationId: "ntf-route" });
      const res = await publishOk(req);
      assert.deepEqual(res.rooms.map((r) => r.room), ["user:11"]);
      assertEnvelope(await waitFor(u11, "notification"), req, res, "user:11");
      await Promise.all([expectNothing(u10), expectNothing(u11Other)]);

      // A string user id routes the same way.
      const strReq = sample("new_notification", 1, { userId: "11", notificationId: "ntf-str" });
      const strRes = await publishOk(strReq);
      assertEnvelope(await waitFor(u11, "notification"), strReq, strRes, "user:11");

      // A notification read event follows the same route.
      const read = {
        channel: "notification",
        event: "notification_read",
        institutionId: 1,
        payload: { notificationId: "ntf-route", userId: 11, readAt: "2026-03-14T09:30:00Z", institutionId: 1 },
      };
      const readRes = await publishOk(read);
      assertEnvelope(await waitFor(u11, "notification"), read, readRes, "user:11");
      await Promise.all([expectNothing(u10), expectNothing(u11Other), expectNothing(u11)]);
    });

    test("the transport stays what was asked for", async () => {
      const { socket } = await as(10, 1);
      await publishOk(sample("batch_created", 1));
      await waitFor(socket, "batch_update");
      assert.equal(socket.io.engine.transport.name, engineTransport(transport));
      assert.equal(socket.io.engine.upgrading ?? false, false);
    });
  });
}
