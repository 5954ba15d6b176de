// Helpers of the presence tests: asking a room's presence, waiting until it settles, HTTP reads.

import assert from "node:assert/strict";
import { KEY, QUIET_MS, URL, WAIT_MS, request, waitFor } from "./lib.mjs";

/** How soon a join or leave must show in every presence answer. */
export const REFLECTED_MS = 1000;

/** Asserts a refused ack with `code` and a message. */
export function refused(ack, code, what) {
  assert.equal(ack.ok, false, `${what} was accepted: ${JSON.stringify(ack)}`);
  assert.equal(ack.error?.code, code, `${what}: ${JSON.stringify(ack)}`);
  assert.ok(typeof ack.error.message === "string" && ack.error.message.length > 0, what);
}

/** The `presence` ack of `room` for `socket`. */
export async function presenceOf(socket, room) {
  const ack = await request(socket, "presence", room);
  assert.equal(ack.ok, true, `presence ${room}: ${JSON.stringify(ack)}`);
  return ack;
}

/**
 * Asks `socket`'s presence of `room` until it lists exactly `members` (sorted by user id), or,
 * with `members` null, until its count is `count`; fails after `within` ms. Returns the answer.
 */
export async function settles(socket, room, members, count = members?.length, { within = REFLECTED_MS } = {}) {
  const deadline = Date.now() + within;
  let last;
  for (;;) {
    last = await presenceOf(socket, room);
    const ok = members === null ? last.count === count : last.count === count && isDeepEqual(last.members, members);
    if (ok) return last;
    if (Date.now() > deadline) {
      assert.fail(`presence of ${room} did not become ${JSON.stringify(members ?? { count })} within ${within} ms; last: ${JSON.stringify(last)}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

function isDeepEqual(a, b) {
  try {
    assert.deepEqual(a, b);
    return true;
  } catch {
    return false;
  }
}

/** GET /v1/presence of `room` in `tenant` with the publish key: `{ status, body }`. */
export async function httpPresence(tenant, room, { url = URL } = {}) {
  const res = await fetch(`${url}/v1/presence?institutionId=${tenant}&room=${encodeURIComponent(room)}`, {
    headers: { authorization: `Bearer ${KEY}` },
    signal: AbortSignal.timeout(WAIT_MS),
  });
  return { status: res.status, body: await res.json() };
}

/**
 * Asserts that no `event` for which `pred(arg)` holds arrives within `ms` (counting anything
 * received and not consumed yet). Other events are left alone: a socket may or may not get the
 * event of its own join, depending on whether it entered the room before or after it.
 */
export async function expectNone(socket, event, pred, ms = QUIET_MS) {
  const got = await waitFor(socket, event, ms, pred).then(
    (e) => e,
    () => null,
  );
  assert.equal(got, null, `unexpected ${event} ${JSON.stringify(got)}`);
}

/** Matches presence events of users in `users`. */
export const ofUsers = (...users) => (e) => users.map(String).includes(e?.payload?.userId);
