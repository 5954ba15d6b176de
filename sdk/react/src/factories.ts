// The two shapes of generated hooks. Made by factories so each generated hook is one line.
import type { ChannelName, Delivered, EventsOf } from "@realtime-gateway/protocol";
import { useRealtimeSubscription, type Invalidate } from "./hooks.js";

/** Options of a generated per-event hook beyond its handler and `enabled`. */
export interface EventHookOptions<C extends ChannelName, E extends EventsOf<C>> {
  /** Joins this room while mounted and listens to it only. */
  room?: string;
  invalidateQueries?: Invalidate<C, E>;
}

/** `use<Event>Event(onEvent?, enabled?, options?)`. */
export type EventHook<C extends ChannelName, E extends EventsOf<C>> = (
  onEvent?: (event: Delivered<C, E>) => void,
  enabled?: boolean,
  options?: EventHookOptions<C, E>,
) => void;

/** Options of a generated per-channel hook. */
export interface ChannelHookOptions<C extends ChannelName> {
  onEvent?: (event: Delivered<C>) => void;
  invalidateQueries?: Invalidate<C, EventsOf<C>>;
  room?: string;
  enabled?: boolean;
}

/** `use<Channel>Events({ onEvent?, invalidateQueries?, room?, enabled? })`. */
export type ChannelHook<C extends ChannelName> = (options?: ChannelHookOptions<C>) => void;

/** Makes the hook of one event. */
export function eventHook<C extends ChannelName, E extends EventsOf<C>>(channel: C, event: E): EventHook<C, E> {
  return (onEvent, enabled, options) => useRealtimeSubscription<C, E>({ channel, event, onEvent, enabled, ...options });
}

/** Makes the hook of one channel. */
export function channelHook<C extends ChannelName>(channel: C): ChannelHook<C> {
  return (options) => useRealtimeSubscription<C>({ channel, ...options });
}
