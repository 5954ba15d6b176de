import { io, type Socket } from "socket.io-client";
import type {
  Authenticated,
  AuthError,
  ChannelName,
  Delivered,
  ErrorCode,
  EventsOf,
  GatewayError,
  JoinAck,
  Position,
  RefreshAck,
  Resync,
  RoomPosition,
} from "@realtime-gateway/protocol";
import type { PositionStorage } from "./storage.js";

/** Where the connection stands. `connected` means authenticated and in its rooms. */
export type Status = "connecting" | "connected" | "reconnecting" | "disconnected" | "unauthorized";

/** A transport of socket.io-client. */
export type Transport = "websocket" | "polling";

/** Options of {@link createRealtimeClient}. */
export interface RealtimeClientOptions {
  /** Gateway (or load balancer) URL, e.g. `https://rt.example.com`. */
  url: string;
  /** Returns a token; called for every handshake and again before the token expires. */
  getToken: () => string | Promise<string>;
  /** Default `["websocket", "polling"]`: WebSocket first, long-polling as the fallback. */
  transports?: Transport[];
  /** Keeps positions across page reloads (see `sessionPositions`). */
  storage?: PositionStorage;
  /** Logs connects, authentication, joins, events and resyncs to the console. */
  debug?: boolean;
  /** Opens the connection at once (default). `false`: call `connect()`. */
  autoConnect?: boolean;
  /** Socket.IO path, default `/socket.io`. */
  path?: string;
}

/** An event handler, typed by channel and event. */
export type Handler<C extends ChannelName, E extends EventsOf<C> = EventsOf<C>> = (event: Delivered<C, E>) => void;

/** What a handler listens to beyond its channel. */
export interface ListenOptions {
  /** Only events of this room; without it, each event once whatever room brought it. */
  room?: string;
}

/** A join that succeeded: the room and where the client stands in it. */
export type Joined = Extract<JoinAck, { ok: true }>;

/** Cancels a subscription. */
export type Unsubscribe = () => void;

/** A failure the gateway answered with (`code` is machine-readable). */
export class RealtimeError extends Error implements GatewayError {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "RealtimeError";
  }
}

/** A connection to the gateway that never misses an event of the rooms it is in. */
export interface RealtimeClient {
  /** Current status. */
  readonly status: Status;
  /** Why the status is `unauthorized` (the gateway's code), otherwise undefined. */
  readonly error: GatewayError | undefined;
  /** Who the gateway says we are (after authentication). */
  readonly me: Authenticated | undefined;
  /** The underlying socket.io-client socket (an escape hatch: prefer the methods). */
  readonly socket: Socket;
  /** Calls `cb` on every status change; returns its unsubscribe. */
  onStatus(cb: (status: Status) => void): Unsubscribe;
  /** Every event of `channel`. */
  on<C extends ChannelName>(channel: C, handler: Handler<C>, options?: ListenOptions): Unsubscribe;
  /** Events of `channel` named `event`, payload narrowed. */
  on<C extends ChannelName, E extends EventsOf<C>>(
    channel: C,
    event: E,
    handler: Handler<C, E>,
    options?: ListenOptions,
  ): Unsubscribe;
  /** Calls `cb` when `room`'s state must be refetched (`"*"`: any room): on `resync` and on `recovered: false`. */
  onResync(room: string, cb: (room: string) => void): Unsubscribe;
  /** Joins `room` (reference-counted: only the first join goes out). */
  join(room: string): Promise<Joined>;
  /** Undoes one `join`; the last one leaves the room. */
  leave(room: string): void;
  /** Rooms joined on request. */
  rooms(): string[];
  /** Where the client stands in each room it heard of. */
  positions(): Record<string, Position>;
  /** Opens the connection (idempotent); after `unauthorized`, tries again with a new token. */
  connect(): void;
  /** Closes the connection for good (status `disconnected`); `connect()` opens it again. */
  close(): void;
  /** Logs to the console with the client's prefix when `debug` is on; otherwise does nothing. */
  log(...args: unknown[]): void;
}

interface Listener {
  c: string;
  e: string | undefined;
  r: string | undefined;
  f: (event: Delivered) => void;
}

interface Wanted {
  /** How many `join` calls are not yet undone. */
  n: number;
  p: Promise<Joined>;
  ok: (ack: Joined) => void;
  fail: (e: RealtimeError) => void;
  settled?: boolean;
  /** A pending leave (deferred so an unmount followed by a mount sends nothing). */
  t?: ReturnType<typeof setTimeout>;
}

/** Codes of a handshake refused for its token: retrying with the same token cannot help. */
const isTokenError = (code: string) => code.startsWith("token_") || code === "auth_timeout";
/** How many recent event ids are kept to hand room-less handlers each event once. */
const RECENT_IDS = 1024;
/** Refresh this fraction of the token's remaining life before `exp` (at most a minute). */
const REFRESH_LEAD = 1 / 3;

/** Reconnect delay after `attempt` failures: 1 s, then doubling to 5 s, with jitter. */
const backoff = (attempt: number) => Math.min(5000, 1000 * 2 ** attempt * (1 + Math.random() / 2));

/**
 * Creates a client. It keeps every room's position and sends it on every reconnect, drops
 * events it has already seen, re-joins its rooms, refreshes its token before it expires and
 * reconnects forever (1–5 s backoff with jitter).
 */
export function createRealtimeClient(options: RealtimeClientOptions): RealtimeClient {
  const { getToken, storage } = options;
  const log: (...args: unknown[]) => void = options.debug
    ? (...args) => console.log("[realtime]", ...args)
    : () => {};
  const positions: Record<string, Position> = storage?.load() ?? {};
  const wanted = new Map<string, Wanted>();
  const listeners = new Map<string, Set<Listener>>();
  const resyncs = new Map<string, Set<(room: string) => void>>();
  const statusCbs = new Set<(s: Status) => void>();
  const recent = new Set<string>();
  let status: Status = "disconnected";
  let error: GatewayError | undefined;
  let me: Authenticated | undefined;
  let authed = false;
  let closed = true;
  let saving = false;
  let refreshTimer: ReturnType<typeof setTimeout> | undefined;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  let attempts = 0;
  let authError: AuthError | undefined;

  const socket: Socket = io(options.url, {
    autoConnect: false,
    // One connection per client: never share a cached Manager with another client.
    forceNew: true,
    transports: options.transports ?? ["websocket", "polling"],
    path: options.path,
    // Never give up; 1–5 s between attempts with jitter (1.5 s ± 1/3, doubling, capped at 5 s).
    reconnectionAttempts: Infinity,
    reconnectionDelay: 1500,
    reconnectionDelayMax: 5000,
    randomizationFactor: 1 / 3,
    auth: (cb) => {
      Promise.resolve()
        .then(getToken)
        .then(
          (token) => cb({ token, since: sinceAll() }),
          (e: unknown) => {
            // No token now: drop this attempt; the manager retries with backoff.
            log("getToken failed; retrying", e);
            socket.io.engine?.close();
          },
        );
    },
  });

  const setStatus = (next: Status, why?: GatewayError) => {
    error = why;
    if (next === status) return;
    status = next;
    log("status", next, why ?? "");
    for (const cb of [...statusCbs]) cb(next);
  };

  const save = () => {
    if (!storage || saving) return;
    saving = true;
    queueMicrotask(() => {
      saving = false;
      storage.save(positions);
    });
  };

  /** A copy of every position (what `auth.since` carries, and `positions()` returns). */
  const sinceAll = () => {
    const out: Record<string, Position> = {};
    for (const room in positions) out[room] = { ...positions[room]! };
    return out;
  };

  const resync = (room: string) => {
    log("resync", room);
    for (const key of [room, "*"]) for (const cb of [...(resyncs.get(key) ?? [])]) cb(room);
  };

  /** Takes a position from `authenticated` or a join ack; fires resync on a failed recovery. */
  const place = (entry: RoomPosition) => {
    const { room, epoch, offset } = entry;
    const known = positions[room];
    if (epoch != null && offset != null) {
      // After a successful recovery the replayed events (possibly still on their way) move the
      // position; otherwise the answer is where the client stands now.
      if (!(entry.recovered && known?.epoch === epoch)) {
        positions[room] = {
          epoch,
          offset: known?.epoch === epoch && entry.recovered !== false ? Math.max(known.offset, offset) : offset,
        };
        save();
      }
    }
    if (entry.recovered === false) resync(room);
  };

  const sendJoin = (room: string) => {
    const since = positions[room];
    log("join", room, since ?? "");
    socket.emit("join", since ? { room, since } : { room }, (ack: JoinAck) => {
      const w = wanted.get(room);
      if (!ack.ok) {
        log("join refused", room, ack.error);
        if (w && !w.settled) {
          w.settled = true;
          w.fail(new RealtimeError(ack.error.code, ack.error.message));
        }
        return;
      }
      if (!w) return;
      log("joined", ack);
      place(ack);
      if (!w.settled) {
        w.settled = true;
        w.ok(ack);
      }
    });
  };

  const scheduleRefresh = (exp: number) => {
    clearTimeout(refreshTimer);
    const left = exp * 1000 - Date.now();
    refreshTimer = setTimeout(refresh, Math.max(0, left - Math.min(60_000, left * REFRESH_LEAD)));
  };

  const refresh = () => {
    Promise.resolve()
      .then(getToken)
      .then((token) => {
        if (!authed) return;
        log("refresh");
        socket.timeout(10_000).emit("refresh", { token }, (err: Error | null, ack: RefreshAck) => {
          if (!err && ack.ok) {
            log("refreshed until", ack.exp, ack.left);
            return scheduleRefresh(ack.exp);
          }
          log("refresh failed", err ?? ack);
          retryRefresh();
        });
      })
      .catch((e: unknown) => {
        log("getToken failed", e);
        retryRefresh();
      });
  };

  const retryRefresh = () => {
    if (authed) refreshTimer = setTimeout(refresh, 1000);
  };

  const receive = (name: string, e: Delivered) => {
    if (typeof e !== "object" || e === null || e.channel !== name || typeof e.offset !== "number") return;
    const known = positions[e.room];
    if (known) {
      if (e.offset <= known.offset) {
        log("duplicate dropped", e.room, e.offset);
        return;
      }
      known.offset = e.offset;
      save();
    }
    const fresh = !recent.has(e.id);
    if (fresh) {
      recent.add(e.id);
      if (recent.size > RECENT_IDS) recent.delete(recent.values().next().value!);
    }
    log("event", e.channel, e.event, e.room, e.offset);
    const set = listeners.get(name);
    if (!set) return;
    for (const l of set) {
      if ((l.e === undefined || l.e === e.event) && (l.r === undefined ? fresh : l.r === e.room)) {
        try {
          l.f(e);
        } catch (err) {
          // One failing handler must not starve the others or break position tracking.
          console.error("[realtime] handler failed", err);
        }
      }
    }
  };

  socket.onAny(receive);

  socket.on("connect", () => {
    attempts = 0;
    authError = undefined;
    log("connected", socket.id, "transport", socket.io.engine?.transport.name);
  });

  socket.on("authenticated", (a: Authenticated) => {
    me = a;
    authed = true;
    log("authenticated", a);
    for (const entry of a.rooms) place(entry);
    scheduleRefresh(a.exp);
    setStatus("connected");
    for (const room of wanted.keys()) sendJoin(room);
  });

  socket.on("resync", (r: Resync) => {
    if ("epoch" in r) {
      positions[r.room] = { epoch: r.epoch, offset: r.offset };
      save();
    }
    resync(r.room);
  });

  socket.on("auth_error", (e: AuthError) => {
    log("auth_error", e);
    authError = e;
    setStatus("unauthorized", e);
  });

  socket.on("connect_error", (err: Error & { data?: unknown }) => {
    log("connect_error", err.message);
    if (!socket.active) {
      // Refused by the gateway's middleware: the stock client does not retry.
      if (isTokenError(err.message)) {
        setStatus("unauthorized", { code: err.message as ErrorCode, message: describe(err) });
      } else {
        retry();
      }
    }
  });

  socket.on("disconnect", (reason: string) => {
    authed = false;
    clearTimeout(refreshTimer);
    log("disconnected", reason);
    if (closed) return setStatus("disconnected");
    if (reason === "io server disconnect") {
      // The gateway ended the session. After an expired token, a fresh one may do; after any
      // other auth error, stay unauthorized until `connect()`.
      if (authError && authError.code !== "token_expired") return;
      return retry();
    }
    setStatus("reconnecting");
  });

  const retry = () => {
    setStatus("reconnecting", error);
    clearTimeout(retryTimer);
    retryTimer = setTimeout(() => closed || socket.connect(), backoff(attempts++));
  };

  const client: RealtimeClient = {
    get status() {
      return status;
    },
    get error() {
      return error;
    },
    get me() {
      return me;
    },
    socket,
    onStatus(cb) {
      statusCbs.add(cb);
      return () => statusCbs.delete(cb);
    },
    on(channel: string, a: unknown, b?: unknown, c?: unknown): Unsubscribe {
      const named = typeof a === "string";
      const l: Listener = {
        c: channel,
        e: named ? a : undefined,
        f: (named ? b : a) as Listener["f"],
        r: ((named ? c : b) as ListenOptions | undefined)?.room,
      };
      let set = listeners.get(channel);
      if (!set) listeners.set(channel, (set = new Set()));
      set.add(l);
      return () => set.delete(l);
    },
    onResync(room, cb) {
      let set = resyncs.get(room);
      if (!set) resyncs.set(room, (set = new Set()));
      set.add(cb);
      return () => set.delete(cb);
    },
    join(room) {
      let w = wanted.get(room);
      if (w) {
        w.n++;
        clearTimeout(w.t);
        return w.p;
      }
      let ok!: Wanted["ok"], fail!: Wanted["fail"];
      const p = new Promise<Joined>((res, rej) => ((ok = res), (fail = rej)));
      // Callers may ignore the result; a refused join is then only logged.
      p.catch(() => {});
      wanted.set(room, (w = { n: 1, p, ok, fail }));
      if (authed) sendJoin(room);
      return p;
    },
    leave(room) {
      const w = wanted.get(room);
      if (!w || --w.n > 0) return;
      clearTimeout(w.t);
      w.t = setTimeout(() => {
        if (w.n > 0 || wanted.get(room) !== w) return;
        wanted.delete(room);
        delete positions[room];
        save();
        log("leave", room);
        if (authed) socket.emit("leave", { room });
      });
    },
    rooms: () => [...wanted.keys()],
    positions: sinceAll,
    connect() {
      closed = false;
      // Connected or retrying already; otherwise (new, closed, or refused) open it again.
      if (socket.active) return;
      clearTimeout(retryTimer);
      setStatus("connecting");
      socket.connect();
    },
    close() {
      closed = true;
      clearTimeout(retryTimer);
      clearTimeout(refreshTimer);
      socket.disconnect();
      setStatus("disconnected");
    },
    log,
  };
  if (options.autoConnect !== false) client.connect();
  return client;
}

const describe = (err: Error & { data?: unknown }) => {
  const data = err.data as { message?: string } | undefined;
  return data?.message ?? err.message;
};
