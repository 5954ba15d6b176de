// Shared helpers of the Node interop tests: token minting, connecting the official
// socket.io-client, publishing over HTTP, and bounded waits (positive and negative).
//
// Every socket made here records what it receives in an inbox, from before it connects, so a
// test can never miss an event that arrived before it started waiting for it. Every wait has a
// deadline; absence is asserted over a bounded window.

import { createHmac } from "node:crypto";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import * as msgpackParser from "socket.io-msgpack-parser";

function required(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} must be set (the Rust test node_interop sets it)`);
  return v;
}

/** Base URL of the gateway under test, e.g. http://127.0.0.1:40123. */
export const URL = required("GATEWAY_URL");
/** Base URL of the gateway's admin listener (`/metrics`). */
export const ADMIN_URL = required("ADMIN_URL");
/** HS256 secret the gateway verifies tokens with. */
export const SECRET = required("JWT_SECRET");
/** Publish API key of the gateway. */
export const KEY = required("PUBLISH_KEY");

/** A string setting passed by the Rust test (e.g. the URL of a second gateway). */
export const envString = required;

/** A positive integer setting passed by the Rust test (e.g. the gateway's configured limits). */
export function envInt(name) {
  const n = Number(required(name));
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${name} must be a positive integer`);
  return n;
}

/** Deadline for anything that should happen. */
export const WAIT_MS = 5000;
/** Window in which something that should not happen must stay absent. */
export const QUIET_MS = 400;
/**
 * The client configurations every parameterised test runs under: "websocket" and "polling"
 * (that transport only, never upgrading), and "default" (the client's default options: polling
 * first, then the upgrade to WebSocket; `connect` resolves once the session has upgraded).
 */
export const TRANSPORTS = ["websocket", "polling", "default"];

/** The engine transport a session of configuration `transport` runs on once connected. */
export const engineTransport = (transport) => (transport === "default" ? "websocket" : transport);

/** The client options of configuration `transport` (see `TRANSPORTS`). */
export function transportOptions(transport) {
  if (transport === "default") return {};
  if (transport === "websocket" || transport === "polling") return { transports: [transport], upgrade: false };
  throw new Error(`unknown transport ${transport}`);
}

/** A number of its own per configuration (rooms and users of parallel scenarios never meet). */
export const transportIndex = (transport) => {
  const i = TRANSPORTS.indexOf(transport);
  if (i < 0) throw new Error(`unknown transport ${transport}`);
  return i;
};

/**
 * Resolves once `socket`'s engine runs on WebSocket (at once if it already does); rejects at
 * the deadline or on a failed upgrade.
 */
export function upgraded(socket, timeoutMs = WAIT_MS) {
  const engine = socket.io.engine;
  if (engine?.transport?.name === "websocket") return Promise.resolve();
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      engine.off("upgrade", onUpgrade);
      engine.off("upgradeError", onError);
    };
    const onUpgrade = () => {
      done();
      resolve();
    };
    const onError = (err) => {
      done();
      reject(new Error(`the upgrade to websocket failed: ${err?.message ?? err}`));
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`no upgrade to websocket within ${timeoutMs} ms (transport: ${engine.transport?.name})`));
    }, timeoutMs);
    engine.on("upgrade", onUpgrade);
    engine.on("upgradeError", onError);
  });
}

/**
 * Asserts that `socket` runs on the transport of configuration `transport`, waiting for the
 * upgrade (with a deadline) under "default".
 */
export async function assertTransport(socket, transport) {
  if (transport === "default") await upgraded(socket);
  assert.equal(socket.io.engine.transport.name, engineTransport(transport), `transport of ${transport}`);
}

// ---------------------------------------------------------------------------------------------
// Tokens

const b64url = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");
const HASH = { HS256: "sha256", HS384: "sha384", HS512: "sha512" };

/** Seconds since the Unix epoch. */
export const nowSecs = () => Math.floor(Date.now() / 1000);

/**
 * Signs `claims` as a JWT. `alg: "none"` gives an unsigned token (empty signature part); any
 * HS* algorithm is signed with `secret` using node's HMAC.
 */
export function sign(claims, { secret = SECRET, alg = "HS256", header = {} } = {}) {
  const input = `${b64url({ alg, typ: "JWT", ...header })}.${b64url(claims)}`;
  if (alg === "none") return `${input}.`;
  const hash = HASH[alg];
  if (!hash) throw new Error(`cannot sign with ${alg}`);
  return `${input}.${createHmac(hash, secret).update(input).digest("base64url")}`;
}

/** The claims of a normal token; `extra` adds or overrides claims, `omit` removes some. */
export function claims(sub, tenant, role = "STAFF", { ttl = 3600, extra = {}, omit = [] } = {}) {
  const c = { sub, institutionId: tenant, role, exp: nowSecs() + ttl, ...extra };
  for (const k of omit) delete c[k];
  return c;
}

/** A valid HS256 token for `sub` of `tenant` (options as for `claims`, plus `secret`, `alg`). */
export function token(sub, tenant, role = "STAFF", opts = {}) {
  return sign(claims(sub, tenant, role, opts), { secret: opts.secret, alg: opts.alg });
}

/** Deliberately broken tokens, each paired with the code the gateway must answer with. */
export function brokenTokens(sub = 10, tenant = 1) {
  const good = claims(sub, tenant, "STAFF");
  return [
    { name: "not a JWT", token: "not-a-jwt", code: "token_malformed" },
    { name: "empty string", token: "", code: "token_malformed" },
    { name: "bad base64 header", token: "%%%.e30.sig", code: "token_malformed" },
    { name: "alg none", token: sign(good, { alg: "none" }), code: "token_algorithm_not_allowed" },
    { name: "alg HS512", token: sign(good, { alg: "HS512" }), code: "token_algorithm_not_allowed" },
    {
      name: "wrong secret",
      token: sign(good, { secret: `${SECRET}-not` }),
      code: "token_invalid_signature",
    },
    {
      name: "signature of other claims",
      // A valid signature, moved onto a payload that claims another tenant.
      token: (() => {
        const [h, , s] = token(sub, tenant).split(".");
        return `${h}.${b64url(claims(sub, 2, "ADMIN"))}.${s}`;
      })(),
      code: "token_invalid_signature",
    },
    { name: "expired", token: token(sub, tenant, "STAFF", { ttl: -60 }), code: "token_expired" },
    {
      name: "nbf in the future",
      token: token(sub, tenant, "STAFF", { extra: { nbf: nowSecs() + 600 } }),
      code: "token_not_yet_valid",
    },
    {
      name: "no institutionId",
      token: token(sub, tenant, "STAFF", { omit: ["institutionId"] }),
      code: "token_claim_missing",
    },
    { name: "no sub", token: token(sub, tenant, "STAFF", { omit: ["sub"] }), code: "token_claim_missing" },
    { name: "no role", token: token(sub, tenant, "STAFF", { omit: ["role"] }), code: "token_claim_missing" },
    { name: "no exp", token: token(sub, tenant, "STAFF", { omit: ["exp"] }), code: "token_claim_missing" },
    {
      name: "fractional sub",
      token: token(sub, tenant, "STAFF", { extra: { sub: 1.5 } }),
      code: "token_claim_invalid",
    },
    {
      name: "tenant with a slash",
      token: token(sub, tenant, "STAFF", { extra: { institutionId: "1/batch:1" } }),
      code: "token_claim_invalid",
    },
    { name: "empty role", token: token(sub, tenant, ""), code: "token_claim_invalid" },
  ];
}

// ---------------------------------------------------------------------------------------------
// Sockets

const open = new Set();
const LIFECYCLE = new Set(["connect", "disconnect", "connect_error"]);

/**
 * Registers a socket made outside `connect` (e.g. one with reconnection enabled) with the
 * helpers: `closeAll` closes it, and it gets an inbox. Call before it connects.
 */
export function track(socket) {
  open.add(socket);
  inbox(socket);
}

function inbox(socket) {
  socket.inbox = []; // { event, args, at, taken }
  socket.waiters = new Set();
  socket.raw = []; // raw Engine.IO message strings, as the server wrote them
  const push = (event, args) => {
    const entry = { event, args, at: Date.now(), taken: false };
    socket.inbox.push(entry);
    for (const w of socket.waiters) {
      if (!entry.taken && w.match(entry)) w.hit(entry);
    }
  };
  socket.onAny((event, ...args) => push(event, args));
  for (const ev of LIFECYCLE) socket.on(ev, (...args) => push(ev, args));
}

/**
 * Client options for `parser`: "json" (the default parser) or "msgpack" (the stock
 * socket.io-msgpack-parser, announced to the gateway with `parser=msgpack` in the query).
 */
export function parserOptions(parser = "json") {
  if (parser === "json") return {};
  if (parser === "msgpack") return { parser: msgpackParser, query: { parser: "msgpack" } };
  throw new Error(`unknown parser ${parser}`);
}

/**
 * Connects the official client. Options: `token` (sent as `auth: { token }`), or `auth` (sent
 * as given; neither: no auth at all), `transport` (one of `TRANSPORTS`), `url` (another gateway
 * than GATEWAY_URL), `parser` ("json" or "msgpack").
 * Resolves `{ socket }` once connected (under "default": and upgraded to WebSocket) or
 * `{ error }` (the `connect_error`), within a deadline.
 */
export async function connect({
  token,
  auth,
  transport = "websocket",
  timeoutMs = WAIT_MS,
  url = URL,
  parser = "json",
} = {}) {
  const opts = {
    ...transportOptions(transport),
    forceNew: true,
    reconnection: false,
    autoConnect: false,
    timeout: timeoutMs,
    ...parserOptions(parser),
  };
  if (auth !== undefined) opts.auth = auth;
  else if (token !== undefined) opts.auth = { token };
  const socket = io(url, opts);
  track(socket);
  socket.connect();
  socket.io.engine.on("data", (d) => socket.raw.push(d));
  const entry = await next(socket, (e) => e.event === "connect" || e.event === "connect_error", timeoutMs, "connect");
  if (entry.event === "connect_error") {
    close(socket);
    return { error: entry.args[0] };
  }
  if (transport === "default") await upgraded(socket, timeoutMs);
  return { socket };
}

/** Connects with `token` and expects the handshake to be refused; returns the error message. */
export async function refusedCode(token, transport = "websocket") {
  const { socket, error } = await connect({ token, transport });
  assert.equal(socket, undefined, "the gateway accepted a token it should have refused");
  return error.message;
}

/**
 * Connects `sub` of `tenant` with a fresh token and waits for `authenticated`; checks the
 * identity it reports. Returns `{ socket, auth, token }`.
 */
export async function connectAs(
  sub,
  tenant,
  role = "STAFF",
  { transport = "websocket", ttl = 3600, url = URL, parser = "json", since } = {},
) {
  const tok = token(sub, tenant, role, { ttl });
  const handshake = since === undefined ? { token: tok } : { token: tok, since };
  const { socket, error } = await connect({ auth: handshake, transport, url, parser });
  assert.ok(socket, `connect as ${sub}@${tenant} failed: ${error?.message}`);
  const auth = await waitFor(socket, "authenticated");
  assert.equal(auth.userId, String(sub));
  assert.equal(auth.institutionId, String(tenant));
  const auto = [`institution:${tenant}`, `user:${sub}`];
  if (since === undefined) assertPositions(auth.rooms, auto);
  else assert.deepEqual(auth.rooms.map((r) => r.room), auto);
  assert.equal(socket.io.engine.transport.name, engineTransport(transport), "connected over the wrong transport");
  return { socket, auth, token: tok };
}

/** Closes a socket (and its manager). */
export function close(socket) {
  open.delete(socket);
  for (const w of socket.waiters ?? []) w.fail(new Error("socket closed while waiting"));
  socket.disconnect();
  socket.io?.engine?.close();
}

/** Closes every socket the helpers opened (call from afterEach). */
export function closeAll() {
  for (const s of [...open]) close(s);
}

function next(socket, match, timeoutMs, what) {
  const found = socket.inbox.find((e) => !e.taken && match(e));
  if (found) {
    found.taken = true;
    return Promise.resolve(found);
  }
  return new Promise((resolve, reject) => {
    const w = {
      match,
      hit(entry) {
        entry.taken = true;
        done();
        resolve(entry);
      },
      fail(err) {
        done();
        reject(err);
      },
    };
    const timer = setTimeout(() => {
      const seen = socket.inbox.map((e) => e.event).join(", ") || "nothing";
      w.fail(new Error(`no ${what} within ${timeoutMs} ms (received: ${seen})`));
    }, timeoutMs);
    const done = () => {
      clearTimeout(timer);
      socket.waiters.delete(w);
    };
    socket.waiters.add(w);
  });
}

/**
 * Waits for the next not yet consumed `event` (optionally one for which `pred(arg)` holds) and
 * returns its first argument; rejects after `timeoutMs`.
 */
export async function waitFor(socket, event, timeoutMs = WAIT_MS, pred = () => true) {
  const entry = await next(socket, (e) => e.event === event && pred(e.args[0]), timeoutMs, `"${event}"`);
  return entry.args[0];
}

/** Like `waitFor` but also returns when the event arrived (ms since the epoch). */
export async function waitForTimed(socket, event, timeoutMs = WAIT_MS) {
  const entry = await next(socket, (e) => e.event === event, timeoutMs, `"${event}"`);
  return { data: entry.args[0], at: entry.at };
}

/**
 * Asserts that no `event` (a name, a list of names, or "*" for any non-lifecycle event)
 * arrives within `ms`, counting anything already received and not consumed. Fails as soon as
 * one arrives.
 */
export function expectNothing(socket, event = "*", ms = QUIET_MS) {
  const names = event === "*" ? null : new Set([event].flat());
  const match = (e) => (names ? names.has(e.event) : !LIFECYCLE.has(e.event));
  const describe = (e) => `${e.event} ${JSON.stringify(e.args[0])}`;
  const already = socket.inbox.find((e) => !e.taken && match(e));
  if (already) return Promise.reject(new assert.AssertionError({ message: `unexpected ${describe(already)}` }));
  return new Promise((resolve, reject) => {
    const w = {
      match,
      hit(entry) {
        done();
        reject(new assert.AssertionError({ message: `unexpected ${describe(entry)} within ${ms} ms` }));
      },
      fail(err) {
        done();
        reject(err);
      },
    };
    const timer = setTimeout(() => {
      done();
      resolve();
    }, ms);
    const done = () => {
      clearTimeout(timer);
      socket.waiters.delete(w);
    };
    socket.waiters.add(w);
  });
}

/**
 * Marks everything `socket` received so far as consumed, so that `expectNothing` and `waitFor`
 * look only at what comes next.
 */
export function consumeAll(socket) {
  for (const e of socket.inbox) e.taken = true;
}

/**
 * Waits until `cond()` holds, checking it now and again whenever the socket receives anything;
 * rejects with `what` after `timeoutMs`. Consumes nothing.
 */
export function waitUntil(socket, cond, timeoutMs = WAIT_MS, what = "the condition") {
  if (cond()) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const w = {
      // Never matches, so it consumes nothing; it only looks at each new entry.
      match() {
        if (cond()) {
          done();
          resolve();
        }
        return false;
      },
      hit() {},
      fail(err) {
        done();
        reject(err);
      },
    };
    const timer = setTimeout(() => w.fail(new Error(`${what} did not come within ${timeoutMs} ms`)), timeoutMs);
    const done = () => {
      clearTimeout(timer);
      socket.waiters.delete(w);
    };
    socket.waiters.add(w);
  });
}

/** Emits `event` with `arg` and waits (with a deadline) for the ack. */
export function request(socket, event, arg, timeoutMs = WAIT_MS) {
  return arg === undefined
    ? socket.timeout(timeoutMs).emitWithAck(event)
    : socket.timeout(timeoutMs).emitWithAck(event, arg);
}

// ---------------------------------------------------------------------------------------------
// Room positions: `authenticated.rooms` entries and join acks, `{ room, epoch, offset }`

/** Checks one position of `room`: a non-empty string epoch and an integer offset >= 0. */
export function assertPosition(entry, room) {
  assert.equal(entry?.room, room, `position of ${room}: ${JSON.stringify(entry)}`);
  assert.equal(typeof entry.epoch, "string", `epoch of ${room}: ${JSON.stringify(entry)}`);
  assert.ok(entry.epoch.length > 0, `empty epoch of ${room}`);
  assert.ok(Number.isInteger(entry.offset) && entry.offset >= 0, `offset of ${room}: ${JSON.stringify(entry)}`);
}

/**
 * Checks that `rooms` (as in `authenticated.rooms` without recovery) is exactly the plain
 * positions `{ room, epoch, offset }` of `names`, in order; returns `{ [room]: { epoch, offset } }`.
 */
export function assertPositions(rooms, names) {
  assert.ok(Array.isArray(rooms), `rooms is not a list: ${JSON.stringify(rooms)}`);
  assert.deepEqual(rooms.map((r) => r.room), names);
  for (const r of rooms) {
    assertPosition(r, r.room);
    assert.deepEqual(Object.keys(r).sort(), ["epoch", "offset", "room"], `position keys: ${JSON.stringify(r)}`);
  }
  return Object.fromEntries(rooms.map((r) => [r.room, { epoch: r.epoch, offset: r.offset }]));
}

/**
 * Joins `room` (sending `arg`, by default the bare name) without a position and checks the ack
 * is exactly `{ ok: true, room, epoch, offset }`; returns the ack.
 */
export async function joinOk(socket, room, arg = room) {
  const ack = await request(socket, "join", arg);
  assert.equal(ack.ok, true, `join ${JSON.stringify(arg)} refused: ${JSON.stringify(ack)}`);
  assert.deepEqual(Object.keys(ack).sort(), ["epoch", "offset", "ok", "room"], `join ack: ${JSON.stringify(ack)}`);
  assertPosition(ack, room);
  return ack;
}

/** Milliseconds left until `epochMs` (at least 0). */
export const until = (epochMs) => Math.max(0, epochMs - Date.now());

// ---------------------------------------------------------------------------------------------
// Publishing

/**
 * POSTs `body` (an object, or a string sent verbatim) to /v1/publish (or `path`) of `url`;
 * returns { status, body }.
 */
export async function publish(body, { key = KEY, url = URL, path = "/v1/publish" } = {}) {
  const res = await fetch(`${url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: typeof body === "string" ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: res.status, body: json };
}

/** Publishes and asserts success; returns `{ id, rooms: [{ room, offset }] }`. */
export async function publishOk(body, { url = URL } = {}) {
  const { status, body: out } = await publish(body, { url });
  assert.equal(status, 200, `publish refused: ${JSON.stringify(out)}`);
  return out;
}

/** Most events per POST /v1/publish/batch (the gateway's default GATEWAY_MAX_BATCH). */
export const BATCH_MAX = 100;

/**
 * Publishes `bodies` in order through /v1/publish/batch, `BATCH_MAX` at a time, and asserts
 * success; returns one `{ id, rooms: [{ room, offset }] }` per body, in order.
 */
export async function publishAllOk(bodies, { url = URL } = {}) {
  const out = [];
  for (let i = 0; i < bodies.length; i += BATCH_MAX) {
    const chunk = bodies.slice(i, i + BATCH_MAX);
    const { status, body } = await publish(chunk, { url, path: "/v1/publish/batch" });
    assert.equal(status, 200, `batch publish refused: ${JSON.stringify(body)}`);
    assert.equal(body.results?.length, chunk.length, `batch results: ${JSON.stringify(body)}`);
    out.push(...body.results);
  }
  return out;
}

/** The value of metric `name` on the gateway's /metrics (summed over its label sets). */
export async function metric(name) {
  const res = await fetch(`${ADMIN_URL}/metrics`, { signal: AbortSignal.timeout(WAIT_MS) });
  assert.equal(res.status, 200);
  let sum = 0;
  for (const line of (await res.text()).split("\n")) {
    const m = line.match(/^([a-z_:][a-z0-9_:]*)(\{[^}]*\})? (\S+)$/i);
    if (m && m[1] === name) sum += Number(m[3]);
  }
  return sum;
}

// ---------------------------------------------------------------------------------------------
// Realistic payloads, one event type per catalog channel

/** A publish request of `event` on its channel for `tenant`, with `over` merged into the payload. */
export function sample(event, tenant, over = {}) {
  const t = typeof tenant === "string" && /^\d+$/.test(tenant) ? Number(tenant) : tenant;
  const at = "2026-03-14T09:26:53Z";
  const payloads = {
    script_submitted: [
      "script_submission",
      {
        scriptId: 88120,
        batchId: 456,
        studentId: "MAT/2022/0417",
        studentName: "Chidinma Nwosu",
        courseCode: "MTH 301",
        courseName: "Real Analysis II",
        submittedAt: at,
        institutionId: t,
      },
    ],
    batch_created: [
      "batch_update",
      {
        batchId: 456,
        batchNumber: "MTH301-B07",
        examId: 31,
        examName: "Second Semester Examinations 2026",
        courseCode: "MTH 301",
        totalSlots: 40,
        createdBy: 204,
        createdByName: "Exams & Records",
        institutionId: t,
      },
    ],
    timetable_published: [
      "exam_timetable",
      {
        timetableId: "tt-2026-s2",
        examId: 31,
        examName: "Second Semester Examinations 2026",
        term: "2025/2026 Second Semester",
        entryCount: 418,
        publishedBy: 204,
        publishedByName: "Exams & Records",
        publishedAt: at,
        institutionId: t,
      },
    ],
    incident_reported: [
      "incident",
      {
        incidentId: 9031,
        examId: 31,
        category: "impersonation",
        severity: "critical",
        description: "ID card photo does not match the candidate in seat 14",
        venue: "Main Auditorium",
        reportedBy: 377,
        reportedByName: "Invigilator Okon",
        reportedAt: at,
        institutionId: t,
      },
    ],
    new_notification: [
      "notification",
      {
        notificationId: "ntf-5521",
        userId: 10,
        title: "Timetable published",
        message: "The second semester timetable is out — check your venues.",
        kind: "timetable_published",
        link: "/timetable/tt-2026-s2",
        createdAt: at,
        institutionId: t,
      },
    ],
  };
  const [channel, payload] = payloads[event];
  return { channel, event, institutionId: t, payload: { ...payload, ...over } };
}

/** The keys every delivered envelope has, sorted. */
export const ENVELOPE_KEYS = ["channel", "event", "id", "offset", "payload", "room", "timestamp"];

/** Checks a delivered envelope against the request that was published and its result. */
export function assertEnvelope(env, req, result, room) {
  assert.deepEqual(Object.keys(env).sort(), ENVELOPE_KEYS, `envelope keys: ${JSON.stringify(env)}`);
  assert.equal(env.id, result.id);
  if (req.id !== undefined) assert.equal(env.id, req.id);
  assert.equal(env.channel, req.channel);
  assert.equal(env.event, req.event);
  assert.equal(env.room, room);
  const published = result.rooms.find((r) => r.room === room);
  assert.ok(published, `the publish result has no room ${room}: ${JSON.stringify(result)}`);
  assert.equal(env.offset, published.offset);
  assert.ok(Number.isInteger(env.timestamp), `timestamp ${env.timestamp}`);
  assert.ok(Math.abs(env.timestamp - Date.now()) < 60_000, `timestamp ${env.timestamp} is not now`);
  assert.equal(JSON.stringify(env.payload), JSON.stringify(req.payload));
}
