// Dispatch benchmark: 100 mounted components each subscribed with a generated hook; measures
// how long the client takes to hand one event to all of them (each handler sets state).
import { useState } from "react";
import { createRoot } from "react-dom/client";
import { flushSync } from "react-dom";
import { RealtimeProvider, useRealtime, useScriptSubmittedEvent } from "@realtime-gateway/react";
import type { RealtimeClient } from "@realtime-gateway/client";
import { gatewayUrl, getToken } from "./config.js";

const HOOKS = 100;
let delivered = 0;

function Subscriber() {
  const [count, setCount] = useState(0);
  useScriptSubmittedEvent(() => {
    delivered++;
    setCount((n) => n + 1);
  });
  return <i>{count}</i>;
}

/** Dispatch time of each live event: from before the client's listener to after it. */
const live: number[] = [];
let exposed: RealtimeClient | undefined;
/** The listener the client registered on its socket: where every event enters it. */
let receive: ((...args: unknown[]) => void) | undefined;

function Expose() {
  const { client } = useRealtime();
  if (exposed !== client) {
    exposed = client;
    receive = client.socket.listenersAny()[0];
    let t0 = 0;
    // The client registered its listener when it was created: this one runs before it, the
    // next one after it.
    client.socket.prependAny(() => (t0 = performance.now()));
    client.socket.onAny((name: string) => name === "script_submission" && live.push(performance.now() - t0));
    Object.assign(window, { __client: client, __live: live, __delivered: () => delivered });
  }
  return null;
}

interface BenchWindow {
  __client: RealtimeClient;
  __live: number[];
  __bench: (n: number) => { perEventMs: number; delivered: number };
}

/**
 * Hands `n` new envelopes to the client's receive path (the listener it registered on the real
 * socket) and returns the mean time per event across all subscribers.
 */
(window as unknown as BenchWindow).__bench = (n) => {
  const client = (window as unknown as BenchWindow).__client;
  const base = client.positions()["institution:1"]?.offset ?? 0;
  delivered = 0;
  const start = performance.now();
  for (let i = 1; i <= n; i++) {
    receive!("script_submission", {
      id: `bench-${i}`,
      channel: "script_submission",
      event: "script_submitted",
      room: "institution:1",
      offset: base + 1_000_000 + i,
      timestamp: Date.now(),
      payload: { scriptId: i, batchId: 1, studentId: 1, studentName: "B", courseCode: "C", courseName: "C", submittedAt: "2026-01-01", institutionId: 1 },
    });
  }
  const perEventMs = (performance.now() - start) / n;
  flushSync(() => {});
  return { perEventMs, delivered };
};

createRoot(document.getElementById("root")!).render(
  <RealtimeProvider url={gatewayUrl} getToken={getToken}>
    <Expose />
    {Array.from({ length: HOOKS }, (_, i) => (
      <Subscriber key={i} />
    ))}
  </RealtimeProvider>,
);
