"use strict";
// Benchmark baseline publisher: COUNT events at RATE per second through
// @socket.io/redis-emitter, to fixed rooms (round-robin) or random user rooms. The event has
// the gateway's client envelope `{ id, channel, event, payload, timestamp, room, offset }`, with
// the send time in `payload.sentAtUs` and a per-room offset that this script counts (kept in
// --state across runs). Prints (and writes to --out) `{ type: "publish", ..., rooms: {room: last
// offset} }`, the same report as `rtg-loadgen publish`.
//
//   node publish.js --redis redis://127.0.0.1:6379 --room batch:1 --count 100 --rate 10

const fs = require("node:fs");
const { Emitter } = require("@socket.io/redis-emitter");
const { createClient } = require("redis");

function args(name) {
  const out = [];
  process.argv.forEach((a, i) => {
    if (a === `--${name}` && i + 1 < process.argv.length) out.push(process.argv[i + 1]);
  });
  return out;
}
const arg = (name, fallback) => args(name).pop() ?? fallback;

const redisUrl = arg("redis", "redis://127.0.0.1:6379");
const rooms = args("room");
const userRooms = Number(arg("user-rooms", "0"));
const userBase = Number(arg("user-base", "0"));
const count = Number(arg("count", "100"));
const rate = Number(arg("rate", "100"));
const tenant = arg("tenant", "1");
const statePath = arg("state", "");
const outPath = arg("out", "");
if (!(userRooms > 0) && rooms.length === 0) {
  console.error("give --room (repeatable) or --user-rooms N");
  process.exit(2);
}
const tenantJson = /^[0-9]{1,15}$/.test(tenant) ? Number(tenant) : tenant;

// Microseconds since the epoch.
const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function readState() {
  if (!statePath || !fs.existsSync(statePath)) return {};
  return JSON.parse(fs.readFileSync(statePath, "utf8")).rooms || {};
}

async function main() {
  const offsets = readState();
  const client = createClient({ url: redisUrl });
  client.on("error", (e) => console.error("redis:", e.message));
  await client.connect();
  const emitter = new Emitter(client);
  const runId = Date.now().toString(16);
  const pick = (seq) =>
    userRooms > 0
      ? `user:${userBase + Math.floor(Math.random() * userRooms)}`
      : rooms[seq % rooms.length];
  const firstSentUs = nowUs();
  const start = performance.now();
  let sent = 0;
  let mostBehind = 0;
  while (sent < count) {
    const due = rate > 0 ? Math.min(count, Math.floor(((performance.now() - start) / 1000) * rate) + 1) : count;
    if (due <= sent) {
      await sleep(Math.max(0, start + (sent / rate) * 1000 - performance.now()));
      continue;
    }
    mostBehind = Math.max(mostBehind, due - sent);
    for (; sent < due; sent++) {
      const room = pick(sent);
      const offset = (offsets[room] || 0) + 1;
      offsets[room] = offset;
      emitter.to(`${tenant}/${room}`).emit("incident", {
        id: `b${runId}-${sent}`,
        channel: "incident",
        event: "incident_updated",
        payload: {
          incidentId: sent,
          status: "open",
          severity: "low",
          updatedBy: 7,
          updatedByName: "Invigilator",
          updatedAt: "2026-11-28T10:00:00Z",
          institutionId: tenantJson,
          sentAtUs: nowUs(),
        },
        timestamp: Date.now(),
        room,
        offset,
      });
    }
    // Let the client write what was queued before the next tick.
    await new Promise((r) => setImmediate(r));
  }
  await client.quit(); // waits for every queued PUBLISH
  const secs = (performance.now() - start) / 1000;
  const report = {
    type: "publish",
    via: "redis-emitter",
    sent,
    ok: sent,
    errors: 0,
    error_samples: [],
    rate,
    achieved_rate: secs > 0 ? Math.round((sent / secs) * 1000) / 1000 : 0,
    most_behind: mostBehind,
    duration_secs: Math.round(secs * 1000) / 1000,
    first_sent_us: firstSentUs,
    last_sent_us: nowUs(),
    rooms: offsets,
  };
  const text = JSON.stringify(report);
  if (statePath) fs.writeFileSync(statePath, JSON.stringify({ rooms: offsets }));
  if (outPath) {
    fs.writeFileSync(`${outPath}.tmp`, text);
    fs.renameSync(`${outPath}.tmp`, outPath);
  }
  console.log(text);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
