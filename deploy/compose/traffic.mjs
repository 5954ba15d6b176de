// Demo traffic for the compose stack, so the dashboard has something to show:
//
//  - simulated browsers: CLIENTS WebSocket clients spread over the gateways in CLIENT_URLS,
//    each authenticated with a token signed with JWT_SECRET, joining a few batch, timetable
//    and incident rooms, answering pings; every few seconds one of them drops its connection
//    and comes back with its last position (`since`), so reconnects and recoveries show up;
//  - a backend: every INTERVAL_MS it publishes one to three realistic catalog events through
//    POST /v1/publish on PUBLISH_URL (through the load balancer), and now and then a request
//    the gateway refuses (a payload missing a field) and a client with an expired token, so
//    the error panels are not empty either. Both stay far below the alert thresholds.
//
// Node's standard library only (global WebSocket and fetch: Node 22+, or Node 20 started with
// --experimental-websocket). No npm install. Settings come from the environment:
//
//   CLIENT_URLS      gateways the clients connect to, comma or space separated
//                    (default http://127.0.0.1:3000). Directly, not through nginx: nginx
//                    hashes the client address, and every simulated client shares this
//                    container's address, so through nginx they would all land on one gateway.
//   PUBLISH_URL      where events are published (default: the first CLIENT_URLS entry)
//   JWT_SECRET       the gateways' HS256 secret (required)
//   PUBLISH_API_KEY  one of the gateways' PUBLISH_API_KEYS (required)
//   CLIENTS          simulated browsers (default 24)
//   TENANTS          institutions 1..TENANTS (default 2)
//   INTERVAL_MS      time between publish rounds (default 1000)
//   CHURN_MS         time between simulated connection drops, 0 for none (default 5000)
//   ERROR_EVERY      one refused publish every this many rounds, 0 for none (default 20)
//   STALE_MS         time between clients with an expired token, 0 for none (default 45000)
//   DURATION_S       stop after this many seconds (default: run until SIGTERM)

import { createHmac, randomUUID } from "node:crypto";

const env = (name, fallback) => {
  const v = process.env[name];
  return v === undefined || v === "" ? fallback : v;
};
const required = (name) => {
  const v = env(name);
  if (v === undefined) {
    console.error(`traffic: set ${name}`);
    process.exit(2);
  }
  return v;
};
const int = (name, fallback) => {
  const n = Number.parseInt(env(name, String(fallback)), 10);
  if (!Number.isFinite(n) || n < 0) {
    console.error(`traffic: ${name} must be a non-negative integer`);
    process.exit(2);
  }
  return n;
};

if (typeof WebSocket !== "function" || typeof fetch !== "function") {
  console.error("traffic: needs global WebSocket and fetch (Node 22+, or Node 20 with --experimental-websocket)");
  process.exit(2);
}

const CLIENT_URLS = env("CLIENT_URLS", "http://127.0.0.1:3000").split(/[\s,]+/).filter(Boolean);
const PUBLISH_URL = env("PUBLISH_URL", CLIENT_URLS[0]).replace(/\/+$/, "");
const JWT_SECRET = required("JWT_SECRET");
const PUBLISH_API_KEY = required("PUBLISH_API_KEY");
const CLIENTS = int("CLIENTS", 24);
const TENANTS = Math.max(1, int("TENANTS", 2));
const INTERVAL_MS = Math.max(50, int("INTERVAL_MS", 1000));
const CHURN_MS = int("CHURN_MS", 5000);
const ERROR_EVERY = int("ERROR_EVERY", 20);
const STALE_MS = int("STALE_MS", 45000);
const DURATION_S = int("DURATION_S", 0);

const BATCHES = [101, 102, 103, 104, 105, 106];
const COURSES = [
  ["CSC 201", "Data Structures"],
  ["MTH 102", "Calculus II"],
  ["PHY 111", "Mechanics"],
  ["CHM 101", "General Chemistry"],
];
const STUDENTS = ["Adaeze Okafor", "Tunde Bakare", "Ngozi Eze", "Ibrahim Musa", "Chiamaka Obi", "Seun Ade"];
const STAFF = [
  [55, "Mr. Bello"],
  [61, "Dr. Musa"],
  [12, "Exams Officer"],
  [70, "Mrs. Eze"],
];
const ROLES = ["STUDENT", "STUDENT", "STUDENT", "INVIGILATOR", "ADMIN"];

const stats = {
  connected: 0,
  connects: 0,
  refused: 0,
  received: 0,
  recovered: 0,
  published: 0,
  publishErrors: 0,
  publishFailures: 0,
};
let stopping = false;

const pick = (list) => list[Math.floor(Math.random() * list.length)];
const isoNow = () => new Date().toISOString().replace(/\.\d{3}Z$/, "Z");
const b64url = (data) => Buffer.from(data).toString("base64url");

function token(sub, institutionId, role, ttlSeconds) {
  const now = Math.floor(Date.now() / 1000);
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const claims = b64url(JSON.stringify({ sub, institutionId, role, iat: now, exp: now + ttlSeconds }));
  const signature = createHmac("sha256", JWT_SECRET).update(`${header}.${claims}`).digest("base64url");
  return `${header}.${claims}.${signature}`;
}

function wsUrl(base) {
  return `${base.replace(/\/+$/, "").replace(/^http/, "ws")}/socket.io/?EIO=4&transport=websocket`;
}

// One simulated browser: Engine.IO v4 / Socket.IO v4 over WebSocket, by hand.
class Browser {
  constructor(n) {
    this.n = n;
    this.url = CLIENT_URLS[n % CLIENT_URLS.length];
    this.sub = String(1000 + n);
    this.tenant = 1 + (n % TENANTS);
    this.role = ROLES[n % ROLES.length];
    this.rooms = [`batch:${BATCHES[n % BATCHES.length]}`, `batch:${BATCHES[(n + 2) % BATCHES.length]}`, "timetable:1"];
    if (this.role !== "STUDENT") this.rooms.push("incident:1");
    this.positions = new Map(); // room -> { epoch, offset }
    this.acks = new Map();
    this.nextAck = 1;
    this.ws = null;
    this.up = false;
  }

  connect() {
    if (stopping) return;
    const ws = new WebSocket(wsUrl(this.url));
    this.ws = ws;
    ws.onmessage = (m) => this.onPacket(String(m.data));
    ws.onerror = () => {};
    ws.onclose = () => {
      if (this.up) stats.connected -= 1;
      this.up = false;
      this.acks.clear();
      if (this.ws === ws && !stopping) setTimeout(() => this.connect(), 1000 + Math.random() * 2000);
    };
  }

  send(text) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(text);
  }

  request(name, data) {
    const id = this.nextAck++;
    return new Promise((resolve) => {
      this.acks.set(id, resolve);
      this.send(`42${id}${JSON.stringify([name, data])}`);
      setTimeout(() => this.acks.delete(id) && resolve(null), 10000);
    });
  }

  onPacket(p) {
    if (p === "2") return this.send("3"); // Engine.IO ping -> pong
    if (p.startsWith("0")) return this.send(`40${JSON.stringify({ token: token(this.sub, this.tenant, this.role, 3600) })}`);
    if (p.startsWith("40")) {
      this.up = true;
      stats.connected += 1;
      stats.connects += 1;
      return;
    }
    if (p.startsWith("44")) {
      stats.refused += 1;
      return;
    }
    if (p.startsWith("43")) {
      const digits = p.slice(2).match(/^\d+/)?.[0] ?? "";
      const args = JSON.parse(p.slice(2 + digits.length) || "[]");
      const done = this.acks.get(Number(digits));
      this.acks.delete(Number(digits));
      if (done) done(args[0]);
      return;
    }
    if (p.startsWith("42")) {
      const [name, data] = JSON.parse(p.slice(p.indexOf("[")));
      if (name === "authenticated") return void this.joinRooms();
      if (name === "resync" && data?.room) return void this.positions.delete(data.room);
      if (data && typeof data.offset === "number" && data.room) {
        stats.received += 1;
        const at = this.positions.get(data.room);
        if (at) at.offset = Math.max(at.offset, data.offset);
      }
    }
  }

  async joinRooms() {
    for (const room of this.rooms) {
      const since = this.positions.get(room);
      const ack = await this.request("join", since ? { room, since } : { room });
      if (!ack || ack.ok !== true) continue;
      if (ack.recovered === true) stats.recovered += 1;
      if (ack.epoch && typeof ack.offset === "number") this.positions.set(room, { epoch: ack.epoch, offset: ack.offset });
    }
  }

  drop() {
    // Like a browser losing its network: the transport closes; the client comes back later.
    if (this.ws) this.ws.close();
  }

  stop() {
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close();
  }
}

// A browser whose token has expired: the handshake is refused (auth failure on the dashboard).
function staleBrowser() {
  const ws = new WebSocket(wsUrl(pick(CLIENT_URLS)));
  ws.onerror = () => {};
  ws.onmessage = (m) => {
    const p = String(m.data);
    if (p.startsWith("0")) ws.send(`40${JSON.stringify({ token: token("999", 1, "STUDENT", -600) })}`);
    else if (p.startsWith("44")) {
      stats.refused += 1;
      ws.close();
    }
  };
  setTimeout(() => ws.close(), 5000);
}

// ---- the backend: realistic catalog events -------------------------------------------------

let seq = 0;
const counters = new Map();
function nextCount(key, max) {
  const n = ((counters.get(key) ?? 0) + 1) % (max + 1);
  counters.set(key, n);
  return n;
}

function randomEvent() {
  seq += 1;
  const institutionId = 1 + (seq % TENANTS);
  const batchId = pick(BATCHES);
  const [courseCode, courseName] = pick(COURSES);
  const [staffId, staffName] = pick(STAFF);
  const scriptId = 5000 + seq;
  const studentId = `U2024/${courseCode.replace(" ", "")}/${100 + (seq % 60)}`;
  const room = [`batch:${batchId}`];
  const kinds = [
    () => ({ channel: "script_submission", event: "script_submitted", rooms: room,
      payload: { scriptId, batchId, studentId, studentName: pick(STUDENTS), courseCode, courseName, submittedAt: isoNow() } }),
    () => ({ channel: "script_submission", event: "script_verified", rooms: room,
      payload: { scriptId, batchId, studentId, verifiedBy: staffId, verifiedByName: staffName, verifiedAt: isoNow(), remarks: "Cover page signed" } }),
    () => ({ channel: "script_submission", event: "script_collected", rooms: room,
      payload: { scriptId, batchId, studentId, collectedBy: staffId, collectedByName: staffName, collectedAt: isoNow() } }),
    () => ({ channel: "script_submission", event: "script_graded", rooms: room,
      payload: { scriptId, batchId, studentId, courseCode, gradedBy: staffId, gradedByName: staffName,
        score: Math.round(Math.random() * 1000) / 10, maxScore: 100, gradedAt: isoNow() } }),
    () => ({ channel: "batch_update", event: "batch_stats_updated", rooms: room,
      payload: { batchId, totalSlots: 50, submittedCount: nextCount(`s${batchId}`, 50), verifiedCount: nextCount(`v${batchId}`, 48),
        collectedCount: nextCount(`c${batchId}`, 46), gradedCount: nextCount(`g${batchId}`, 40), updatedAt: isoNow() } }),
    () => ({ channel: "batch_update", event: "batch_status_changed", rooms: room,
      payload: { batchId, batchNumber: `B-2026-${batchId}`, previousStatus: "sealed", status: "in_marking",
        changedBy: staffId, changedByName: staffName, changedAt: isoNow() } }),
    // No rooms: the channel's default route, institution:<institutionId>.
    () => ({ channel: "batch_update", event: "batch_created",
      payload: { batchId: 200 + (seq % 50), batchNumber: `B-2026-${200 + (seq % 50)}`, examId: 9, examName: "First Semester Examinations",
        courseCode, totalSlots: 50, createdBy: 12, createdByName: "Exams Officer" } }),
    () => ({ channel: "exam_timetable", event: "timetable_updated", rooms: ["timetable:1"],
      payload: { timetableId: 1, examId: 9, version: 1 + (seq % 20), changeSummary: `${courseCode} moved to Hall ${pick(["A", "B", "C"])}`,
        courseCode, updatedBy: 12, updatedByName: "Exams Officer", updatedAt: isoNow() } }),
    () => ({ channel: "incident", event: "incident_reported", rooms: ["incident:1"],
      payload: { incidentId: 500 + seq, examId: 9, category: pick(["malpractice", "disruption", "late_arrival"]),
        severity: pick(["low", "medium", "high"]), description: "Reported by the hall invigilator", venue: "Hall B",
        reportedBy: 55, reportedByName: "Mr. Bello", reportedAt: isoNow() } }),
    // Default route of notification: user:<payload.userId>, one of the simulated browsers.
    () => ({ channel: "notification", event: "new_notification",
      payload: { notificationId: `ntf_${seq}`, userId: 1000 + (seq % Math.max(CLIENTS, 1)), title: "Batch assigned",
        message: `Batch B-2026-${batchId} (${courseCode}) is ready for marking.`, kind: "batch_assigned",
        link: `/marking/batches/${batchId}`, createdAt: isoNow() } }),
  ];
  const e = pick(kinds)();
  if (e.channel === "notification") e.institutionId = 1 + ((Number(e.payload.userId) - 1000) % TENANTS);
  else e.institutionId = institutionId;
  e.payload.institutionId = e.institutionId;
  return e;
}

async function publish(body) {
  try {
    const r = await fetch(`${PUBLISH_URL}/v1/publish`, {
      method: "POST",
      headers: { authorization: `Bearer ${PUBLISH_API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(5000),
    });
    await r.text();
    if (r.ok) stats.published += 1;
    else stats.publishErrors += 1;
  } catch {
    stats.publishFailures += 1;
  }
}

async function publishRound(round) {
  const n = 1 + Math.floor(Math.random() * 3);
  await Promise.all(Array.from({ length: n }, () => publish(randomEvent())));
  // Now and then a request the gateway refuses: a payload without its required `batchId`.
  if (ERROR_EVERY > 0 && round % ERROR_EVERY === Math.floor(ERROR_EVERY / 2)) {
    const broken = randomEvent();
    broken.channel = "batch_update";
    broken.event = "batch_stats_updated";
    broken.payload = { totalSlots: 50, updatedAt: isoNow(), institutionId: broken.institutionId };
    await publish(broken);
  }
}

// ---- main ------------------------------------------------------------------------------------

const browsers = Array.from({ length: CLIENTS }, (_, n) => new Browser(n));
browsers.forEach((b, n) => setTimeout(() => b.connect(), n * 50));

const timers = [];
let round = 0;
timers.push(setInterval(() => void publishRound(round++), INTERVAL_MS));
if (CHURN_MS > 0 && CLIENTS > 0) timers.push(setInterval(() => pick(browsers).drop(), CHURN_MS));
if (STALE_MS > 0) timers.push(setInterval(staleBrowser, STALE_MS));
timers.push(setInterval(() => console.log(`traffic ${JSON.stringify(stats)}`), 10000));

function stop() {
  if (stopping) return;
  stopping = true;
  timers.forEach(clearInterval);
  browsers.forEach((b) => b.stop());
  console.log(`traffic stopped ${JSON.stringify(stats)}`);
  setTimeout(() => process.exit(0), 200);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
if (DURATION_S > 0) setTimeout(stop, DURATION_S * 1000);

console.log(`traffic: ${CLIENTS} clients on ${CLIENT_URLS.join(", ")}; publishing to ${PUBLISH_URL} every ${INTERVAL_MS} ms`);
