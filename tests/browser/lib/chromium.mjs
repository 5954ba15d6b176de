// Launches Debian's Chromium (/usr/bin/chromium, installed by .ci/run with apt) through
// playwright-core: headless, with a fresh profile directory that is removed on close, and with
// the flags that keep it from reaching the network on its own (updates, sync, QUIC probes).
// playwright-core never downloads a browser; a missing /usr/bin/chromium fails loudly here.

import { mkdtemp, rm } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

/** Where Debian's `chromium` package puts the browser. */
export const CHROMIUM = "/usr/bin/chromium";

/** Flags of every browser the tests start. */
export const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** Longest a launch may take (a loaded CI machine starts Chromium slowly). */
const LAUNCH_TIMEOUT_MS = 60_000;

/**
 * Starts Chromium with a fresh user-data-dir. Returns `{ context, newPage, close }`:
 * `context` is playwright's BrowserContext; `close()` stops the browser and removes the
 * profile. Every page's console output and uncaught errors go to `log` (stderr by default),
 * so a failing test shows what the page said.
 */
export async function launchChromium({ log = (line) => process.stderr.write(`${line}\n`) } = {}) {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)`);
  }
  const profile = await mkdtemp(join(tmpdir(), "rtg-chromium-"));
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_FLAGS,
      timeout: LAUNCH_TIMEOUT_MS,
    });
  } catch (e) {
    await rm(profile, { recursive: true, force: true });
    throw e;
  }
  context.on("page", (page) => watch(page, log));
  for (const page of context.pages()) watch(page, log);
  return {
    context,
    /** A new tab. */
    newPage: () => context.newPage(),
    /** Stops the browser and removes its profile. */
    close: async () => {
      await context.close().catch(() => {});
      await rm(profile, { recursive: true, force: true });
    },
  };
}

function watch(page, log) {
  page.on("console", (m) => log(`[page ${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => log(`[page error] ${e.message}`));
}
