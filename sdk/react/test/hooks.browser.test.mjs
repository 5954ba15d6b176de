// The React bindings in Debian's Chromium against a real gateway (tests/sdk.rs starts it):
// handlers are always the latest without resubscribing, StrictMode's double mount joins once,
// `enabled` joins and leaves, unmounting leaves nothing behind, and a provider that owns its
// client opens one connection under StrictMode and closes it on unmount; positions kept in
// sessionStorage survive a reload.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { launchChromium } from "../../../tests/browser/lib/chromium.mjs";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (tests/sdk.rs sets it)`);
  return v;
};
const GATEWAY_URL = env("GATEWAY_URL");
const ADMIN_URL = env("ADMIN_URL");
const TOKEN = env("TOKEN");
const PUBLISH_KEY = env("PUBLISH_KEY");
/** A directory the test's site serves (from another origin than the gateway's), and its URL. */
const PAGE_DIR = env("PAGE_DIR");
const PAGE_URL = env("PAGE_URL");

async function until(what, cond, ms = 10_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
const quiet = () => new Promise((r) => setTimeout(r, 500));

async function publish(room, n) {
  const res = await fetch(`${GATEWAY_URL}/v1/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${PUBLISH_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({
      channel: "batch_update", event: "batch_created", institutionId: 1, rooms: [room],
      payload: { batchId: n, batchNumber: `B-${n}`, examId: 1, examName: "E", courseCode: "C", totalSlots: 1,
        createdBy: 1, createdByName: "R", institutionId: 1 },
    }),
  });
  assert.equal(res.status, 200, await res.text());
}

/** `gateway_connections` (open now) and `gateway_connections_total` on the gateway. */
async function connections() {
  const text = await (await fetch(`${ADMIN_URL}/metrics`)).text();
  const sum = (name) =>
    text
      .split("\n")
      .filter((l) => l.startsWith(name) && /^[^{ ]+[{ ]/.test(l) && l.split(/[{ ]/)[0] === name)
      .reduce((n, l) => n + Number(l.split(" ").at(-1)), 0);
  return { open: sum("gateway_connections"), total: sum("gateway_connections_total") };
}

let browser;
let page;
const call = (fn, ...args) => page.evaluate(([fn, args]) => window.t[fn](...args), [fn, args]);

before(async () => {
  const bundle = await build({
    entryPoints: [fileURLToPath(new URL("./hooks.page.tsx", import.meta.url))],
    bundle: true,
    format: "esm",
    write: false,
    jsx: "automatic",
    define: { "process.env.NODE_ENV": '"development"' },
    logLevel: "error",
  });
  await writeFile(join(PAGE_DIR, "page.js"), bundle.outputFiles[0].text);
  await writeFile(
    join(PAGE_DIR, "index.html"),
    '<!doctype html><div id="root"></div><script type="module" src="/page.js"></script>',
  );
  browser = await launchChromium();
  page = await browser.newPage();
  await page.goto(PAGE_URL);
  await page.waitForFunction(() => window.t !== undefined);
  await call("mount", GATEWAY_URL, TOKEN);
  await until("connected", async () => (await call("status")) === "connected");
});

after(async () => {
  await browser?.close();
});

test("StrictMode's double mount joins once", async () => {
  await until("the join", async () => (await call("seen")).sent["join batch:77"] === 1);
  await quiet();
  const seen = await call("seen");
  assert.equal(seen.sent["join batch:77"], 1);
  assert.equal(seen.sent["leave batch:77"], undefined);
  assert.deepEqual(seen.rooms, ["batch:77"]);
  assert.equal(seen.listeners, 1, "one live subscription");
});

test("handlers are the latest without resubscribing", async () => {
  const before = (await call("seen")).onCalls;
  const render = await call("rerender", 5);
  assert.equal(render, 6);
  assert.equal((await call("seen")).onCalls, before, "re-renders did not subscribe again");
  await publish("batch:77", 1);
  await until("the event", async () => (await call("received")).length === 1);
  assert.deepEqual(await call("received"), [{ render: 6, offset: 1 }], "the latest render's handler ran");
});

test("enabled joins and leaves", async () => {
  assert.equal((await call("seen")).sent["join batch:78"], undefined, "disabled: no join");
  await call("enable", true);
  await until("the join", async () => (await call("seen")).sent["join batch:78"] === 1);
  await call("enable", false);
  await until("the leave", async () => (await call("seen")).sent["leave batch:78"] === 1);
});

test("unmounting leaves the rooms and drops every subscription", async () => {
  await call("unmount");
  await until("the leave", async () => (await call("seen")).sent["leave batch:77"] === 1);
  const seen = await call("seen");
  assert.equal(seen.listeners, 0);
  assert.equal(seen.resyncs, 0);
  assert.deepEqual(seen.rooms, []);
  // The handler of the unmounted component is gone.
  await publish("batch:77", 2);
  await quiet();
  assert.equal((await call("received")).length, 1);
});

test("a provider that owns its client connects once under StrictMode and closes on unmount", async () => {
  const start = await connections();
  await page.evaluate(([url, token]) => window.t.mountOwned(url, token), [GATEWAY_URL, TOKEN]);
  await until("one more connection", async () => (await connections()).open === start.open + 1);
  await quiet();
  const mounted = await connections();
  assert.equal(mounted.open, start.open + 1);
  assert.equal(mounted.total, start.total + 1, "StrictMode did not open a second connection");
  await page.evaluate(() => window.t.unmountOwned());
  await until("the connection closed", async () => (await connections()).open === start.open);
});

test("positions kept in sessionStorage survive a page reload", async () => {
  const room = "batch:79";
  const ack = await page.evaluate(([u, t, r]) => window.t.storedJoin(u, t, r), [GATEWAY_URL, TOKEN, room]);
  assert.equal(ack.recovered, undefined, "a first join has no position to recover from");
  await publish(room, 1);
  await publish(room, 2);
  await until("two events", async () => (await page.evaluate(() => window.t.stored())).length === 2);
  await page.reload();
  await page.waitForFunction(() => window.t !== undefined);
  // Published while the reloaded page is not in the room.
  await publish(room, 3);
  await publish(room, 4);
  const again = await page.evaluate(([u, t, r]) => window.t.storedJoin(u, t, r), [GATEWAY_URL, TOKEN, room]);
  assert.equal(again.recovered, true, "the saved position was sent and recovered");
  await until("the missed events", async () => (await page.evaluate(() => window.t.stored())).length === 2);
  await quiet();
  assert.deepEqual(await page.evaluate(() => window.t.stored()), [3, 4], "only what the page missed");
});
