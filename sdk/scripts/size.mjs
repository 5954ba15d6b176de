#!/usr/bin/env node
// Size budget of what the browser packages add to an application: @realtime-gateway/client and
// @realtime-gateway/react bundled together, minified and gzipped, without socket.io-client,
// React and TanStack Query (the application has those anyway). Fails above the budget.
//
//   node scripts/size.mjs          prints the sizes, exits 1 over budget
import { build } from "esbuild";
import { gzipSync } from "node:zlib";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** Budget of client + react, minified and gzipped, in bytes. */
const BUDGET = 6 * 1024;
const here = dirname(fileURLToPath(import.meta.url));
const external = ["socket.io-client", "react", "react-dom", "@tanstack/react-query"];

async function measure(contents) {
  const out = await build({
    stdin: { contents, resolveDir: resolve(here, ".."), loader: "js" },
    bundle: true,
    minify: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    external,
    write: false,
    logLevel: "error",
  });
  const code = out.outputFiles[0].contents;
  return { min: code.length, gz: gzipSync(code, { level: 9 }).length };
}

const rows = [
  ["@realtime-gateway/client", 'export * from "@realtime-gateway/client";'],
  ["@realtime-gateway/react", 'export * from "@realtime-gateway/react";'],
  [
    "client + react",
    'export * from "@realtime-gateway/client"; export * from "@realtime-gateway/react";',
  ],
];
let total;
for (const [name, contents] of rows) {
  const { min, gz } = await measure(contents);
  console.log(`${name.padEnd(28)} ${String(min).padStart(6)} B minified  ${String(gz).padStart(6)} B gzipped`);
  total = gz;
}
console.log(`budget (client + react, gzipped): ${total} of ${BUDGET} B`);
if (total > BUDGET) {
  console.error(`over budget by ${total - BUDGET} B`);
  process.exit(1);
}
