// The client protocol of the gateway (what a Socket.IO client sends and receives besides the
// catalog's events) and the helpers that index the generated catalog types. Written by hand: it
// follows the gateway's code, not the catalog.

import type { CatalogMap, ChannelName, EventName } from "./generated/catalog.js";

/** The event names of channel `C` (a union when `C` is a union). */
export type EventsOf<C extends ChannelName> = C extends ChannelName ? keyof CatalogMap[C] & string : never;

/** The payload of event `E` on channel `C`. */
export type PayloadOf<C extends ChannelName, E extends EventsOf<C>> = E extends keyof CatalogMap[C]
  ? CatalogMap[C][E]
  : never;

/** The payload of event `E`, whatever its channel (event names are unique across channels). */
export type PayloadOfEvent<E extends EventName> = {
  [C in ChannelName]: E extends keyof CatalogMap[C] ? CatalogMap[C][E] : never;
}[ChannelName];

/** The channel event `E` belongs to. */
export type ChannelOf<E extends EventName> = {
  [C in ChannelName]: E extends EventsOf<C> ? C : never;
}[ChannelName];

/**
 * What a socket receives: the Socket.IO event name is the channel, the one argument is this
 * envelope. Distributive, so checking `e.event === "script_submitted"` narrows `e.payload`.
 */
export type Delivered<C extends ChannelName = ChannelName, E extends EventsOf<C> = EventsOf<C>> =
  C extends ChannelName
    ? E extends EventsOf<C>
      ? {
          /** Event id: the same in every room the event was published to. */
          id: string;
          channel: C;
          event: E;
          /** The payload byte for byte as published (fields the catalog does not know included). */
          payload: PayloadOf<C, E>;
          /** Publish time, milliseconds since the Unix epoch. */
          timestamp: number;
          /** The room this copy was delivered in, e.g. `batch:456`. */
          room: string;
          /** Position of the event in `room`: grows by exactly one per event. */
          offset: number;
        }
      : never
    : never;

/** A position in a room: its epoch (changes when the history was lost) and offset. */
export interface Position {
  epoch: string;
  offset: number;
}

/** Why a room could not be recovered (`recovered: false`): refetch the room's state. */
export type RecoveryReason =
  | "epoch_changed"
  | "future_offset"
  | "too_old"
  | "too_many"
  | "invalid_since"
  | "buffer_overflow"
  | "bus_unavailable";

/** Where a socket stands in a room after entering it (in `authenticated` and join acks). */
export interface RoomPosition {
  room: string;
  /** `null` when the gateway could not read the room's position from the bus. */
  epoch: string | null;
  offset: number | null;
  /** Present when the client sent a position: whether every missed event was replayed. */
  recovered?: boolean;
  /** Why not, when `recovered` is false. */
  reason?: RecoveryReason;
  /** Events replayed from history. */
  replayed?: number;
}

/** Token errors: the `connect_error` message, or the code of a refused `authenticate`/`refresh`. */
export type TokenErrorCode =
  | "token_missing"
  | "token_malformed"
  | "token_algorithm_not_allowed"
  | "token_invalid_signature"
  | "token_expired"
  | "token_not_yet_valid"
  | "token_claim_missing"
  | "token_claim_invalid"
  | "token_wrong_issuer_or_audience"
  | "token_identity_changed";

/** Codes of a refused `join` or `leave`. */
export type JoinErrorCode =
  | "invalid_request"
  | "invalid_room"
  | "invalid_since"
  | "not_authenticated"
  | "rate_limited"
  | "forbidden_room"
  | "room_kind_not_allowed"
  | "forbidden_role"
  | "too_many_rooms";

/** Codes of a refused publish (HTTP API and Redis function). */
export type PublishErrorCode =
  | "invalid_json"
  | "invalid_body"
  | "missing_field"
  | "invalid_field"
  | "unknown_field"
  | "unknown_channel"
  | "unknown_event"
  | "invalid_payload"
  | "invalid_room"
  | "tenant_mismatch"
  | "too_many_rooms"
  | "missing_api_key"
  | "invalid_api_key"
  | "publish_disabled"
  | "payload_too_large"
  | "body_too_large"
  | "batch_too_large"
  | "unsupported_media_type"
  | "rate_limited"
  | "bus_rejected"
  | "bus_unavailable";

/** Codes of a refused WebSocket handshake (an HTTP error before any Socket.IO packet). */
export type HandshakeErrorCode =
  | "unsupported_protocol_version"
  | "not_a_websocket_upgrade"
  | "unsupported_websocket_version"
  | "missing_websocket_key"
  | "request_too_large"
  | "draining";

/** Every error code the gateway sends. */
export type ErrorCode =
  | TokenErrorCode
  | JoinErrorCode
  | PublishErrorCode
  | HandshakeErrorCode
  | "auth_timeout"
  | "already_authenticated"
  | "unknown_event";

/** An error as the gateway sends it: a code to match, a message to show, the field at fault. */
export interface GatewayError<C extends string = ErrorCode> {
  code: C;
  message: string;
  field?: string;
}

/** A refused request's ack. */
export interface ErrorReply<C extends string = ErrorCode> {
  ok: false;
  error: GatewayError<C>;
}

/** `authenticated` (server → client) after a handshake token or an `authenticate` event. */
export interface Authenticated {
  userId: string;
  institutionId: string;
  role: string;
  /** The automatic rooms (`institution:<id>`, `user:<id>`) and where the socket stands in them. */
  rooms: RoomPosition[];
  /** When the token expires (seconds since the Unix epoch); `refresh` before then. */
  exp: number;
}

/** Ack of `authenticate` `{ token }`. */
export type AuthenticateAck =
  | ({ ok: true } & Authenticated)
  | ErrorReply<TokenErrorCode | "already_authenticated">;

/** `auth_error` (server → client), followed by a disconnect. */
export interface AuthError {
  code: TokenErrorCode | "auth_timeout" | "not_authenticated";
  message: string;
}

/** `join` (client → server): a room name, or a room and the position to recover from. */
export type JoinRequest = string | { room: string; since?: Position };

/** Ack of `join`. */
export type JoinAck = ({ ok: true } & RoomPosition) | ErrorReply<JoinErrorCode>;

/** `leave` (client → server). */
export type LeaveRequest = string | { room: string };

/** Ack of `leave`. */
export type LeaveAck = { ok: true; room: string } | ErrorReply<JoinErrorCode>;

/** `refresh` (client → server): a newer token for the same user and tenant. */
export interface RefreshRequest {
  token: string;
}

/** Ack of `refresh`: the new expiry and the rooms the new role may not stay in (left). */
export type RefreshAck =
  | { ok: true; exp: number; left: string[] }
  | ErrorReply<TokenErrorCode | "not_authenticated">;

/**
 * `resync` (server → client): the room's history was lost (new epoch and offset), or this socket
 * fell too far behind while entering it; either way refetch the room's state.
 */
export type Resync =
  | { room: string; epoch: string; offset: number }
  | { room: string; reason: "buffer_overflow" };

/** `pong` (server → client) and the ack of `ping`. */
export interface Pong {
  timestamp: number;
}

/** One event to publish (`POST /v1/publish`, or one element of the batch form). */
export type PublishRequest<C extends ChannelName = ChannelName, E extends EventsOf<C> = EventsOf<C>> =
  C extends ChannelName
    ? E extends EventsOf<C>
      ? {
          channel: C;
          event: E;
          institutionId: string | number;
          payload: PayloadOf<C, E>;
          /** Absent: the channel's default room (its `defaultRoom` template). */
          rooms?: string[];
          /** Your own id (1-128 of letters, digits, `_-.:`); absent: the gateway makes one. */
          id?: string;
          /** Milliseconds since the Unix epoch; absent: now. */
          timestamp?: number;
        }
      : never
    : never;

/** Where a published event landed: its id and its offset in every room. */
export interface PublishResult {
  id: string;
  rooms: { room: string; offset: number }[];
}
