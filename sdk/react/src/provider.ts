import { createContext, createElement, useContext, useEffect, useMemo, useRef, useState, type ReactNode } from "react";
import { createRealtimeClient, type RealtimeClient, type RealtimeClientOptions } from "@realtime-gateway/client";

/** A query key as TanStack Query knows it. */
export type QueryKey = readonly unknown[];

/**
 * What the hooks need of a TanStack Query `QueryClient` (any v5 client fits), so the React
 * bindings work without it and import nothing from it.
 */
export interface QueryInvalidator {
  invalidateQueries(filters: { queryKey: QueryKey }): unknown;
}

/** Props of {@link RealtimeProvider}: a `client`, or the options to create one. */
export type RealtimeProviderProps = (
  | ({ client: RealtimeClient } & { [K in keyof RealtimeClientOptions]?: never })
  | ({ client?: undefined } & Omit<RealtimeClientOptions, "autoConnect">)
) & {
  /** The `QueryClient` whose queries `invalidateQueries` options invalidate. */
  queryClient?: QueryInvalidator;
  children?: ReactNode;
};

interface Realtime {
  client: RealtimeClient;
  queryClient: QueryInvalidator | undefined;
}

const RealtimeContext = createContext<Realtime | null>(null);

/**
 * Owns the connection for the components below it: creates the client from `url` and
 * `getToken` (or uses `client`), connects on mount and, for a client it created, closes on
 * unmount. The first `url`/options win; `getToken` is always the latest one.
 */
export function RealtimeProvider(props: RealtimeProviderProps) {
  const latest = useRef(props);
  latest.current = props;
  // No I/O in the initializer (StrictMode may call it twice): the effect connects.
  const [owned] = useState(() =>
    props.client
      ? undefined
      : createRealtimeClient({ ...props, getToken: () => latest.current.getToken!(), autoConnect: false }),
  );
  const client = props.client ?? owned!;
  const closing = useRef<ReturnType<typeof setTimeout>>(undefined);
  useEffect(() => {
    clearTimeout(closing.current);
    client.connect();
    // Deferred, so StrictMode's unmount-and-mount keeps the one connection.
    return () => {
      if (owned) closing.current = setTimeout(() => client.close());
    };
  }, [client, owned]);
  const value = useMemo(() => ({ client, queryClient: props.queryClient }), [client, props.queryClient]);
  return createElement(RealtimeContext.Provider, { value }, props.children);
}

/** The provider's client and query client; throws outside a {@link RealtimeProvider}. */
export function useRealtimeContext(): Realtime {
  const ctx = useContext(RealtimeContext);
  if (!ctx) throw new Error("realtime hooks must be used inside <RealtimeProvider>");
  return ctx;
}
