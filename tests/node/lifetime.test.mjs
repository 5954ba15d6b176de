// Session lifetime: the grace period of unauthenticated sockets, token expiry, and refresh.
// Runs against a gateway started with a short GATEWAY_AUTH_GRACE (AUTH_GRACE_MS, 1 s); tokens
// live about 2 s. Every
// scenario runs over every client configuration at once to keep the wall time short.

import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  TRANSPORTS,
  closeAll,
  connect,
  connectAs,
  envInt,
  expectNothing,
  nowSecs,
  publishOk,
  request,
  sample,
  sign,
  token,
  until,
  waitFor,
  waitForTimed,
} from "./lib.mjs";

/** The gateway's GATEWAY_AUTH_GRACE, in ms. */
const GRACE_MS = envInt("AUTH_GRACE_MS");

afterEach(closeAll);

const bothTransports = (scenario) => Promise.all(TRANSPORTS.map(scenario));
/** A user id of its own per transport, so parallel scenarios never see each other's events. */
const userFor = (base, transport) => base + TRANSPORTS.indexOf(transport);

/** Connects `sub` of `tenant` with a token expiring at `exp`; checks `authenticated.exp`. */
async function connectUntil(sub, tenant, exp, transport) {
  const { socket } = await connect({ token: sign({ sub, institutionId: tenant, role: "STAFF", exp }), transport });
  assert.ok(socket, "connect refused");
  assert.equal((await waitFor(socket, "authenticated")).exp, exp);
  return socket;
}

/** How late after exp the expiry's disconnect may be observed. */
const EXPIRY_SLACK_MS = 500;

/**
 * Waits for the expiry's auth_error and the disconnect that follows it; both must come at exp
 * (to the millisecond; the gateway checks every 50 ms), no later than exp + EXPIRY_SLACK_MS.
 * Returns when each was observed.
 */
async function expectExpiry(socket, exp) {
  const expMs = exp * 1000;
  const { data, at } = await waitForTimed(socket, "auth_error", until(expMs) + 3000);
  assert.equal(data.code, "token_expired");
  assert.equal(typeof data.message, "string");
  assert.ok(at >= expMs - 50, `auth_error ${expMs - at} ms before exp`);
  const { data: reason, at: gone } = await waitForTimed(socket, "disconnect", 3000);
  assert.equal(reason, "io server disconnect");
  assert.equal(socket.connected, false);
  assert.ok(gone <= expMs + EXPIRY_SLACK_MS, `disconnect observed ${gone - expMs} ms after exp`);
  return { errorAt: at, disconnectAt: gone };
}

test("a socket that never authenticates gets auth_timeout, then is disconnected", () =>
  bothTransports(async (transport) => {
    const started = Date.now();
    const { socket: silent } = await connect({ transport });
    const { socket: failed } = await connect({ transport });
    assert.ok(silent && failed);
    // A refused authenticate does not stop the clock.
    const refused = await request(failed, "authenticate", { token: token(10, 1, "STAFF", { ttl: -5 }) });
    assert.equal(refused.error?.code, "token_expired");
    assert.equal((await waitFor(failed, "auth_error")).code, "token_expired");

    for (const s of [silent, failed]) {
      const { data, at } = await waitForTimed(s, "auth_error", GRACE_MS + 3000);
      assert.equal(data.code, "auth_timeout");
      assert.equal(typeof data.message, "string");
      assert.ok(at - started >= GRACE_MS - 100, `auth_timeout after only ${at - started} ms`);
      assert.equal(await waitFor(s, "disconnect", 3000), "io server disconnect");
      const order = s.inbox.map((e) => e.event).filter((e) => e === "auth_error" || e === "disconnect");
      assert.deepEqual(order.slice(-2), ["auth_error", "disconnect"]);
    }
  }));

test("a socket that authenticates in time outlives the grace period", () =>
  bothTransports(async (transport) => {
    const started = Date.now();
    const sub = userFor(10, transport);
    const { socket } = await connect({ transport });
    assert.ok(socket);
    assert.equal((await request(socket, "authenticate", { token: token(sub, 1) })).ok, true);
    await expectNothing(socket, ["auth_error", "disconnect"], until(started + GRACE_MS + 700));
    assert.ok(socket.connected);
    await publishOk(sample("new_notification", 1, { userId: sub, notificationId: `grace-${transport}` }));
    assert.equal((await waitFor(socket, "notification")).payload.notificationId, `grace-${transport}`);
  }));

test("a socket whose token expires gets token_expired, then is disconnected", () =>
  bothTransports(async (transport) => {
    const sub = userFor(20, transport);
    const exp = nowSecs() + 2;
    const socket = await connectUntil(sub, 1, exp, transport);
    // Until exp it is served normally.
    await publishOk(sample("new_notification", 1, { userId: sub, notificationId: `pre-${transport}` }));
    assert.equal((await waitFor(socket, "notification")).payload.notificationId, `pre-${transport}`);
    await expectExpiry(socket, exp);
  }));

test("expiry is prompt: the disconnect is observed within 500 ms of exp, never before it", () =>
  bothTransports(async (transport) => {
    // Several sockets with exps a whole second apart, none aligned to when the test started:
    // each is cut at its own exp, not at some coarser tick.
    const base = userFor(50, transport) * 10;
    const first = nowSecs() + 2;
    const sockets = await Promise.all(
      [0, 1, 2].map((i) => connectUntil(base + i, 1, first + i, transport).then((s) => [s, first + i])),
    );
    const seen = await Promise.all(sockets.map(([s, exp]) => expectExpiry(s, exp)));
    for (let i = 0; i < seen.length; i++) {
      const late = seen[i].disconnectAt - (first + i) * 1000;
      assert.ok(late >= -50 && late <= EXPIRY_SLACK_MS, `socket ${i} disconnected ${late} ms after exp`);
    }
    // A socket whose later exp has not come yet is untouched by the others' expiry.
    assert.ok(seen[0].disconnectAt < seen[1].errorAt && seen[1].disconnectAt < seen[2].errorAt);
  }));

test("the seed flow's token expires too", () =>
  bothTransports(async (transport) => {
    const { socket } = await connect({ transport });
    assert.ok(socket);
    const exp = nowSecs() + 2;
    const ack = await request(socket, "authenticate", { token: sign({ sub: userFor(24, transport), institutionId: 1, role: "STAFF", exp }) });
    assert.equal(ack.exp, exp);
    await expectExpiry(socket, exp);
  }));

test("refresh with a newer token keeps the socket past the old exp", () =>
  bothTransports(async (transport) => {
    const sub = userFor(30, transport);
    const exp1 = nowSecs() + 2;
    const socket = await connectUntil(sub, 1, exp1, transport);
    const exp2 = nowSecs() + 120;
    const ack = await request(socket, "refresh", { token: sign({ sub, institutionId: 1, role: "STAFF", exp: exp2 }) });
    assert.deepEqual(ack, { ok: true, exp: exp2, left: [] });
    // A token that expires sooner does not shorten the session.
    const sooner = await request(socket, "refresh", { token: token(sub, 1, "STAFF", { ttl: 30 }) });
    assert.deepEqual(sooner, { ok: true, exp: exp2, left: [] });

    await expectNothing(socket, ["auth_error", "disconnect"], until(exp1 * 1000 + 1500));
    assert.ok(socket.connected, "disconnected despite the refresh");
    await publishOk(sample("new_notification", 1, { userId: sub, notificationId: `late-${transport}` }));
    const env = await waitFor(socket, "notification");
    assert.equal(env.payload.notificationId, `late-${transport}`);
    assert.equal(env.room, `user:${sub}`);
  }));

test("refresh with another identity or a bad token is refused and the old exp still applies", () =>
  bothTransports(async (transport) => {
    const sub = userFor(40, transport);
    const exp = nowSecs() + 2;
    const socket = await connectUntil(sub, 1, exp, transport);
    const refusals = [
      ["another user", token(sub + 100, 1, "STAFF", { ttl: 600 }), "token_identity_changed"],
      ["same user id, other tenant", token(sub, 2, "STAFF", { ttl: 600 }), "token_identity_changed"],
      ["expired", token(sub, 1, "STAFF", { ttl: -10 }), "token_expired"],
      ["wrong secret", token(sub, 1, "STAFF", { ttl: 600, secret: "x".repeat(40) }), "token_invalid_signature"],
      ["alg none", sign({ sub, institutionId: 1, role: "STAFF", exp: nowSecs() + 600 }, { alg: "none" }), "token_algorithm_not_allowed"],
    ];
    for (const [name, t, code] of refusals) {
      const ack = await request(socket, "refresh", { token: t });
      assert.equal(ack.ok, false, name);
      assert.equal(ack.error.code, code, name);
    }
    assert.ok(socket.connected, "a refused refresh must not disconnect");
    await expectExpiry(socket, exp);
  }));
