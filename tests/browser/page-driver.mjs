// Drives pages/recovery.html in Debian's Chromium on commands from tests/browser.rs, which
// owns the gateways (it kills and drains them between two commands). One JSON command per
// line on stdin, one JSON answer per line on stdout, in order:
//   { op: "open", pageUrl, start: { url, token, config, rooms } }  a new tab, connected once
//   { op: "connected", n }        waits until the n-th connect is complete (see recovery.js)
//   { op: "disconnected", n }     waits until the page saw n disconnects
//   { op: "events", room, n }     waits until n events of `room` arrived
//   { op: "hold" } / { op: "release" }  holds / lets go the next connect's `auth`
//   { op: "snapshot" }            the page's log and positions now
//   { op: "close" }               closes the tab;  { op: "quit" }  stops the browser and exits
// Answers: { ok: true, value: <snapshot> } or { ok: false, error } (a wait past its deadline
// names what it waited for and carries the snapshot). Page console output goes to stderr.

import readline from "node:readline";
import { launchChromium } from "./lib/chromium.mjs";

/** Longest any one wait may take. */
const WAIT_MS = 15_000;

const browser = await launchChromium();
let page = null;

const snapshot = () => page.evaluate(() => window.rtgRecovery.snapshot());

async function waitFor(what, fn, arg) {
  try {
    await page.waitForFunction(fn, arg, { timeout: WAIT_MS, polling: 20 });
  } catch (e) {
    const now = await snapshot().catch((err) => `no snapshot: ${err.message}`);
    throw new Error(`${what}: not within ${WAIT_MS} ms (${e.message.split("\n")[0]}); page: ${JSON.stringify(now)}`);
  }
  return snapshot();
}

const ops = {
  async open({ pageUrl, start }) {
    if (page) await page.close();
    page = await browser.newPage();
    const res = await page.goto(pageUrl);
    if (res.status() !== 200) throw new Error(`${pageUrl}: ${res.status()}`);
    await page.waitForFunction(() => typeof window.io === "function" && window.rtgRecovery);
    await page.evaluate((o) => window.rtgRecovery.start(o), start);
    return waitFor("the first connect", (n) => window.rtgRecovery.connected(n), 1);
  },
  connected: ({ n }) => waitFor(`connect ${n}`, (k) => window.rtgRecovery.connected(k), n),
  disconnected: ({ n }) =>
    waitFor(
      `disconnect ${n}`,
      (k) => window.rtgRecovery.snapshot().log.filter((e) => e.kind === "disconnect").length >= k,
      n,
    ),
  events: ({ room, n }) => waitFor(`${n} events of ${room}`, ({ r, k }) => window.rtgRecovery.events(r) >= k, { r: room, k: n }),
  async hold() {
    await page.evaluate(() => window.rtgRecovery.hold());
    return snapshot();
  },
  async release() {
    await page.evaluate(() => window.rtgRecovery.release());
    return snapshot();
  },
  snapshot: () => snapshot(),
  async close() {
    await page?.evaluate(() => window.rtgRecovery.close()).catch(() => {});
    await page?.close();
    page = null;
    return null;
  },
};

const answer = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  const cmd = JSON.parse(line);
  if (cmd.op === "quit") break;
  try {
    const op = ops[cmd.op];
    if (!op) throw new Error(`unknown op ${cmd.op}`);
    answer({ ok: true, value: await op(cmd) });
  } catch (e) {
    answer({ ok: false, error: e.message });
  }
}
await browser.close();
process.exit(0);
