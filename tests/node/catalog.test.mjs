// A gateway started with its own catalog (tests/catalogs/exams.json): a new channel whose
// default room is a template on a payload field. The stock client gets the event on that room;
// the built-in catalog's channels are unknown to this gateway; GET /v1/catalog serves the file.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { closeAll, connectAs, expectNothing, joinOk, publish, publishOk, sample, URL, waitFor } from "./lib.mjs";

after(closeAll);

const paper = (over = {}) => ({
  channel: "exam_room",
  event: "paper_started",
  institutionId: 1,
  payload: { examId: 9, paperCode: "CSC 201", minutes: 120, institutionId: 1, hall: "B", ...over },
});

test("an event of the custom catalog reaches the stock client on its templated room", async () => {
  const { socket } = await connectAs(10, 1);
  await joinOk(socket, "exam:9");
  const other = (await connectAs(11, 1)).socket;
  await joinOk(other, "exam:8");
  const req = paper();
  const out = await publishOk(req);
  assert.deepEqual(out.rooms, [{ room: "exam:9", offset: 1 }]);
  const env = await waitFor(socket, "exam_room");
  assert.equal(env.event, "paper_started");
  assert.equal(env.room, "exam:9");
  assert.equal(env.offset, 1);
  assert.equal(env.id, out.id);
  // Fields the catalog does not know (hall) pass through untouched.
  assert.deepEqual(env.payload, req.payload);
  await expectNothing(other, "exam_room");
});

test("the custom catalog validates its own schemas and only its own channels", async () => {
  const missing = await publish({ ...paper(), payload: { paperCode: "X", minutes: 5, institutionId: 1 } });
  assert.equal(missing.status, 400);
  assert.deepEqual(
    [missing.body.error.code, missing.body.error.field],
    ["invalid_payload", "payload.examId"],
  );
  const bad = await publish({ ...paper({ minutes: 0 }), rooms: ["exam:9"] });
  assert.deepEqual([bad.status, bad.body.error.code, bad.body.error.field], [400, "invalid_payload", "payload.minutes"]);
  const stock = await publish(sample("batch_created", 1));
  assert.equal(stock.status, 400);
  assert.deepEqual([stock.body.error.code, stock.body.error.field], ["unknown_channel", "channel"]);
  assert.match(stock.body.error.message, /known channels are exam_room$/);
});

test("GET /v1/catalog serves the custom catalog with an ETag", async () => {
  const res = await fetch(`${URL}/v1/catalog`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type"), /^application\/json/);
  const etag = res.headers.get("etag");
  assert.match(etag, /^"exams-3-[0-9a-f]{16}"$/);
  const doc = await res.json();
  assert.equal(doc.name, "exams");
  assert.deepEqual(Object.keys(doc.channels), ["exam_room"]);
  assert.equal(doc.channels.exam_room.defaultRoom, "exam:{payload.examId}");
  const again = await fetch(`${URL}/v1/catalog`, { headers: { "if-none-match": etag } });
  assert.equal(again.status, 304);
  assert.equal(again.headers.get("etag"), etag);
  const stale = await fetch(`${URL}/v1/catalog`, { headers: { "if-none-match": '"elms-1-0000000000000000"' } });
  assert.equal(stale.status, 200);
});
