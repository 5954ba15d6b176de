// Helpers of the client tests: tokens, publishing over HTTP, waits with deadlines, and a
// client factory that closes everything it made after each test.
import { createHmac } from "node:crypto";
import { afterEach } from "node:test";
import { createRealtimeClient } from "../dist/index.js";

function required(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} must be set (the Rust test tests/sdk.rs sets it)`);
  return v;
}

/** The gateway under test. */
export const URL = required("GATEWAY_URL");
const SECRET = required("JWT_SECRET");
const KEY = required("PUBLISH_KEY");

/** Deadline for anything that should happen. */
export const WAIT_MS = 8000;
/** Window in which something that should not happen must stay absent. */
export const QUIET_MS = 400;

const b64url = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");

/** An HS256 token for `sub` of `tenant`, valid `ttl` seconds (signed with `secret`). */
export function token(sub, tenant = 1, { role = "ADMIN", ttl = 3600, secret = SECRET } = {}) {
  const claims = { sub: String(sub), institutionId: tenant, role, exp: Math.floor(Date.now() / 1000) + ttl };
  const input = `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url(claims)}`;
  return `${input}.${createHmac("sha256", secret).update(input).digest("base64url")}`;
}

const made = new Set();
afterEach(() => {
  for (const c of made) c.close();
  made.clear();
});

/** A client for `sub` of tenant 1 over WebSocket (options override), closed after the test. */
export function client(sub, options = {}) {
  const c = createRealtimeClient({
    url: URL,
    transports: ["websocket"],
    getToken: () => token(sub),
    ...options,
  });
  made.add(c);
  return c;
}

/** Waits until `cond()` is truthy (polling every 10 ms); fails with `what` after the deadline. */
export async function until(what, cond, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Waits `QUIET_MS` so that anything wrongly on its way has time to arrive. */
export const quiet = () => new Promise((r) => setTimeout(r, QUIET_MS));

/** Publishes one `batch_created` event for batch `n` to `rooms` of tenant 1; returns the answer. */
export async function publish(rooms, n) {
  const res = await fetch(`${URL}/v1/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
    body: JSON.stringify({
      channel: "batch_update",
      event: "batch_created",
      institutionId: 1,
      rooms,
      payload: {
        batchId: n, batchNumber: `B-${n}`, examId: 100, examName: "Finals", courseCode: "CS101",
        totalSlots: 30, createdBy: 7, createdByName: "Registrar", institutionId: 1,
      },
    }),
  });
  const body = await res.json();
  if (res.status !== 200) throw new Error(`publish answered ${res.status}: ${JSON.stringify(body)}`);
  return body;
}

/** Counts what a client sends, by event name (socket.io-client's outgoing hook). */
export function outgoing(c) {
  const counts = {};
  c.socket.onAnyOutgoing((name) => (counts[name] = (counts[name] ?? 0) + 1));
  return counts;
}
