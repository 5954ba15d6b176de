export {
  RealtimeProvider,
  useRealtimeContext,
  type QueryInvalidator,
  type QueryKey,
  type RealtimeProviderProps,
} from "./provider.js";
export {
  useRealtime,
  useRealtimeSubscription,
  useRoom,
  type Invalidate,
  type RealtimeState,
  type RoomState,
  type SubscriptionOptions,
} from "./hooks.js";
export {
  channelHook,
  eventHook,
  type ChannelHook,
  type ChannelHookOptions,
  type EventHook,
  type EventHookOptions,
} from "./factories.js";
export * from "./generated/hooks.js";
