// The publisher against real processes (started by tests/sdk.rs): a gateway on a real
// redis-server (GATEWAY_URL, REDIS_URL), one with a publish rate of 1/s (LIMITED_URL), one whose
// Redis is unreachable (DOWN_URL). A stock socket.io-client receives what both modes publish.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { io } from "socket.io-client";
import { createClient } from "redis";
import { createPublisher, PublishError } from "@realtime-gateway/publisher";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} must be set (tests/sdk.rs sets it)`);
  return v;
};
const URL = env("GATEWAY_URL");
const KEY = env("PUBLISH_KEY");
const SECRET = env("JWT_SECRET");
const REDIS_URL = env("REDIS_URL");
const WAIT_MS = 5000;

const sockets = [];
const clients = [];
after(async () => {
  for (const s of sockets) s.disconnect();
  for (const c of clients) if (c.isOpen) await c.quit();
});

function token(sub, tenant) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, institutionId: tenant, role: "STAFF", iat: now, exp: now + 3600 })}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

/** A stock client of `sub`@`tenant`, authenticated, that records every event it receives. */
async function client(sub, tenant) {
  const socket = io(URL, { transports: ["websocket"], forceNew: true, reconnection: false, auth: { token: token(sub, tenant) } });
  sockets.push(socket);
  socket.inbox = [];
  socket.onAny((event, arg) => socket.inbox.push({ event, arg }));
  await waitFor(socket, "authenticated");
  return socket;
}

/** The first received `event` whose argument satisfies `pred`, within a deadline. */
function waitFor(socket, event, pred = () => true) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + WAIT_MS;
    const poll = () => {
      const hit = socket.inbox.find((e) => e.event === event && pred(e.arg));
      if (hit) return resolve(hit.arg);
      if (Date.now() > deadline) return reject(new Error(`no ${event} within ${WAIT_MS} ms; got ${JSON.stringify(socket.inbox)}`));
      setTimeout(poll, 10);
    };
    poll();
  });
}

async function joinRoom(socket, room) {
  const ack = await socket.timeout(WAIT_MS).emitWithAck("join", room);
  assert.equal(ack.ok, true, JSON.stringify(ack));
}

const script = (scriptId) => ({
  scriptId,
  batchId: 77,
  studentId: "U2021/CSC/118",
  studentName: "Adaeze Okafor",
  courseCode: "CSC 201",
  courseName: "Data Structures",
  submittedAt: "2026-06-12T11:02:45Z",
  institutionId: 1,
  kiosk: "k-4",
});
const notification = (userId) => ({
  notificationId: `n-${userId}`,
  userId,
  title: "Batch assigned",
  message: "Batch B-14 is ready for marking.",
  kind: "batch_assigned",
  createdAt: "2026-06-13T08:00:01Z",
  institutionId: 1,
});
const incident = { incidentId: 501, resolution: "closed", resolvedBy: 12, resolvedByName: "Exams Officer", resolvedAt: "2026-06-30", institutionId: 1 };

async function redisPublisher(options = {}) {
  const redis = createClient({ url: REDIS_URL, disableOfflineQueue: true });
  clients.push(redis);
  await redis.connect();
  return { redis, publisher: createPublisher({ redis, ...options }) };
}

/** Both modes deliver to the stock client: explicit rooms, default rooms, seed-style names. */
for (const mode of ["http", "redis"]) {
  test(`${mode}: typed emitters deliver to a stock client`, async () => {
    const publisher = mode === "http" ? createPublisher({ url: URL, apiKey: KEY }) : (await redisPublisher()).publisher;
    const sub = mode === "http" ? 41 : 42;
    const socket = await client(sub, 1);
    const room = `batch:${sub}`;
    await joinRoom(socket, room);

    const sent = script(1000 + sub);
    const r1 = await publisher.scriptSubmitted(sent, { rooms: [room] });
    assert.equal(r1.rooms.length, 1);
    assert.equal(r1.rooms[0].room, room);
    const got = await waitFor(socket, "script_submission", (e) => e.id === r1.id);
    assert.deepEqual([got.event, got.room, got.offset], ["script_submitted", room, r1.rooms[0].offset]);
    assert.deepEqual(got.payload, sent);

    // The seed's name and arguments; no rooms: notification's default room, user:<payload.userId>.
    const r2 = await publisher.emitNewNotification(notification(sub));
    assert.equal(r2.rooms[0].room, `user:${sub}`);
    const note = await waitFor(socket, "notification", (e) => e.id === r2.id);
    assert.equal(note.payload.userId, sub);

    // Generic publish; no rooms: the tenant's room.
    const r3 = await publisher.publish({ channel: "incident", event: "incident_resolved", institutionId: 1, payload: incident });
    assert.equal(r3.rooms[0].room, "institution:1");
    await waitFor(socket, "incident", (e) => e.id === r3.id && e.event === "incident_resolved");

    // A batch, published in order.
    const results = await publisher.publishBatch([
      { channel: "script_submission", event: "script_submitted", institutionId: 1, payload: script(1), rooms: [room] },
      { channel: "script_submission", event: "script_submitted", institutionId: 1, payload: script(2), rooms: [room] },
    ]);
    assert.equal(results.length, 2);
    assert.equal(results[1].rooms[0].offset, results[0].rooms[0].offset + 1);
    await waitFor(socket, "script_submission", (e) => e.id === results[1].id && e.payload.scriptId === 2);
  });
}

test("http: the gateway's refusals are typed errors, and are not retried", async () => {
  let retries = 0;
  const publisher = createPublisher({ url: URL, apiKey: KEY, retry: { onRetry: () => retries++ } });
  const bad = { ...script(1) };
  delete bad.studentName;
  await assert.rejects(publisher.scriptSubmitted(bad, { rooms: ["batch:1"] }), (e) => {
    assert.ok(e instanceof PublishError);
    assert.deepEqual([e.code, e.field, e.status, e.attempts], ["invalid_payload", "payload.studentName", 400, 1]);
    assert.equal(e.message, "missing required field");
    return true;
  });
  await assert.rejects(
    publisher.publishBatch([
      { channel: "incident", event: "incident_resolved", institutionId: 1, payload: incident },
      { channel: "incident", event: "incident_resolved", institutionId: 1, payload: { ...incident, resolvedBy: true } },
    ]),
    (e) => e.code === "invalid_payload" && e.field === "[1].payload.resolvedBy" && e.status === 400,
  );
  const wrongKey = createPublisher({ url: URL, apiKey: "not-a-key-0123456789" });
  await assert.rejects(wrongKey.publish({ channel: "incident", event: "incident_resolved", institutionId: 1, payload: incident }), (e) =>
    e.code === "invalid_api_key" && e.status === 403,
  );
  await assert.rejects(publisher.batchCreated({ batchId: 1 }), (e) => e.code === "missing_field" && e.field === "institutionId");
  assert.equal(retries, 0);
});

test("redis: envelope checks happen before Redis, with the gateway's codes", async () => {
  const { publisher } = await redisPublisher();
  const cases = [
    [() => publisher.publish({ channel: "custom_feed", event: "tick", institutionId: 1, payload: {} }), "unknown_channel", "channel"],
    [() => publisher.publish({ channel: "incident", event: "tick", institutionId: 1, payload: {} }), "unknown_event", "event"],
    [() => publisher.incidentResolved({ ...incident, institutionId: 2 }, { institutionId: 1 }), "tenant_mismatch", "payload.institutionId"],
    [() => publisher.incidentResolved(incident, { rooms: ["institution:2"] }), "tenant_mismatch", "rooms[0]"],
    [() => publisher.incidentResolved(incident, { rooms: ["batch 1"] }), "invalid_room", "rooms[0]"],
    [() => publisher.newNotification({ ...notification(1), userId: "" }), "missing_field", "payload.userId"],
  ];
  for (const [call, code, field] of cases) {
    await assert.rejects(call(), (e) => {
      assert.ok(e instanceof PublishError, String(e));
      assert.deepEqual([e.code, e.field], [code, field]);
      return true;
    });
  }
});

test("rate_limited is retried after Retry-After, and only as often as allowed", async () => {
  // The gateway allows 1 event per second: of two events sent at once at least one is refused
  // (whatever the bucket held before), so these hold however slow the machine is.
  const limited = env("LIMITED_URL");
  const waits = [];
  const publisher = createPublisher({ url: limited, apiKey: KEY, retry: { retries: 3, onRetry: (e, n, ms) => waits.push([e.code, ms]) } });
  const started = Date.now();
  const both = await Promise.all([publisher.incidentResolved(incident), publisher.incidentResolved(incident)]);
  assert.equal(new Set(both.map((r) => r.id)).size, 2, "both were published in the end");
  assert.ok(waits.length >= 1, "a refused publish was retried");
  for (const [code, ms] of waits) {
    assert.equal(code, "rate_limited");
    assert.ok(ms >= 1000, `waited at least Retry-After (1 s), not ${ms} ms`);
  }
  assert.ok(Date.now() - started >= 1000);

  const once = createPublisher({ url: limited, apiKey: KEY, retry: { retries: 0 } });
  const settled = await Promise.allSettled([once.incidentResolved(incident), once.incidentResolved(incident)]);
  const refused = settled.filter((s) => s.status === "rejected").map((s) => s.reason);
  assert.ok(refused.length >= 1, "one of two events at once is over the rate");
  for (const e of refused) {
    assert.deepEqual([e.code, e.status, e.attempts], ["rate_limited", 429, 1]);
    assert.ok(e.retryAfterMs >= 1000);
  }
});

test("bus_unavailable is retried with backoff and the retries stop", async () => {
  const retried = [];
  const publisher = createPublisher({
    url: env("DOWN_URL"),
    apiKey: KEY,
    retry: { retries: 2, baseDelayMs: 20, onRetry: (e, n) => retried.push([e.code, n]) },
  });
  await assert.rejects(publisher.incidentResolved(incident), (e) => {
    assert.deepEqual([e.code, e.status, e.attempts], ["bus_unavailable", 503, 3]);
    return true;
  });
  assert.deepEqual(retried, [["bus_unavailable", 1], ["bus_unavailable", 2]]);

  // Redis mode: a client that lost its connection fails fast, is retried, and gives up.
  const redisRetried = [];
  const { redis, publisher: direct } = await redisPublisher({ retry: { retries: 2, baseDelayMs: 20, onRetry: (e) => redisRetried.push(e.code) } });
  await redis.disconnect();
  await assert.rejects(direct.incidentResolved(incident), (e) => {
    assert.deepEqual([e.code, e.status, e.attempts], ["bus_unavailable", 0, 3]);
    return true;
  });
  assert.deepEqual(redisRetried, ["bus_unavailable", "bus_unavailable"]);
});

test("a wrong payload field is a compile error (tsc)", () => {
  const here = dirname(fileURLToPath(import.meta.url));
  const tsc = join(here, "../../node_modules/typescript/bin/tsc");
  const dir = mkdtempSync(join(tmpdir(), "rtg-tsc-"));
  const check = (fixture) => {
    const config = join(dir, `${fixture}.json`);
    writeFileSync(config, JSON.stringify({ extends: join(here, "fixtures/tsconfig.json"), files: [join(here, "fixtures", `${fixture}.ts`)] }));
    return spawnSync(process.execPath, [tsc, "-p", config], { encoding: "utf8" });
  };
  const ok = check("typed");
  assert.equal(ok.status, 0, ok.stdout + ok.stderr);
  const field = check("wrong-field");
  assert.notEqual(field.status, 0, "tsc accepted a misspelled payload field");
  assert.match(field.stdout, /wrong-field\.ts\(11,3\): error TS2561: .*'studentNmae' does not exist in type 'ScriptSubmittedPayload'/);
  const event = check("wrong-event");
  assert.notEqual(event.status, 0, "tsc accepted an event of another channel");
  assert.match(event.stdout, /wrong-event\.ts\(8,3\): error TS2322: Type '"incident_resolved"' is not assignable/);
});
