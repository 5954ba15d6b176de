// The generator: the committed output is fresh, the runtime catalog matches the document, a bad
// catalog is refused with the JSON pointer of the problem, and the types pass tsc.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { catalog } from "@realtime-gateway/protocol";

const pkg = join(dirname(fileURLToPath(import.meta.url)), "..");
const elms = JSON.parse(readFileSync(join(pkg, "../../catalog/elms.json"), "utf8"));
const generator = join(pkg, "scripts/generate.mjs");

function runGenerator(doc) {
  const dir = mkdtempSync(join(tmpdir(), "rtg-catalog-"));
  const file = join(dir, "catalog.json");
  writeFileSync(file, typeof doc === "string" ? doc : JSON.stringify(doc));
  return spawnSync(process.execPath, [generator, "--catalog", file, "--out", dir], { encoding: "utf8" });
}

test("the committed generated file is up to date", () => {
  execFileSync(process.execPath, [generator, "--check"], { stdio: "pipe" });
});

test("the runtime catalog lists every channel, event and default room of the document", () => {
  assert.equal(catalog.name, elms.name);
  assert.equal(catalog.version, elms.version);
  const fromDoc = Object.entries(elms.channels).map(([name, c]) => [
    name,
    c.defaultRoom ?? "institution:{institutionId}",
    Object.keys(c.events),
  ]);
  const fromModule = Object.entries(catalog.channels).map(([name, c]) => [name, c.defaultRoom, [...c.events]]);
  assert.deepEqual(fromModule, fromDoc);
  assert.equal(fromModule.length, 5);
  assert.equal(fromModule.flatMap(([, , events]) => events).length, 17);
});

test("a bad catalog is refused with the pointer of the problem", () => {
  const dup = structuredClone(elms);
  dup.channels.incident.events.batch_created = dup.channels.batch_update.events.batch_created;
  const cases = [
    ["{ not json", /not valid JSON/],
    [dup, /\/channels\/incident\/events\/batch_created: event batch_created is also in channel batch_update/],
    [{ ...elms, channels: { "Bad-Name": elms.channels.incident } }, /\/channels\/Bad-Name: a channel name/],
    [
      { name: "x", version: 1, channels: { feed: { events: { tick: { payload: { type: "object", properties: { a: { $ref: "#/$defs/nope" } } } } } } } },
      /\/channels\/feed\/events\/tick\/payload\/properties\/a\/\$ref: "#\/\$defs\/nope" is not/,
    ],
  ];
  for (const [doc, message] of cases) {
    const r = runGenerator(doc);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, message);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  }
});

test("a custom catalog generates its own types", () => {
  const r = runGenerator({
    name: "custom",
    version: 3,
    channels: {
      feed: {
        defaultRoom: "feed:{payload.feedId}",
        events: {
          tick: {
            description: "A tick.",
            payload: {
              type: "object",
              properties: { feedId: { type: "integer" }, tags: { type: "array", items: { enum: ["a", "b"] } } },
              required: ["feedId"],
            },
          },
        },
      },
    },
  });
  assert.equal(r.status, 0, r.stderr);
  const dir = r.stdout.match(/wrote (.*)\/catalog\.ts/)[1];
  const ts = readFileSync(join(dir, "catalog.ts"), "utf8");
  assert.match(ts, /export interface TickPayload \{\n {2}feedId: number;\n {2}tags\?: \("a" \| "b"\)\[\];\n\}/);
  assert.match(ts, /export type ChannelName =\n {2}\| "feed";/);
  assert.match(ts, /"defaultRoom": "feed:\{payload\.feedId\}"/);
});

test("the types pass tsc, and every expected type error happens", () => {
  const tsc = join(pkg, "../node_modules/typescript/bin/tsc");
  const r = spawnSync(process.execPath, [tsc, "-p", join(pkg, "test")], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stdout + r.stderr);
});
