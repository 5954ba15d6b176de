// permessage-deflate with real clients: Node's `ws` with perMessageDeflate, one `ws` without it,
// and the stock socket.io-client (which offers the extension by default in Node), all in one
// room of the gateway's WebSocket transport. One broadcast reaches them all: compressed frames
// (RSV1) to the sockets that negotiated the extension, plain frames to the other, every event
// intact. The frames are read off each `ws` socket's TCP stream.

import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { once } from "node:events";
import { constants, inflateRawSync } from "node:zlib";
import WebSocket from "ws";
import {
  URL,
  WAIT_MS,
  assertEnvelope,
  closeAll,
  connectAs,
  envInt,
  publishOk,
  sample,
  token,
  waitFor,
} from "./lib.mjs";

/** GATEWAY_WS_COMPRESSION_MIN_BYTES of the gateway under test. */
const MIN_BYTES = envInt("COMPRESSION_MIN_BYTES");

/** Checks that `ws` (a `ws` client) negotiated permessage-deflate with the gateway's parameters. */
function assertNegotiated(ws, who) {
  assert.equal(ws.extensions, "permessage-deflate", `${who}: extension negotiated`);
  // What the gateway answered, as `ws` (pinned) parsed it.
  const params = ws._extensions["permessage-deflate"].params;
  assert.equal(params.server_no_context_takeover, true, `${who}: ${JSON.stringify(params)}`);
  assert.equal(params.client_no_context_takeover, true, `${who}: ${JSON.stringify(params)}`);
}
const EVENTS = ["script_submitted", "batch_created", "timetable_published", "incident_reported", "new_notification"];
const TAIL = Buffer.from([0x00, 0x00, 0xff, 0xff]);

const sessions = new Set();
afterEach(() => {
  for (const s of sessions) s.ws.terminate();
  sessions.clear();
  closeAll();
});

/**
 * Reads the server's frames off `socket` (the TCP stream under a `ws` client) as they arrive:
 * `{ rsv1, opcode, wire, text }`, a compressed frame inflated on its own (no context takeover).
 */
function tapFrames(socket, frames) {
  let buf = Buffer.alloc(0);
  socket.on("data", (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      if (buf.length < 2) return;
      let len = buf[1] & 0x7f;
      let at = 2;
      if (len === 126) {
        if (buf.length < 4) return;
        len = buf.readUInt16BE(2);
        at = 4;
      } else if (len === 127) {
        if (buf.length < 10) return;
        len = Number(buf.readBigUInt64BE(2));
        at = 10;
      }
      if (buf.length < at + len) return;
      const rsv1 = (buf[0] & 0x40) !== 0;
      const payload = buf.subarray(at, at + len);
      // A message ends with a sync flush, not a final block.
      const data = rsv1
        ? inflateRawSync(Buffer.concat([payload, TAIL]), { finishFlush: constants.Z_SYNC_FLUSH })
        : payload;
      frames.push({ rsv1, opcode: buf[0] & 0x0f, wire: at + len, text: data.toString() });
      buf = buf.subarray(at + len);
    }
  });
}

/**
 * A Socket.IO session over a bare `ws` client, `deflate` offering permessage-deflate (and
 * compressing every message it sends). Records events and acks; answers pings.
 */
async function wsSession(sub, tenant, { deflate }) {
  const url = `${URL.replace(/^http/, "ws")}/socket.io/?EIO=4&transport=websocket`;
  const ws = new WebSocket(url, { perMessageDeflate: deflate ? { threshold: 0 } : false });
  const s = { ws, frames: [], events: [], acks: new Map(), waiters: [] };
  sessions.add(s);
  const opened = new Promise((resolve) => {
    ws.on("message", (data) => {
      const text = data.toString();
      if (text.startsWith("0{")) resolve();
      else if (text === "2") ws.send("3");
      else if (text.startsWith("42")) s.events.push(JSON.parse(text.slice(2)));
      else if (text.startsWith("43")) {
        const m = text.match(/^43(\d+)(.*)$/);
        s.acks.set(Number(m[1]), JSON.parse(m[2])[0]);
      }
      for (const w of [...s.waiters]) w();
    });
  });
  await once(ws, "open");
  tapFrames(ws._socket, s.frames);
  await opened;
  ws.send(`40${JSON.stringify({ token: token(sub, tenant) })}`);
  await until(s, () => s.events.some(([name]) => name === "authenticated"), "authenticated");
  return s;
}

/** Waits (with a deadline) until `cond()` holds for session `s`. */
function until(s, cond, what) {
  if (cond()) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${what} within ${WAIT_MS} ms`)), WAIT_MS);
    const w = () => {
      if (cond()) {
        clearTimeout(timer);
        s.waiters.splice(s.waiters.indexOf(w), 1);
        resolve();
      }
    };
    s.waiters.push(w);
  });
}

const channelEvents = (s) => s.events.filter(([name]) => !["authenticated", "pong"].includes(name));

test("one broadcast: compressed frames where negotiated, plain ones elsewhere, every event intact", async () => {
  const zipped = await wsSession(10, 1, { deflate: true });
  assertNegotiated(zipped.ws, "ws");
  const plain = await wsSession(10, 1, { deflate: false });
  assert.equal(plain.ws.extensions, "");
  const { socket: stock } = await connectAs(10, 1);
  assertNegotiated(stock.io.engine.transport.ws, "the stock client");

  const published = [];
  for (const event of EVENTS) {
    const req = sample(event, 1);
    published.push({ req, res: await publishOk(req) });
  }
  for (const s of [zipped, plain]) {
    await until(s, () => channelEvents(s).length === EVENTS.length, `${EVENTS.length} events`);
  }
  const stockGot = [];
  for (const { req } of published) stockGot.push(await waitFor(stock, req.channel));

  // Every client has every event, in order, identical.
  published.forEach(({ req, res }, i) => {
    const room = res.rooms[0].room;
    assertEnvelope(stockGot[i], req, res, room);
    for (const s of [zipped, plain]) {
      const [name, env] = channelEvents(s)[i];
      assert.equal(name, req.channel);
      assert.deepEqual(env, stockGot[i]);
    }
  });

  // On the wire: each event's frame is compressed on the socket that negotiated it and plain
  // on the other; frames below the threshold go plain everywhere.
  for (const { req } of published) {
    const match = (f) => f.text.startsWith(`42["${req.channel}"`);
    const z = zipped.frames.find(match);
    const p = plain.frames.find(match);
    assert.ok(z && p, `${req.event}: frames seen (${zipped.frames.length}, ${plain.frames.length})`);
    assert.equal(z.text, p.text, `${req.event}: the same packet`);
    assert.ok(z.text.length >= MIN_BYTES, `${req.event} is ${z.text.length} bytes, below the threshold`);
    assert.equal(z.rsv1, true, `${req.event}: RSV1 where negotiated`);
    assert.equal(p.rsv1, false, `${req.event}: plain elsewhere`);
    assert.ok(z.wire < p.wire, `${req.event}: ${z.wire} compressed bytes vs ${p.wire}`);
  }
  for (const f of zipped.frames) {
    if (f.text.length < MIN_BYTES) assert.equal(f.rsv1, false, `below the threshold: ${f.text}`);
  }
  assert.ok(plain.frames.every((f) => !f.rsv1), "no RSV1 without the extension");

  // The client's own compressed messages are read: a join (ws compresses everything here).
  zipped.ws.send(`427${JSON.stringify(["join", { room: "batch:456" }])}`);
  await until(zipped, () => zipped.acks.has(7), "the join ack");
  assert.equal(zipped.acks.get(7).ok, true, JSON.stringify(zipped.acks.get(7)));
  const req = { ...sample("batch_created", 1), rooms: ["batch:456"] };
  const res = await publishOk(req);
  await until(zipped, () => channelEvents(zipped).length === EVENTS.length + 1, "the batch event");
  assertEnvelope(channelEvents(zipped).at(-1)[1], req, res, "batch:456");
});
