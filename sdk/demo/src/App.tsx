import { useEffect, useState } from "react";
import { useQuery } from "@tanstack/react-query";
import {
  useIncidentEvents,
  useNewNotificationEvent,
  useNotificationReadEvent,
  useRealtime,
  useScriptSubmittedEvent,
} from "@realtime-gateway/react";
import type { Delivered } from "@realtime-gateway/protocol";
import type { RealtimeClient } from "@realtime-gateway/client";
import { apiUrl, batchId, tokensFetched } from "./config.js";

/**
 * What the page went through, on `window.__demo` for whoever watches it (the browser tests do):
 * every status, the joins it sent per room, the tokens it fetched, when it was loaded.
 */
const probe = {
  statuses: [] as string[],
  joins: {} as Record<string, number>,
  loadedAt: Date.now(),
  get tokens() {
    return tokensFetched;
  },
};
(window as unknown as { __demo: typeof probe }).__demo = probe;
let probed: RealtimeClient | undefined;

/** Records the client's statuses and joins (children's effects run before the provider connects). */
function Probe() {
  const { client } = useRealtime();
  useEffect(() => {
    if (probed === client) return;
    probed = client;
    probe.statuses.push(client.status);
    client.onStatus((s) => probe.statuses.push(s));
    client.socket.onAnyOutgoing((name: string, arg: { room?: string }) => {
      if (name === "join" && arg.room) probe.joins[arg.room] = (probe.joins[arg.room] ?? 0) + 1;
    });
  }, [client]);
  return null;
}

export function App() {
  return (
    <main style={{ fontFamily: "system-ui, sans-serif", maxWidth: 900, margin: "1rem auto" }}>
      <Probe />
      <header style={{ display: "flex", justifyContent: "space-between", alignItems: "center" }}>
        <h1>Exam office</h1>
        <div style={{ display: "flex", gap: "1rem" }}>
          <NotificationBell />
          <ConnectionStatus />
        </div>
      </header>
      <div style={{ display: "grid", gridTemplateColumns: "2fr 1fr", gap: "2rem" }}>
        <BatchPage />
        <IncidentFeed />
      </div>
    </main>
  );
}

const COLORS: Record<string, string> = {
  connected: "green",
  connecting: "gray",
  reconnecting: "orange",
  disconnected: "gray",
  unauthorized: "red",
};

function ConnectionStatus() {
  const { status, client } = useRealtime();
  return (
    <span data-testid="status" data-status={status} style={{ color: COLORS[status] }} title={client.error?.message}>
      ● {status}
      {client.error ? ` (${client.error.code})` : ""}
    </span>
  );
}

type Submission = Delivered<"script_submission", "script_submitted">;

/** Live script submissions of one batch; the batch's server state refetches on each. */
function BatchPage() {
  const [submissions, setSubmissions] = useState<Submission[]>([]);
  const batch = useQuery({
    queryKey: ["batch", batchId],
    queryFn: async () => {
      const res = await fetch(`${apiUrl}/batches/${batchId}`);
      if (!res.ok) throw new Error(`batch API answered ${res.status}`);
      return (await res.json()) as { fetches: number };
    },
  });
  useScriptSubmittedEvent((e) => setSubmissions((list) => [...list, e]), true, {
    room: `batch:${batchId}`,
    invalidateQueries: [["batch", batchId]],
  });
  return (
    <section>
      <h2>Batch {batchId}</h2>
      <p>
        Server state fetched <b data-testid="batch-fetches">{batch.data?.fetches ?? 0}</b> times
        {batch.isFetching ? " (refreshing…)" : ""}
      </p>
      <ol data-testid="submissions">
        {submissions.map((s) => (
          <li key={s.id} data-offset={s.offset} data-id={s.id}>
            {s.payload.studentName} handed in {s.payload.courseCode} (#{s.offset})
          </li>
        ))}
      </ol>
    </section>
  );
}

/** Unread notifications of the signed-in user (their `user:` room, joined automatically). */
function NotificationBell() {
  const [unread, setUnread] = useState<Delivered<"notification", "new_notification">[]>([]);
  const [open, setOpen] = useState(false);
  useNewNotificationEvent((e) => setUnread((list) => [e, ...list]));
  useNotificationReadEvent((e) =>
    setUnread((list) => list.filter((n) => n.payload.notificationId !== e.payload.notificationId)),
  );
  return (
    <span style={{ position: "relative" }}>
      <button data-testid="bell" onClick={() => setOpen(!open)}>
        🔔 <span data-testid="unread">{unread.length}</span>
      </button>
      {open && (
        <ul style={{ position: "absolute", right: 0, background: "white", border: "1px solid #ccc", width: 280 }}>
          {unread.map((n) => (
            <li key={n.id}>
              <b>{n.payload.title}</b> {n.payload.message}
            </li>
          ))}
        </ul>
      )}
    </span>
  );
}

/** Incidents of the institution as a feed, each new one also as a toast for a few seconds. */
function IncidentFeed() {
  const [feed, setFeed] = useState<Delivered<"incident">[]>([]);
  const [toasts, setToasts] = useState<Delivered<"incident">[]>([]);
  useIncidentEvents({
    onEvent: (e) => {
      setFeed((list) => [e, ...list].slice(0, 50));
      setToasts((list) => [...list, e]);
      setTimeout(() => setToasts((list) => list.filter((t) => t !== e)), 4000);
    },
  });
  return (
    <section>
      <h2>Incidents</h2>
      <ul data-testid="incidents">
        {feed.map((e) => (
          <li key={e.id}>{describeIncident(e)}</li>
        ))}
      </ul>
      <div style={{ position: "fixed", bottom: 16, right: 16 }}>
        {toasts.map((e) => (
          <div key={e.id} role="status" style={{ background: "#333", color: "white", padding: 8, marginTop: 8 }}>
            {describeIncident(e)}
          </div>
        ))}
      </div>
    </section>
  );
}

function describeIncident(e: Delivered<"incident">): string {
  switch (e.event) {
    case "incident_reported":
      return `${e.payload.severity} ${e.payload.category}: ${e.payload.description}`;
    case "incident_updated":
      return `incident ${e.payload.incidentId} is ${e.payload.status}`;
    case "incident_resolved":
      return `incident ${e.payload.incidentId} resolved: ${e.payload.resolution}`;
  }
}
