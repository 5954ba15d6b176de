#!/usr/bin/env node
// Generates one React hook per event and one per channel of the catalog, with the names of the
// system the SDK replaces: `use<Event>Event(onEvent?, enabled?, options?)` and
// `use<Channel>Events(options?)`.
//
//   node scripts/generate.mjs           writes src/generated/hooks.ts from catalog/elms.json
//   node scripts/generate.mjs --check   exits 1 when the committed file is stale

import { readFileSync, writeFileSync, mkdirSync, existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const catalogPath = resolve(here, "../../../catalog/elms.json");
const outPath = resolve(here, "../src/generated/hooks.ts");

const pascal = (s) =>
  s
    .split(/[^A-Za-z0-9]+/)
    .filter(Boolean)
    .map((w) => w[0].toUpperCase() + w.slice(1))
    .join("");

/** A one-line doc comment from a catalog description. */
const doc = (text) => (text ? ` ${String(text).split("\n")[0].replaceAll("*/", "*\\/").trim()}` : "");

function render(catalog) {
  const out = [
    "// generated from catalog/elms.json, do not edit (npm run generate -w @realtime-gateway/react)",
    'import { channelHook, eventHook, type ChannelHook, type EventHook } from "../factories.js";',
    "",
  ];
  const names = new Set();
  const claim = (name, where) => {
    if (names.has(name)) throw new Error(`${where}: hook name ${name} is taken twice`);
    names.add(name);
    return name;
  };
  for (const [channel, spec] of Object.entries(catalog.channels)) {
    const name = claim(`use${pascal(channel)}Events`, `channels.${channel}`);
    out.push(
      `/** Every event of \`${channel}\`.${doc(spec.description)} */`,
      `export const ${name}: ChannelHook<"${channel}"> = /* @__PURE__ */ channelHook("${channel}");`,
      "",
    );
    for (const [event, ev] of Object.entries(spec.events)) {
      const hook = claim(`use${pascal(event)}Event`, `channels.${channel}.events.${event}`);
      out.push(
        `/** \`${event}\` events of \`${channel}\`.${doc(ev.description)} */`,
        `export const ${hook}: EventHook<"${channel}", "${event}"> = /* @__PURE__ */ eventHook("${channel}", "${event}");`,
        "",
      );
    }
  }
  return out.join("\n");
}

const text = render(JSON.parse(readFileSync(catalogPath, "utf8")));
if (process.argv.includes("--check")) {
  const current = existsSync(outPath) ? readFileSync(outPath, "utf8") : "";
  if (current !== text) {
    console.error(`${outPath} is stale: run \`npm run generate\` in sdk/ and commit the result`);
    process.exit(1);
  }
  console.log("generated hooks are up to date");
} else {
  mkdirSync(dirname(outPath), { recursive: true });
  writeFileSync(outPath, text);
  console.log(`wrote ${outPath}`);
}
