// Dispatch benchmark in Debian's Chromium: the demo's bench page mounts 100 components, each
// subscribed with a generated hook; measures what handing one event to all of them costs.
//   live:      events published to a real gateway, timed inside the page from before the
//              client's socket listener to after it (per event);
//   synthetic: 2,000 envelopes handed to the same listener in a loop (mean per event).
// Reports numbers; asserts only that every hook got every event.
import assert from "node:assert/strict";
import { drive, env, publish, step, submission, until } from "./lib.mjs";

const PAGE_URL = env("PAGE_URL");
const PUBLISH_URL = env("PUBLISH_URL");
const HOOKS = 100;
const LIVE = 200;
const SYNTHETIC = 2000;

await drive({ log: () => {} }, async (browser) => {
  const page = await browser.newPage();
  await page.goto(PAGE_URL);
  await until("connected", () => page.evaluate(() => window.__client?.status === "connected"));
  for (let i = 1; i <= LIVE; i++) {
    // The default route of script_submission: the tenant room every socket is in.
    await publish(PUBLISH_URL, "script_submission", "script_submitted", submission(i));
  }
  await until(`${LIVE} events in all ${HOOKS} hooks`, () =>
    page.evaluate((n) => window.__delivered() === n, LIVE * HOOKS),
  );
  const live = (await page.evaluate(() => window.__live)).sort((a, b) => a - b);
  assert.equal(live.length, LIVE);
  const pick = (q) => live[Math.min(live.length - 1, Math.floor(q * live.length))];
  const synthetic = await page.evaluate((n) => window.__bench(n), SYNTHETIC);
  assert.equal(synthetic.delivered, SYNTHETIC * HOOKS, "every hook got every synthetic event");
  const r = (ms) => Number(ms.toFixed(4));
  step("result", {
    hooks: HOOKS,
    live_events: LIVE,
    live_median_ms: r(pick(0.5)),
    live_p95_ms: r(pick(0.95)),
    live_max_ms: r(live.at(-1)),
    synthetic_events: SYNTHETIC,
    synthetic_mean_ms: r(synthetic.perEventMs),
  });
});
