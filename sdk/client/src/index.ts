export {
  createRealtimeClient,
  RealtimeError,
  type Handler,
  type Joined,
  type ListenOptions,
  type RealtimeClient,
  type RealtimeClientOptions,
  type Status,
  type Transport,
  type Unsubscribe,
} from "./client.js";
export { sessionPositions, type PositionStorage } from "./storage.js";
