// The two ways an event enters the system: a gateway's HTTP API (validated there against its
// catalog), or the `rtg_publish` Redis function every gateway loads (one atomic call per room).

import { catalog, type PublishResult } from "@realtime-gateway/protocol";
import { PublishError } from "./errors.js";

/** One event as both transports take it (`rooms` absent: the channel's default room). */
export interface Envelope {
  channel: string;
  event: string;
  institutionId: string | number;
  payload: object;
  rooms?: string[] | undefined;
  id?: string | undefined;
  timestamp?: number | undefined;
}

/** Sends events somewhere; errors are `PublishError`s. */
export interface Transport {
  /** Fixes what must stay the same across retries of one event (its id, in Redis mode). */
  prepare(event: Envelope): Envelope;
  publish(event: Envelope): Promise<PublishResult>;
  publishBatch(events: Envelope[]): Promise<PublishResult[]>;
}

/** The body of a gateway publish request: the envelope without absent fields. */
function body(e: Envelope): Record<string, unknown> {
  return Object.fromEntries(Object.entries(e).filter(([, v]) => v !== undefined));
}

/** Publishing through `POST /v1/publish` and `POST /v1/publish/batch`. */
export class HttpTransport implements Transport {
  constructor(
    private readonly url: string,
    private readonly apiKey: string,
    private readonly timeoutMs: number,
  ) {}

  prepare(event: Envelope): Envelope {
    return event;
  }

  async publish(event: Envelope): Promise<PublishResult> {
    return (await this.post("/v1/publish", body(event))) as PublishResult;
  }

  async publishBatch(events: Envelope[]): Promise<PublishResult[]> {
    const answer = (await this.post("/v1/publish/batch", events.map(body))) as { results: PublishResult[] };
    return answer.results;
  }

  private async post(path: string, json: unknown): Promise<unknown> {
    const url = `${this.url.replace(/\/+$/, "")}${path}`;
    let response: Response;
    try {
      response = await fetch(url, {
        method: "POST",
        headers: { authorization: `Bearer ${this.apiKey}`, "content-type": "application/json" },
        body: JSON.stringify(json),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (cause) {
      // Not retried: the request may have reached the gateway and been published.
      throw new PublishError("network_error", `cannot reach ${url}: ${(cause as Error).message}`, { cause });
    }
    const text = await response.text();
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    if (response.ok && parsed !== undefined) return parsed;
    const error = (parsed as { error?: { code?: string; message?: string; field?: string } } | undefined)?.error;
    const retryAfter = Number(response.headers.get("retry-after"));
    throw new PublishError(
      (error?.code ?? (response.status === 503 ? "bus_unavailable" : "bus_rejected")) as PublishError["code"],
      error?.message ?? `${response.status} ${response.statusText}: ${text.slice(0, 200)}`,
      {
        field: error?.field,
        status: response.status,
        retryAfterMs: Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter * 1000 : undefined,
      },
    );
  }
}

/** What the publisher needs of a `redis` v4 client (`createClient()`, connected). */
export interface RedisClientLike {
  fCall(name: string, options: { keys: string[]; arguments: string[] }): Promise<unknown>;
}

/** Settings that must match the gateways' (`GATEWAY_REDIS_PREFIX`, history length and TTL). */
export interface RedisSettings {
  /** Key prefix (default `rtg`). */
  prefix?: string;
  /** Events kept per room (default 1000). */
  historyMaxLen?: number;
  /** History lifetime in seconds after a room's last event (default 6 h). */
  historyTtlSecs?: number;
  /** Longest room name (default 128). */
  maxRoomLen?: number;
}

const ID_CHARS = /^[A-Za-z0-9_-]{1,64}$/;
const ROOM = /^([a-z_]{1,32}):([A-Za-z0-9_.-]+)$/;
const EVENT_ID = /^[A-Za-z0-9_.:-]{1,128}$/;

const fail = (code: PublishError["code"], field: string, message: string) =>
  new PublishError(code, message, { field });

/**
 * Publishing straight into Redis with `rtg_publish`. The gateway does not see these events
 * before Redis does, so the checks a gateway would make on the envelope happen here (the
 * payload's shape is the compiler's job: its type comes from the catalog).
 */
export class RedisTransport implements Transport {
  private readonly prefix: string;
  private readonly maxLen: string;
  private readonly ttl: string;
  private readonly maxRoomLen: number;

  constructor(
    private readonly redis: RedisClientLike,
    settings: RedisSettings,
  ) {
    this.prefix = settings.prefix ?? "rtg";
    this.maxLen = String(settings.historyMaxLen ?? 1000);
    this.ttl = String(settings.historyTtlSecs ?? 6 * 3600);
    this.maxRoomLen = settings.maxRoomLen ?? 128;
  }

  prepare(event: Envelope): Envelope {
    // One id for every room and every retry: clients de-duplicate by it.
    return event.id === undefined ? { ...event, id: crypto.randomUUID() } : event;
  }

  async publish(event: Envelope): Promise<PublishResult> {
    const [tenant, rooms, envelope] = this.check(event);
    const results: PublishResult["rooms"] = [];
    for (const room of rooms) {
      const name = `${this.prefix}:{${tenant}/${room}}`;
      let answer: unknown;
      try {
        answer = await this.redis.fCall("rtg_publish", {
          keys: [`${name}:h`, `${name}:m`],
          arguments: [name, envelope.json, this.maxLen, this.ttl],
        });
      } catch (cause) {
        throw redisError(cause);
      }
      const offset = Array.isArray(answer) ? Number(answer[0]) : NaN;
      if (!Number.isSafeInteger(offset)) {
        throw new PublishError("bus_rejected", `rtg_publish answered ${JSON.stringify(answer)}; expected [offset, epoch]`);
      }
      results.push({ room, offset });
    }
    return { id: envelope.id, rooms: results };
  }

  async publishBatch(events: Envelope[]): Promise<PublishResult[]> {
    // Like the gateway: every event is checked before any is published.
    events.forEach((e, i) => {
      try {
        this.check(e);
      } catch (err) {
        const pe = err as PublishError;
        throw new PublishError(pe.code, pe.message, { field: pe.field ? `[${i}].${pe.field}` : `[${i}]` });
      }
    });
    const out: PublishResult[] = [];
    for (const e of events) out.push(await this.publish(e));
    return out;
  }

  /** The tenant, rooms and serialized envelope of an event, or the error a gateway would give. */
  private check(e: Envelope): [string, string[], { id: string; json: string }] {
    const channel = (catalog.channels as Record<string, { defaultRoom: string; events: readonly string[] }>)[e.channel];
    if (!channel) {
      throw fail("unknown_channel", "channel", `unknown channel ${e.channel}; known channels are ${Object.keys(catalog.channels).join(", ")}`);
    }
    if (!channel.events.includes(e.event)) {
      throw fail("unknown_event", "event", `channel ${e.channel} has no event ${e.event}; its events are ${channel.events.join(", ")}`);
    }
    const tenant = idString(e.institutionId);
    if (tenant === undefined) {
      throw fail("invalid_field", "institutionId", "institutionId must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-' (or an integer)");
    }
    if (typeof e.payload !== "object" || e.payload === null || Array.isArray(e.payload)) {
      throw fail("invalid_field", "payload", "payload must be a JSON object");
    }
    const fields = e.payload as Record<string, unknown>;
    if (fields.institutionId !== undefined && idString(fields.institutionId) !== tenant) {
      throw fail("tenant_mismatch", "payload.institutionId", `payload.institutionId must equal institutionId (${tenant})`);
    }
    const rooms = e.rooms ?? [this.defaultRoom(channel.defaultRoom, tenant, fields)];
    if (rooms.length === 0) throw fail("invalid_field", "rooms", "rooms must not be empty; leave it out for the channel's default route");
    rooms.forEach((room, i) => {
      const m = ROOM.exec(room);
      if (!m || room.length > this.maxRoomLen) {
        throw fail("invalid_room", `rooms[${i}]`, `rooms[${i}] must look like kind:id (kind a-z and '_', id letters, digits, '_', '-', '.'), at most ${this.maxRoomLen} characters`);
      }
      if (m[1] === "institution" && m[2] !== tenant) {
        throw fail("tenant_mismatch", `rooms[${i}]`, `${room} is another tenant's room; an event of tenant ${tenant} can only go to institution:${tenant}`);
      }
    });
    const id = e.id ?? crypto.randomUUID();
    if (!EVENT_ID.test(id)) throw fail("invalid_field", "id", "id must be 1-128 characters of letters, digits, '_', '-', '.' or ':'");
    const envelope = {
      id,
      channel: e.channel,
      event: e.event,
      institutionId: e.institutionId,
      payload: e.payload,
      timestamp: e.timestamp ?? Date.now(),
    };
    return [tenant, [...new Set(rooms)], { id, json: JSON.stringify(envelope) }];
  }

  /** A channel's `defaultRoom` template filled in, as the gateway does. */
  private defaultRoom(template: string, tenant: string, payload: Record<string, unknown>): string {
    return template.replace(/\{([^}]+)\}/g, (_, name: string) => {
      if (name === "institutionId") return tenant;
      const field = name.replace(/^payload\./, "");
      const value = idString(payload[field]);
      if (value === undefined) {
        throw fail("missing_field", `payload.${field}`, `an event without rooms goes to ${template}, so payload.${field} (an integer or a non-empty string) is required`);
      }
      return value;
    });
  }
}

/** An id (integer or id-like string) in its string form, as the gateway reads it. */
function idString(v: unknown): string | undefined {
  const s = typeof v === "number" && Number.isSafeInteger(v) ? String(v) : typeof v === "string" ? v : undefined;
  return s !== undefined && ID_CHARS.test(s) ? s : undefined;
}

/** A Redis error reply (`ERR rtg_publish: ...`) is a refusal; anything else means Redis is unreachable. */
function redisError(cause: unknown): PublishError {
  const message = cause instanceof Error ? cause.message : String(cause);
  const reply = cause instanceof Error && (cause.name === "ErrorReply" || cause.constructor.name === "ErrorReply");
  return reply
    ? new PublishError("bus_rejected", `Redis refused the event: ${message}`, { cause })
    : new PublishError("bus_unavailable", `Redis is unavailable, nothing was published: ${message}`, { cause });
}
