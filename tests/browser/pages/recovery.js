// The README's "Never missing an event" recipe, written with the stock client's global `io`
// only: positions from `authenticated`, join acks and events; `since` sent on every
// (re)connect, in `auth` for the automatic rooms and in `join` for the others; the client left
// to reconnect by itself. Everything the page sees goes into one log, in arrival order, which
// the browser failover tests read.
"use strict";

window.rtgRecovery = (() => {
  const log = [];
  const positions = {}; // room -> { epoch, offset }
  let socket = null;
  let config = null;
  let rooms = [];
  // While set, `auth` waits for it: the test holds the next (re)connect until it has published
  // the events the page must then recover.
  let gate = null;
  let openGate = null;
  let connects = 0;

  const remember = (entries) =>
    entries.forEach(({ room, epoch, offset }) => (positions[room] = { epoch, offset }));

  /** The client options of a configuration (the same three as tests/node/lib.mjs). */
  function optionsOf(name) {
    if (name === "default") return {};
    if (name === "websocket" || name === "polling") return { transports: [name], upgrade: false };
    throw new Error(`unknown configuration ${name}`);
  }

  /** Connects to `url` as `token` under configuration `name` and joins `joinRooms` on every connect. */
  function start({ url, token, config: name, rooms: joinRooms }) {
    config = name;
    rooms = joinRooms;
    socket = io(url, {
      ...optionsOf(name),
      auth: (cb) => (gate ?? Promise.resolve()).then(() => cb({ token, since: positions })),
      reconnectionDelay: 100,
      reconnectionDelayMax: 500,
      randomizationFactor: 0,
      timeout: 10000,
    });
    socket.io.on("open", () => {
      const engine = socket.io.engine;
      log.push({ kind: "open", transport: engine.transport.name });
      engine.on("upgrade", (t) => log.push({ kind: "upgrade", transport: t.name }));
      engine.on("upgradeError", (e) => log.push({ kind: "upgrade_error", message: String(e?.message ?? e) }));
    });
    socket.on("connect", () => {
      connects += 1;
      const n = connects;
      log.push({ kind: "connect", n, transport: socket.io.engine.transport.name });
      for (const room of rooms) {
        socket.timeout(10000).emit("join", { room, since: positions[room] }, (err, ack) => {
          log.push({ kind: "ack", n, room, ack: ack ?? null, error: err ? String(err.message) : null });
          if (ack?.ok) remember([ack]);
        });
      }
    });
    // Before `connect`: the stock client hands out what came with the connection first.
    socket.on("authenticated", (me) => {
      log.push({ kind: "authenticated", rooms: me.rooms });
      remember(me.rooms);
    });
    socket.on("disconnect", (reason) => log.push({ kind: "disconnect", reason }));
    socket.on("connect_error", (e) => log.push({ kind: "connect_error", message: e.message }));
    socket.on("resync", (r) => log.push({ kind: "resync", ...r }));
    socket.on("batch_update", (e) => {
      log.push({ kind: "event", room: e.room, offset: e.offset, id: e.id });
      if (positions[e.room]) positions[e.room].offset = e.offset;
    });
  }

  /** Whether the `n`-th connect is complete: authenticated, every room's join answered, and
   * (under the default options) the session upgraded to WebSocket. */
  function connected(n) {
    if (connects < n || !socket.connected) return false;
    if (log.filter((e) => e.kind === "authenticated").length < n) return false;
    const acks = log.filter((e) => e.kind === "ack" && e.n === n);
    if (!rooms.every((room) => acks.some((e) => e.room === room))) return false;
    return config !== "default" || socket.io.engine.transport.name === "websocket";
  }

  /** How many events of `room` arrived. */
  const events = (room) => log.filter((e) => e.kind === "event" && e.room === room).length;

  /** Makes the next (re)connect wait, before it sends its `auth`, until `release()`. */
  function hold() {
    gate = new Promise((resolve) => (openGate = resolve));
  }

  function release() {
    gate = null;
    openGate?.();
  }

  /** What the test reads: the log, the positions and the transport in use now. */
  const snapshot = () => ({
    log,
    positions,
    connects,
    transport: socket?.io.engine?.transport?.name ?? null,
  });

  function close() {
    socket?.close();
  }

  return { start, connected, events, hold, release, snapshot, close };
})();
