// What the browser tests do inside the page, with the stock client's global `io` only:
// connect, join, collect events, and note which transports the session used.
"use strict";

window.rtg = (() => {
  const state = { events: [], upgrades: [], firstTransport: null, socket: null };

  /**
   * Connects with `{ url, token, transports?, withCredentials? }` and resolves with
   * `{ firstTransport, sid, me }` on `authenticated`, or rejects with the `connect_error`
   * message (e.g. "xhr poll error", "websocket error").
   */
  function connect({ url, token, transports, withCredentials = false }) {
    return new Promise((resolve, reject) => {
      const options = { auth: { token }, reconnection: false, timeout: 10000, withCredentials };
      if (transports) options.transports = transports;
      const socket = io(url, options);
      state.socket = socket;
      socket.io.on("open", () => {
        state.firstTransport = socket.io.engine.transport.name;
        socket.io.engine.on("upgrade", (t) => state.upgrades.push(t.name));
      });
      socket.on("connect_error", (e) => reject(new Error(e.message)));
      socket.on("batch_update", (e) => state.events.push(e));
      socket.on("authenticated", (me) =>
        resolve({ firstTransport: state.firstTransport, sid: socket.io.engine.id, me }),
      );
    });
  }

  /** Joins `room`; resolves with the gateway's ack. */
  function join(room) {
    return state.socket.timeout(10000).emitWithAck("join", room);
  }

  /** The transport the session uses now. */
  function transport() {
    return state.socket.io.engine.transport.name;
  }

  function close() {
    if (state.socket) state.socket.close();
  }

  return { state, connect, join, transport, close };
})();
