import { useCallback, useEffect, useLayoutEffect, useRef, useState, useSyncExternalStore } from "react";
import type { Joined, RealtimeClient, RealtimeError, Status } from "@realtime-gateway/client";
import type { ChannelName, Delivered, EventsOf } from "@realtime-gateway/protocol";
import { useRealtimeContext, type QueryKey } from "./provider.js";

// Layout effects keep handler refs current before any event can be dispatched; on a server
// (no window) the plain effect avoids React 18's warning.
const useLatestEffect = typeof window === "undefined" ? useEffect : useLayoutEffect;

/** Keeps the latest `value` in a ref without re-running effects that read it. */
function useLatest<T>(value: T) {
  const ref = useRef(value);
  useLatestEffect(() => {
    ref.current = value;
  });
  return ref;
}

/** What {@link useRealtime} returns. */
export interface RealtimeState {
  status: Status;
  isConnected: boolean;
  /** Joins a room (reference-counted; pair with `leaveRoom`). */
  joinRoom: (room: string) => Promise<Joined>;
  /** Undoes one `joinRoom`. */
  leaveRoom: (room: string) => void;
  client: RealtimeClient;
}

/** The connection's status (re-renders on change) and room controls. */
export function useRealtime(): RealtimeState {
  const { client } = useRealtimeContext();
  const status = useSyncExternalStore(
    client.onStatus,
    () => client.status,
    () => client.status,
  );
  return { status, isConnected: status === "connected", joinRoom: client.join, leaveRoom: client.leave, client };
}

/** Query keys to invalidate: a list, or a function of the event (`undefined` on a resync). */
export type Invalidate<C extends ChannelName, E extends EventsOf<C>> =
  | readonly QueryKey[]
  | ((event: Delivered<C, E> | undefined) => readonly QueryKey[]);

/** Options of {@link useRealtimeSubscription}. */
export interface SubscriptionOptions<C extends ChannelName, E extends EventsOf<C> = EventsOf<C>> {
  channel: C;
  /** Only this event of the channel (narrows the payload). */
  event?: E;
  /** Joins this room while mounted and enabled, and listens to it only. */
  room?: string;
  /** Default true. */
  enabled?: boolean;
  /** Called with each matching event (always the latest function; no resubscription). */
  onEvent?: (event: Delivered<C, E>) => void;
  /** Invalidated on each matching event and when the room (any room, without `room`) must be refetched. */
  invalidateQueries?: Invalidate<C, E>;
}

/**
 * Listens to `channel` (and `event`, `room`) while mounted and enabled: calls `onEvent` and
 * invalidates `invalidateQueries` on each event, and invalidates them again on a resync or a
 * failed recovery. Changing handlers or keys does not resubscribe.
 */
export function useRealtimeSubscription<C extends ChannelName, E extends EventsOf<C> = EventsOf<C>>(
  options: SubscriptionOptions<C, E>,
): void {
  const { client, queryClient } = useRealtimeContext();
  const latest = useLatest(options);
  const { channel, event, room, enabled = true } = options;
  useEffect(() => {
    if (!enabled) return;
    const invalidate = (e?: Delivered<C, E>) => {
      const keys = latest.current.invalidateQueries;
      const list = typeof keys === "function" ? keys(e) : keys;
      if (!list || !queryClient) return;
      for (const queryKey of list) {
        client.log("invalidate", queryKey);
        void queryClient.invalidateQueries({ queryKey });
      }
    };
    const handler = (e: Delivered<C, E>) => {
      latest.current.onEvent?.(e);
      invalidate(e);
    };
    const opts = { room };
    const off = event
      ? client.on<C, E>(channel, event, handler, opts)
      : client.on<C>(channel, handler as (e: Delivered<C>) => void, opts);
    const offResync = client.onResync(room ?? "*", () => invalidate());
    if (room) void client.join(room);
    return () => {
      off();
      offResync();
      if (room) client.leave(room);
    };
  }, [client, queryClient, channel, event, room, enabled, latest]);
}

/** What {@link useRoom} returns. */
export interface RoomState {
  /** The join answer once the gateway accepted it. */
  joined: Joined | undefined;
  /** The gateway's refusal (`error.code`), if it refused. */
  error: RealtimeError | undefined;
}

/**
 * Stays in `room` while mounted (shared with every other user of the room); `onResync` is
 * called when the room's state must be refetched.
 */
export function useRoom(
  room: string | undefined,
  options: { onResync?: (room: string) => void; enabled?: boolean } = {},
): RoomState {
  const { client } = useRealtimeContext();
  const latest = useLatest(options.onResync);
  const [state, setState] = useState<RoomState>({ joined: undefined, error: undefined });
  const enabled = options.enabled ?? true;
  const onResync = useCallback((r: string) => latest.current?.(r), [latest]);
  useEffect(() => {
    if (!room || !enabled) return;
    let live = true;
    setState({ joined: undefined, error: undefined });
    client.join(room).then(
      (joined) => live && setState({ joined, error: undefined }),
      (error: RealtimeError) => live && setState({ joined: undefined, error }),
    );
    const off = client.onResync(room, onResync);
    return () => {
      live = false;
      off();
      client.leave(room);
    };
  }, [client, room, enabled, onResync]);
  return state;
}
