// The demo in Debian's Chromium, served from another origin than the gateways (three on one
// Redis behind nginx), with the SDK's default transports. tests/sdk.rs starts everything, reads
// the steps this script reports and answers on stdin. In order:
//   1. events render, and the batch query refetches exactly once per event;
//   2. tokens of a few seconds are refreshed and the page never leaves `connected`;
//   3. the gateway holding the page is SIGKILLed while events are published: the page
//      reconnects by itself and lists every event exactly once, in order, without a reload;
//   4. Redis is flushed and that gateway restarted: the page refetches (resync) and goes on.
import assert from "node:assert/strict";
import { answer, drive, env, publish, quiet, step, submission, until } from "./lib.mjs";

const PAGE_URL = env("PAGE_URL");
const BATCH_ROOM = "batch:456";
/** Events published while a gateway is killed. */
const DURING_KILL = 40;

/** The SDK's debug lines (the demo turns `debug` on), checked after the first phase. */
const debugLines = [];
const log = (line) => {
  if (line.includes("[realtime]")) debugLines.push(line);
  process.stderr.write(`${line}\n`);
};
await drive({ log }, async (browser) => {
  const page = await browser.newPage();
  const probe = () => page.evaluate(() => structuredClone({ ...window.__demo, tokens: window.__demo.tokens }));
  const fetches = async () => Number(await page.getByTestId("batch-fetches").textContent());
  const listed = () =>
    page.$$eval('[data-testid="submissions"] li', (lis) =>
      lis.map((li) => ({ offset: Number(li.dataset.offset), id: li.dataset.id })),
    );
  const status = () => page.getByTestId("status").getAttribute("data-status");

  await page.goto(PAGE_URL);
  await until("connected", async () => (await status()) === "connected");
  await until("the batch's first fetch", async () => (await fetches()) === 1);
  // A first join has no position: events published before its ack are not owed to the page.
  await until("the batch room joined", async () =>
    debugLines.some((l) => l.includes("[realtime] joined") && l.includes(BATCH_ROOM)),
  );
  const { loadedAt } = await probe();

  // 1. Events render; the matching query refetches once per event.
  let { publish: publishUrl } = await (step("publish_url"), answer());
  for (let i = 1; i <= 5; i++) {
    await publish(publishUrl, "script_submission", "script_submitted", submission(i), [BATCH_ROOM]);
    await until(`event ${i} listed`, async () => (await listed()).length === i);
    await until(`refetch ${i}`, async () => (await fetches()) === 1 + i);
  }
  await quiet();
  assert.equal(await fetches(), 6, "one refetch per event, no more");
  assert.deepEqual((await listed()).map((e) => e.offset), [1, 2, 3, 4, 5]);
  assert.equal((await probe()).joins[BATCH_ROOM], 1, "StrictMode's double mount sent one join");
  await publish(publishUrl, "notification", "new_notification", {
    notificationId: 1, userId: 10, title: "Hello", message: "Batch 456 is open", kind: "info",
    createdAt: "2026-11-28T10:00:00Z",
  });
  await until("the bell counts it", async () => (await page.getByTestId("unread").textContent()) === "1");
  await publish(publishUrl, "incident", "incident_reported", {
    incidentId: 1, examId: 100, category: "malpractice", severity: "high", description: "Phone found",
    reportedBy: 7, reportedByName: "Invigilator", reportedAt: "2026-11-28T10:05:00Z",
  });
  await until("the incident feed and its toast", async () =>
    (await page.$$('[data-testid="incidents"] li')).length === 1 && (await page.$$('[role="status"]')).length === 1,
  );
  for (const what of ["connected", "authenticated", "join", "joined", "event", "invalidate"]) {
    assert.ok(
      debugLines.some((l) => l.includes(`[realtime] ${what} `)),
      `debug: true logs "${what}" (${debugLines.length} lines)`,
    );
  }
  step("events_ok");

  // 2. Short tokens are refreshed before they expire; the page stays connected.
  const tokensBefore = (await probe()).tokens;
  await until("three refreshes", async () => (await probe()).tokens >= tokensBefore + 3, 20_000);
  assert.deepEqual((await probe()).statuses, ["disconnected", "connecting", "connected"]);
  step("token_ok", { tokens: (await probe()).tokens });

  // 3. The gateway holding the page is killed while events are published.
  ({ publish: publishUrl } = await (step("kill_ready"), answer()));
  for (let i = 6; i < 6 + DURING_KILL; i++) {
    await publish(publishUrl, "script_submission", "script_submitted", submission(i), [BATCH_ROOM]);
    if (i === 15) step("kill_now");
    await new Promise((r) => setTimeout(r, 50));
  }
  const total = 5 + DURING_KILL;
  await until(`all ${total} events listed`, async () => (await listed()).length >= total, 30_000);
  await quiet();
  const all = await listed();
  assert.deepEqual(
    all.map((e) => e.offset),
    Array.from({ length: total }, (_, i) => i + 1),
    "every event exactly once, in order",
  );
  assert.equal(new Set(all.map((e) => e.id)).size, total, "no id twice");
  const after = await probe();
  assert.equal(after.loadedAt, loadedAt, "the page was not reloaded");
  assert.ok(after.statuses.includes("reconnecting"), `the page saw the loss (${after.statuses})`);
  await until("connected again", async () => (await status()) === "connected");
  step("kill_ok", { statuses: after.statuses });

  // 4. Redis flushed and the gateway restarted: the history is gone, the page refetches.
  const fetchesBefore = await fetches();
  ({ publish: publishUrl } = await (step("flush_ready"), answer()));
  await until("a refetch after the resync", async () => (await fetches()) > fetchesBefore, 30_000);
  await until("connected again", async () => (await status()) === "connected", 30_000);
  await publish(publishUrl, "script_submission", "script_submitted", submission(100), [BATCH_ROOM]);
  await until("the first event of the new history", async () => (await listed()).length === total + 1);
  assert.equal((await listed()).at(-1).offset, 1, "the room's new history starts again");
  assert.equal((await probe()).loadedAt, loadedAt, "the page was not reloaded");
  step("flush_ok", { refetched: (await fetches()) - fetchesBefore });
});
