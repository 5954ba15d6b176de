// Test page of the React bindings (bundled by hooks.browser.mjs, run in Chromium against a real
// gateway). Exposes steps on `window.t` that the script calls between publishes.
import { StrictMode, useState } from "react";
import { createRoot, type Root } from "react-dom/client";
import { flushSync } from "react-dom";
import { createRealtimeClient, sessionPositions, type Joined, type RealtimeClient } from "@realtime-gateway/client";
import { RealtimeProvider, useBatchCreatedEvent, useRealtime, useRoom } from "@realtime-gateway/react";

/** Counts what the hooks do with the client: live subscriptions, calls, joins and leaves sent. */
function instrument(client: RealtimeClient) {
  const seen = { listeners: 0, resyncs: 0, onCalls: 0, sent: {} as Record<string, number> };
  const on = client.on.bind(client) as (...a: unknown[]) => () => void;
  (client as { on: unknown }).on = (...a: unknown[]) => {
    seen.listeners++;
    seen.onCalls++;
    const off = on(...a);
    return () => (seen.listeners--, off());
  };
  const onResync = client.onResync.bind(client);
  client.onResync = (room, cb) => {
    seen.resyncs++;
    const off = onResync(room, cb);
    return () => (seen.resyncs--, off());
  };
  client.socket.onAnyOutgoing((name: string, arg: { room?: string }) => {
    const key = `${name} ${arg?.room ?? ""}`.trim();
    seen.sent[key] = (seen.sent[key] ?? 0) + 1;
  });
  return seen;
}

let client: RealtimeClient;
let seen: ReturnType<typeof instrument>;
let root: Root;
const received: Array<{ render: number; offset: number }> = [];
let rerender: () => void = () => {};
let setEnabled: (on: boolean) => void = () => {};

/** Each render hands the hook a new handler that remembers which render made it. */
function Latest() {
  const [render, setRender] = useState(1);
  rerender = () => setRender((n) => n + 1);
  useBatchCreatedEvent((e) => received.push({ render, offset: e.offset }), true, { room: "batch:77" });
  return <p id="render">{render}</p>;
}

function Toggle() {
  const [enabled, set] = useState(false);
  setEnabled = set;
  useRoom("batch:78", { enabled });
  return null;
}

function Status() {
  return <p id="status">{useRealtime().status}</p>;
}

const t = {
  /** Mounts Latest, Toggle and Status in StrictMode over a client of `url`. */
  mount(url: string, token: string) {
    client = createRealtimeClient({ url, getToken: () => token, autoConnect: false });
    seen = instrument(client);
    root = createRoot(document.getElementById("root")!);
    flushSync(() =>
      root.render(
        <StrictMode>
          <RealtimeProvider client={client}>
            <Latest />
            <Toggle />
            <Status />
          </RealtimeProvider>
        </StrictMode>,
      ),
    );
  },
  status: () => document.getElementById("status")?.textContent,
  seen: () => structuredClone({ ...seen, rooms: client.rooms() }),
  received: () => received,
  /** Re-renders Latest `n` times (a new handler each time). */
  rerender(n: number) {
    for (let i = 0; i < n; i++) flushSync(rerender);
    return Number(document.getElementById("render")?.textContent);
  },
  enable(on: boolean) {
    flushSync(() => setEnabled(on));
  },
  unmount() {
    root.unmount();
  },
  /** A provider that owns its client (url + getToken), mounted in StrictMode, then unmounted. */
  owned(url: string, token: string) {
    const div = document.createElement("div");
    document.body.append(div);
    const r = createRoot(div);
    flushSync(() =>
      r.render(
        <StrictMode>
          <RealtimeProvider url={url} getToken={() => token} transports={["websocket"]}>
            <Status />
          </RealtimeProvider>
        </StrictMode>,
      ),
    );
    return { unmount: () => r.unmount() };
  },
};
let owned: { unmount: () => void } | undefined;

/** Events of `room` seen by the client that keeps its positions in sessionStorage. */
const stored: number[] = [];
/** A client keeping positions in sessionStorage joins `room`; resolves with the join's answer. */
async function storedJoin(url: string, token: string, room: string): Promise<Joined> {
  const c = createRealtimeClient({ url, getToken: () => token, storage: sessionPositions() });
  c.on("batch_update", (e) => stored.push(e.offset), { room });
  return c.join(room);
}
Object.assign(window, {
  t: {
    ...t,
    mountOwned: (url: string, token: string) => void (owned = t.owned(url, token)),
    unmountOwned: () => owned?.unmount(),
    storedJoin,
    stored: () => stored,
  },
});
