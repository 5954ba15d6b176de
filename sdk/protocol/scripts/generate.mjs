#!/usr/bin/env node
// Generates the catalog's TypeScript (payload interfaces, channel and event unions, the channel →
// event → payload map and a small runtime description) from the catalog JSON document.
//
//   node scripts/generate.mjs                 writes src/generated/catalog.ts from catalog/elms.json
//   node scripts/generate.mjs --check         exits 1 when the committed file is stale
//   node scripts/generate.mjs --catalog FILE --out DIR   another catalog, another place
//
// The gateway validates payloads with the catalog's JSON Schemas; this script only turns them
// into types, so it understands the part of JSON Schema that has a TypeScript meaning (type,
// properties, required, items, enum, const, anyOf/oneOf/allOf, $ref to #/$defs/...) and ignores
// value constraints (pattern, minimum, minLength...), which types cannot express.

import { readFileSync, writeFileSync, mkdirSync, existsSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, "../../..");

/** Names the hand-written part of the package exports; a `$defs` entry may not take one. */
const RESERVED_TYPE_NAMES = new Set([
  "ChannelName", "EventName", "EventsOf", "PayloadOf", "ChannelOf", "CatalogMap", "Delivered",
  "Position", "RoomPosition", "JoinRequest", "JoinAck", "JoinOk", "LeaveAck", "RefreshAck",
  "Authenticated", "AuthError", "Resync", "GatewayError", "TokenErrorCode", "JoinErrorCode",
  "PublishErrorCode", "ErrorCode", "RecoveryReason", "ErrorReply", "Pong", "catalog",
  "PayloadOfEvent", "HandshakeErrorCode", "AuthenticateAck", "LeaveRequest", "RefreshRequest",
  "PublishRequest", "PublishResult",
]);

/** Same rule as the gateway's: 1-64 of a-z, 0-9, `_`, starting with a letter. */
const NAME = /^[a-z][a-z0-9_]{0,63}$/;

class CatalogError extends Error {
  constructor(pointer, message) {
    super(`${pointer || "/"}: ${message}`);
  }
}

/** Escapes one JSON Pointer token (RFC 6901). */
const token = (s) => String(s).replaceAll("~", "~0").replaceAll("/", "~1");

const pascal = (s) =>
  s
    .split(/[^A-Za-z0-9]+/)
    .filter(Boolean)
    .map((w) => w[0].toUpperCase() + w.slice(1))
    .join("");

const isObject = (v) => typeof v === "object" && v !== null && !Array.isArray(v);

/** A doc comment, or nothing. */
function doc(text, indent) {
  if (typeof text !== "string" || text.trim() === "") return "";
  const lines = text.replaceAll("*/", "*\\/").trim().split("\n");
  if (lines.length === 1) return `${indent}/** ${lines[0]} */\n`;
  return `${indent}/**\n${lines.map((l) => `${indent} * ${l}`.trimEnd()).join("\n")}\n${indent} */\n`;
}

const propertyKey = (name) => (/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(name) ? name : JSON.stringify(name));

/** Wraps a union member that would bind wrongly inside `A | B` or `A[]`. */
const paren = (t) => (/^[A-Za-z0-9_$.<>, ]+$/.test(t) || /^"(?:[^"\\]|\\.)*"$/.test(t) ? t : `(${t})`);

function union(types) {
  const unique = [...new Set(types)];
  if (unique.includes("unknown")) return "unknown";
  return unique.length === 0 ? "never" : unique.join(" | ");
}

/** The TypeScript type of a JSON Schema, `pointer` naming where it is for error messages. */
function tsType(schema, pointer, defs, indent) {
  if (schema === true || (isObject(schema) && Object.keys(schema).length === 0)) return "unknown";
  if (schema === false) return "never";
  if (!isObject(schema)) throw new CatalogError(pointer, "a schema must be an object or a boolean");
  if ("$ref" in schema) {
    const m = /^#\/\$defs\/([^/]+)$/.exec(schema.$ref);
    if (!m || !(m[1] in defs)) {
      throw new CatalogError(`${pointer}/$ref`, `${JSON.stringify(schema.$ref)} is not a #/$defs/... entry of the catalog`);
    }
    return defs[m[1]];
  }
  if ("const" in schema) return JSON.stringify(schema.const);
  if (Array.isArray(schema.enum)) return union(schema.enum.map((v) => JSON.stringify(v)));
  for (const key of ["anyOf", "oneOf"]) {
    if (Array.isArray(schema[key])) {
      return union(schema[key].map((s, i) => paren(tsType(s, `${pointer}/${key}/${i}`, defs, indent))));
    }
  }
  if (Array.isArray(schema.allOf)) {
    return schema.allOf.map((s, i) => paren(tsType(s, `${pointer}/allOf/${i}`, defs, indent))).join(" & ");
  }
  if (Array.isArray(schema.type)) {
    return union(schema.type.map((t) => tsType({ ...schema, type: t }, pointer, defs, indent)));
  }
  switch (schema.type) {
    case "string":
      return "string";
    case "integer":
    case "number":
      return "number";
    case "boolean":
      return "boolean";
    case "null":
      return "null";
    case "array": {
      const items = schema.items === undefined ? "unknown" : tsType(schema.items, `${pointer}/items`, defs, indent);
      return `${paren(items)}[]`;
    }
    case "object":
      return objectType(schema, pointer, defs, indent);
    case undefined:
      return "unknown";
    default:
      throw new CatalogError(`${pointer}/type`, `unknown type ${JSON.stringify(schema.type)}`);
  }
}

/** An object schema as an inline object type (properties) or a record. */
function objectType(schema, pointer, defs, indent) {
  const props = schema.properties ?? {};
  if (!isObject(props)) throw new CatalogError(`${pointer}/properties`, "must be an object");
  const required = new Set(schema.required ?? []);
  const names = Object.keys(props);
  if (names.length === 0) {
    const extra = isObject(schema.additionalProperties)
      ? tsType(schema.additionalProperties, `${pointer}/additionalProperties`, defs, indent)
      : "unknown";
    return `Record<string, ${extra}>`;
  }
  const inner = indent + "  ";
  const lines = names.map((name) => {
    const p = props[name];
    const t = tsType(p, `${pointer}/properties/${token(name)}`, defs, inner);
    const optional = required.has(name) ? "" : "?";
    return `${doc(isObject(p) ? p.description : undefined, inner)}${inner}${propertyKey(name)}${optional}: ${t};\n`;
  });
  return `{\n${lines.join("")}${indent}}`;
}

/** Checks the catalog's shape and builds the generated module's text. */
export function generate(catalog, sourceName) {
  if (!isObject(catalog)) throw new CatalogError("", "the catalog must be a JSON object");
  if (typeof catalog.name !== "string" || catalog.name === "") throw new CatalogError("/name", "must be a non-empty string");
  if (!Number.isInteger(catalog.version)) throw new CatalogError("/version", "must be an integer");
  if (!isObject(catalog.channels) || Object.keys(catalog.channels).length === 0) {
    throw new CatalogError("/channels", "must be an object with at least one channel");
  }
  const rawDefs = catalog.$defs ?? {};
  if (!isObject(rawDefs)) throw new CatalogError("/$defs", "must be an object");
  const defs = {};
  for (const name of Object.keys(rawDefs)) {
    const typeName = pascal(name);
    if (!typeName || RESERVED_TYPE_NAMES.has(typeName) || Object.values(defs).includes(typeName)) {
      throw new CatalogError(`/$defs/${token(name)}`, `gives the type name ${JSON.stringify(typeName)}, which is taken`);
    }
    defs[name] = typeName;
  }

  let out = `// generated from ${sourceName}, do not edit (npm run generate)\n\n`;
  for (const [name, schema] of Object.entries(rawDefs)) {
    out += doc(isObject(schema) ? (schema.description ?? schema.title) : undefined, "");
    out += `export type ${defs[name]} = ${tsType(schema, `/$defs/${token(name)}`, defs, "")};\n\n`;
  }

  const seen = new Map(); // event name -> channel
  const typeNames = new Set([...Object.values(defs), ...RESERVED_TYPE_NAMES]);
  const channels = [];
  for (const [channel, spec] of Object.entries(catalog.channels)) {
    const at = `/channels/${token(channel)}`;
    if (!NAME.test(channel)) throw new CatalogError(at, "a channel name is 1-64 characters of a-z, 0-9 or '_', starting with a letter");
    if (!isObject(spec) || !isObject(spec.events) || Object.keys(spec.events).length === 0) {
      throw new CatalogError(`${at}/events`, "must be an object with at least one event");
    }
    const events = [];
    for (const [event, def] of Object.entries(spec.events)) {
      const eat = `${at}/events/${token(event)}`;
      if (!NAME.test(event)) throw new CatalogError(eat, "an event name is 1-64 characters of a-z, 0-9 or '_', starting with a letter");
      if (seen.has(event)) throw new CatalogError(eat, `event ${event} is also in channel ${seen.get(event)}`);
      seen.set(event, channel);
      if (!isObject(def) || !isObject(def.payload)) throw new CatalogError(`${eat}/payload`, "must be a JSON Schema object");
      if (def.payload.type !== "object") throw new CatalogError(`${eat}/payload/type`, 'a payload schema must have "type": "object"');
      const typeName = `${pascal(event)}Payload`;
      if (typeNames.has(typeName)) throw new CatalogError(eat, `gives the type name ${typeName}, which is taken`);
      typeNames.add(typeName);
      events.push({ event, typeName, description: def.description, payload: def.payload, at: `${eat}/payload` });
    }
    const defaultRoom = spec.defaultRoom ?? "institution:{institutionId}";
    if (typeof defaultRoom !== "string") throw new CatalogError(`${at}/defaultRoom`, "must be a string");
    channels.push({ channel, description: spec.description, defaultRoom, events });
  }

  for (const { channel, events } of channels) {
    for (const e of events) {
      out += doc(`${e.description ?? ""}\n\nPayload of \`${channel}\` / \`${e.event}\`.`.trim(), "");
      const body = tsType(e.payload, e.at, defs, "");
      out += body.startsWith("{")
        ? `export interface ${e.typeName} ${body}\n\n`
        : `export type ${e.typeName} = ${body};\n\n`;
    }
  }

  const literal = (s) => JSON.stringify(s);
  out += "/** Every channel of the catalog; also the Socket.IO event name a client listens to. */\n";
  out += `export type ChannelName =\n${channels.map((c) => `  | ${literal(c.channel)}`).join("\n")};\n\n`;
  out += "/** Every event type of the catalog, all channels together (names are unique across channels). */\n";
  out += `export type EventName =\n${[...seen.keys()].map((e) => `  | ${literal(e)}`).join("\n")};\n\n`;
  out += "/** Channel → event → payload. */\nexport interface CatalogMap {\n";
  for (const c of channels) {
    out += doc(c.description, "  ");
    out += `  ${c.channel}: {\n${c.events.map((e) => `    ${e.event}: ${e.typeName};\n`).join("")}  };\n`;
  }
  out += "}\n\n";

  const runtime = {
    name: catalog.name,
    version: catalog.version,
    channels: Object.fromEntries(
      channels.map((c) => [c.channel, { defaultRoom: c.defaultRoom, events: c.events.map((e) => e.event) }]),
    ),
  };
  out += "/**\n * What the catalog holds, at run time: channels, their default rooms and their events (no schemas,\n";
  out += " * to keep bundles small; `GET /v1/catalog` on a gateway serves the whole document).\n */\n";
  out += `export const catalog = ${JSON.stringify(runtime, null, 2)} as const;\n`;
  return out;
}

function main() {
  const { values } = parseArgs({
    options: {
      catalog: { type: "string", default: join(repoRoot, "catalog", "elms.json") },
      out: { type: "string", default: join(here, "..", "src", "generated") },
      check: { type: "boolean", default: false },
    },
  });
  const file = resolve(values.catalog);
  const rel = relative(repoRoot, file);
  const sourceName = rel.startsWith("..") ? file : rel.split(sep).join("/");
  let text;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    console.error(`${file}: cannot read the catalog: ${e.message}`);
    process.exit(2);
  }
  let generated;
  try {
    generated = generate(JSON.parse(text), sourceName);
  } catch (e) {
    console.error(`${file}: ${e instanceof SyntaxError ? `not valid JSON: ${e.message}` : e.message}`);
    process.exit(2);
  }
  const target = join(resolve(values.out), "catalog.ts");
  if (values.check) {
    const current = existsSync(target) ? readFileSync(target, "utf8") : "";
    if (current !== generated) {
      console.error(`${target} is stale: run \`npm run generate\` in sdk/ and commit the result`);
      process.exit(1);
    }
    console.log(`${target} is up to date with ${sourceName}`);
    return;
  }
  mkdirSync(resolve(values.out), { recursive: true });
  writeFileSync(target, generated);
  console.log(`wrote ${target} from ${sourceName}`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) main();
