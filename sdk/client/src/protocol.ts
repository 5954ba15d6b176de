// Stand-in for @realtime-gateway/protocol until it is in the workspace (same names and shapes).
export type CatalogMap = Record<string, Record<string, unknown>>;
export type ChannelName = string;
export type EventsOf<C extends ChannelName> = C extends ChannelName ? string : never;
export type PayloadOf<_C extends ChannelName, _E> = Record<string, unknown>;
export type Delivered<C extends ChannelName = ChannelName, E extends EventsOf<C> = EventsOf<C>> = {
  id: string;
  channel: C;
  event: E;
  payload: PayloadOf<C, E>;
  timestamp: number;
  room: string;
  offset: number;
};
export interface Position { epoch: string; offset: number }
export interface GatewayError { code: string; message: string; field?: string }
export interface RoomPosition { room: string; epoch: string | null; offset: number | null; recovered?: boolean; reason?: string; replayed?: number }
export type JoinAck = ({ ok: true } & RoomPosition) | { ok: false; error: GatewayError };
export type LeaveAck = { ok: true; room: string } | { ok: false; error: GatewayError };
export type RefreshAck = { ok: true; exp: number; left: string[] } | { ok: false; error: GatewayError };
export interface Authenticated { userId: string; institutionId: string; role: string; rooms: RoomPosition[]; exp: number }
export interface AuthError { code: string; message: string }
export interface Resync { room: string; epoch: string; offset: number }
