// @realtime-gateway/publisher: typed emitters for Node backends, one per catalog event, over a
// gateway's HTTP API or straight into Redis.

import {
  catalog,
  type ChannelName,
  type EventName,
  type EventsOf,
  type PayloadOfEvent,
  type PublishRequest,
  type PublishResult,
} from "@realtime-gateway/protocol";
import { type RetryOptions, withRetries, PublishError } from "./errors.js";
import {
  type Envelope,
  HttpTransport,
  type RedisClientLike,
  type RedisSettings,
  RedisTransport,
  type Transport,
} from "./transports.js";

export { PublishError, RETRIED_CODES, type PublisherErrorCode, type RetryOptions } from "./errors.js";
export type { RedisClientLike, RedisSettings } from "./transports.js";
export type { PublishRequest, PublishResult } from "@realtime-gateway/protocol";

/** Publish through a gateway's HTTP API (`POST /v1/publish`); the gateway validates. */
export interface HttpPublisherOptions {
  /** The gateway's base URL, e.g. `http://gateway:3000`. */
  url: string;
  /** A publish API key (one of the gateway's `PUBLISH_API_KEYS`). */
  apiKey: string;
  /** Per-request timeout (default 10 s). */
  timeoutMs?: number;
  retry?: RetryOptions;
}

/** Publish straight into Redis with the `rtg_publish` function (a `redis` v4 client). */
export interface RedisPublisherOptions extends RedisSettings {
  /**
   * A connected `redis` v4 client. Create it with `disableOfflineQueue: true`, so a publish
   * while Redis is down fails (and is retried here) instead of waiting in the client's queue.
   */
  redis: RedisClientLike;
  retry?: RetryOptions;
}

export type PublisherOptions = HttpPublisherOptions | RedisPublisherOptions;

/** Options of one typed emit. */
export interface EmitOptions {
  /** Rooms to publish to; absent: the channel's default room (`defaultRoom` in the catalog). */
  rooms?: string[];
  /** The tenant; absent: the payload's `institutionId`. */
  institutionId?: string | number;
  /** Your own event id (1-128 of letters, digits, `_-.:`). */
  id?: string;
  /** Milliseconds since the Unix epoch; absent: now. */
  timestamp?: number;
}

/** `script_submitted` → `scriptSubmitted`. */
export type CamelCase<S extends string> = S extends `${infer Head}_${infer Tail}`
  ? `${Head}${Capitalize<CamelCase<Tail>>}`
  : S;

/** One method per catalog event: `publisher.scriptSubmitted(payload, { rooms })`. */
export type Emitters = {
  [E in EventName as CamelCase<E>]: (payload: PayloadOfEvent<E>, options?: EmitOptions) => Promise<PublishResult>;
};

/** The same with the names and arguments of the emitters this replaces: `emitScriptSubmitted(payload, rooms)`. */
export type SeedEmitters = {
  [E in EventName as `emit${Capitalize<CamelCase<E>>}`]: (
    payload: PayloadOfEvent<E>,
    rooms?: string[],
  ) => Promise<PublishResult>;
};

/** A publisher: typed emitters plus the generic calls. */
export type Publisher = Emitters &
  SeedEmitters & {
    /** Publishes one event; retries `bus_unavailable` and `rate_limited` (bounded). */
    publish<C extends ChannelName, E extends EventsOf<C>>(request: PublishRequest<C, E>): Promise<PublishResult>;
    /** Publishes several events (all are checked before any is published), in order. */
    publishBatch(requests: PublishRequest[]): Promise<PublishResult[]>;
  };

const camel = (s: string) => s.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());

/** The tenant of an emit: the option, else the payload's `institutionId`. */
function tenantOf(event: string, payload: object, options: EmitOptions | undefined): string | number {
  const tenant = options?.institutionId ?? (payload as { institutionId?: unknown }).institutionId;
  if (typeof tenant !== "string" && typeof tenant !== "number") {
    throw new PublishError(
      "missing_field",
      `${event}: pass options.institutionId or put institutionId in the payload`,
      { field: "institutionId" },
    );
  }
  return tenant;
}

/**
 * Creates a publisher: `createPublisher({ url, apiKey })` publishes through a gateway's HTTP API,
 * `createPublisher({ redis })` straight into Redis. Payload types come from the catalog, so a
 * wrong or missing field is a compile error.
 */
export function createPublisher(options: PublisherOptions): Publisher {
  const transport: Transport =
    "redis" in options
      ? new RedisTransport(options.redis, options)
      : new HttpTransport(options.url, options.apiKey, options.timeoutMs ?? 10_000);
  const send = (e: Envelope) => {
    const prepared = transport.prepare(e);
    return withRetries(options.retry, () => transport.publish(prepared));
  };
  const methods: Record<string, unknown> = {
    publish: (request: Envelope) => send(request),
    publishBatch: (requests: Envelope[]) => {
      const prepared = requests.map((r) => transport.prepare(r));
      return withRetries(options.retry, () => transport.publishBatch(prepared));
    },
  };
  for (const [channel, spec] of Object.entries(catalog.channels)) {
    for (const event of spec.events as readonly string[]) {
      // async: a missing tenant rejects like every other error instead of throwing.
      const emit = async (payload: object, o?: EmitOptions) =>
        send({
          channel,
          event,
          institutionId: tenantOf(event, payload, o),
          payload,
          rooms: o?.rooms,
          id: o?.id,
          timestamp: o?.timestamp,
        });
      const name = camel(event);
      methods[name] = emit;
      methods[`emit${name[0]?.toUpperCase()}${name.slice(1)}`] = (payload: object, rooms?: string[]) =>
        emit(payload, rooms === undefined ? undefined : { rooms });
    }
  }
  return methods as Publisher;
}
