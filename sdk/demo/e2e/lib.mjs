// Shared by the demo's browser scripts: settings from the environment, steps reported to the
// Rust test on stdout (one JSON object per line), its answers read from stdin, publishing over
// HTTP, and waits with deadlines.
import { createInterface } from "node:readline";
import { launchChromium } from "../../../tests/browser/lib/chromium.mjs";

export function env(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (tests/sdk.rs sets it)`);
  return v;
}

/** Reports a step to the Rust test. */
export const step = (name, data = {}) => console.log(JSON.stringify({ step: name, ...data }));

const lines = [];
const waiting = [];
createInterface({ input: process.stdin }).on("line", (line) => {
  const w = waiting.shift();
  if (w) w(JSON.parse(line));
  else lines.push(JSON.parse(line));
});

/** The Rust test's next answer (a JSON line on stdin). */
export const answer = () =>
  lines.length ? Promise.resolve(lines.shift()) : new Promise((resolve) => waiting.push(resolve));

/** Waits until `cond()` resolves truthy (polling every 25 ms); fails with `what` after `ms`. */
export async function until(what, cond, ms = 15_000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await cond();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Lets anything wrongly on its way arrive before a test checks it did not. */
export const quiet = (ms = 600) => new Promise((r) => setTimeout(r, ms));

/** Publishes `channel`/`event` with `payload` of tenant 1 (to `rooms`, or the default route) on `url`. */
export async function publish(url, channel, event, payload, rooms) {
  const res = await fetch(`${url}/v1/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${env("PUBLISH_KEY")}`, "content-type": "application/json" },
    body: JSON.stringify({ channel, event, institutionId: 1, payload: { ...payload, institutionId: 1 }, rooms }),
  });
  const body = await res.json();
  if (res.status !== 200) throw new Error(`publish on ${url} answered ${res.status}: ${JSON.stringify(body)}`);
  return body;
}

/** A `script_submitted` payload for student `n` in batch `batchId`. */
export const submission = (n, batchId = 456) => ({
  scriptId: n,
  batchId,
  studentId: 1000 + n,
  studentName: `Student ${n}`,
  courseCode: "CS101",
  courseName: "Intro",
  submittedAt: "2026-11-28T10:00:00Z",
});

/**
 * Runs `body(browser)` with Debian's Chromium (`options` as for launchChromium): a failure is
 * reported as the step `failed`; the browser is closed and the process exits either way.
 */
export async function drive(options, body) {
  const browser = await launchChromium(options);
  try {
    await body(browser);
  } catch (e) {
    step("failed", { error: String(e?.stack ?? e) });
    process.exitCode = 1;
  } finally {
    await browser.close();
    process.exit();
  }
}
