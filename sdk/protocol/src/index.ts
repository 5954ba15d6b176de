// @realtime-gateway/protocol: the catalog's types (generated from the catalog document) and the
// gateway's client protocol.
export * from "./generated/catalog.js";
export * from "./protocol.js";
