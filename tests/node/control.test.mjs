// The control API against three gateways on one Redis, with the stock client: a user with
// sockets on every gateway (WebSocket and polling) is listed, made to leave a room,
// disconnected and revoked; it is gone from all within 1 s, the stock client (reconnection on)
// stays offline, and a revoked token is refused everywhere while a new one is accepted.

import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import {
  closeAll,
  connect,
  envString,
  expectNothing,
  joinOk,
  nowSecs,
  request,
  sign,
  track,
  waitFor,
  waitForTimed,
} from "./lib.mjs";

const GATEWAYS = [envString("GATEWAY_URL"), envString("GATEWAY2_URL"), envString("GATEWAY3_URL")];
const CONTROL_KEY = envString("CONTROL_KEY");
/** Where each of the user's sockets goes, and over what. */
const PLACES = [
  { url: GATEWAYS[0], transport: "websocket" },
  { url: GATEWAYS[1], transport: "polling" },
  { url: GATEWAYS[2], transport: "websocket" },
];
/** The control plane's promise: every gateway acts within this. */
const WITHIN_MS = 1000;
/** How long a server-disconnected stock client is watched for a reconnect it must not make. */
const OFFLINE_MS = 1500;

afterEach(closeAll);

async function control(method, path, body) {
  const res = await fetch(`${GATEWAYS[0]}${path}`, {
    method,
    headers: { "content-type": "application/json", authorization: `Bearer ${CONTROL_KEY}` },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

const tokenFor = (sub, iat) => sign({ sub, institutionId: 1, role: "STAFF", iat, exp: nowSecs() + 3600 });

/** A stock client with reconnection on (as applications use it), authenticated. */
async function online(tok, { url, transport }) {
  const socket = io(url, {
    transports: [transport],
    upgrade: false,
    forceNew: true,
    reconnectionDelay: 100,
    reconnectionDelayMax: 200,
    auth: { token: tok },
  });
  track(socket);
  await waitFor(socket, "connect");
  await waitFor(socket, "authenticated");
  assert.equal(socket.io.engine.transport.name, transport);
  return socket;
}

/** Every socket gets auth_error session_revoked, then a server disconnect, within 1 s of `t0`,
 * and stays offline although reconnection is on. */
async function expectEnded(sockets, t0) {
  await Promise.all(
    sockets.map(async (s) => {
      const { data, at } = await waitForTimed(s, "auth_error");
      assert.equal(data.code, "session_revoked");
      assert.equal(typeof data.message, "string");
      const { data: reason, at: gone } = await waitForTimed(s, "disconnect");
      assert.equal(reason, "io server disconnect");
      assert.ok(at - t0 <= WITHIN_MS, `auth_error ${at - t0} ms after the call`);
      assert.ok(gone - t0 <= WITHIN_MS, `disconnect ${gone - t0} ms after the call`);
    }),
  );
  await Promise.all(sockets.map((s) => expectNothing(s, "connect", OFFLINE_MS)));
  for (const s of sockets) assert.equal(s.connected, false, "the stock client reconnected by itself");
}

test("list, force leave and disconnect reach the user's sockets on every gateway", async () => {
  const tok = tokenFor(77, nowSecs() - 5);
  const sockets = await Promise.all(PLACES.map((p) => online(tok, p)));
  await Promise.all(sockets.map((s) => joinOk(s, "batch:5")));
  const other = await online(tokenFor(78, nowSecs() - 5), PLACES[0]);

  const listed = await control("GET", "/v1/connections?institutionId=1&userId=77");
  assert.equal(listed.status, 200, JSON.stringify(listed.body));
  const conns = listed.body.connections;
  assert.equal(conns.length, 3, JSON.stringify(conns));
  assert.equal(new Set(conns.map((c) => c.gateway)).size, 3, "one socket per gateway");
  assert.deepEqual(conns.map((c) => c.transport).sort(), ["polling", "websocket", "websocket"]);
  assert.deepEqual(new Set(conns.map((c) => c.socketId)), new Set(sockets.map((s) => s.id)));
  for (const c of conns) {
    assert.deepEqual(c.rooms.sort(), ["batch:5", "institution:1", "user:77"]);
    assert.ok(c.connectedAt <= Date.now() && c.expiresAt > Date.now());
  }

  const left = await control("POST", "/v1/rooms/leave", { institutionId: 1, userId: 77, room: "batch:5" });
  assert.equal(left.status, 200, JSON.stringify(left.body));
  assert.equal(left.body.left, 3);
  for (const s of sockets) {
    const ev = await waitFor(s, "left");
    assert.equal(ev.room, "batch:5");
    assert.equal(typeof ev.reason, "string");
  }
  const relisted = await control("GET", "/v1/connections?institutionId=1&userId=77");
  for (const c of relisted.body.connections) assert.deepEqual(c.rooms.sort(), ["institution:1", "user:77"]);

  const t0 = Date.now();
  const gone = await control("POST", "/v1/disconnect", { institutionId: 1, userId: 77, reason: "exam closed" });
  assert.equal(gone.status, 200, JSON.stringify(gone.body));
  assert.equal(gone.body.disconnected, 3);
  await expectEnded(sockets, t0);
  // Another user of the tenant is untouched.
  await expectNothing(other, ["auth_error", "disconnect"]);
  assert.ok(other.connected);
  // A disconnect is not a revocation: the same token connects again, on every gateway.
  for (const p of PLACES) await online(tok, p);
  assert.equal((await control("GET", "/v1/connections?institutionId=1&userId=77")).body.connections.length, 3);
});

test("revoke ends the user's sockets everywhere; the old token is refused on every path, a new one is not", async () => {
  const old = tokenFor(88, nowSecs() - 60);
  const sockets = await Promise.all(PLACES.map((p) => online(old, p)));
  const t0 = Date.now();
  const revoked = await control("POST", "/v1/revoke", { institutionId: 1, userId: 88 });
  assert.equal(revoked.status, 200, JSON.stringify(revoked.body));
  assert.equal(revoked.body.disconnected, 3);
  await expectEnded(sockets, t0);

  for (const { url, transport } of PLACES) {
    // Handshake.
    const { error } = await connect({ token: old, transport, url });
    assert.equal(error?.message, "token_revoked", `${url} ${transport}`);
    // authenticate after connecting without a token.
    const { socket: bare } = await connect({ transport, url });
    const ack = await request(bare, "authenticate", { token: old });
    assert.equal(ack.error?.code, "token_revoked");
    // A new token is accepted, and refresh with the old one is refused.
    const fresh = await online(tokenFor(88, nowSecs() + 1), { url, transport });
    const refreshed = await request(fresh, "refresh", { token: old });
    assert.equal(refreshed.error?.code, "token_revoked");
    assert.ok(fresh.connected);
  }
});
