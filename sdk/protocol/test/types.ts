// Compile-time checks of the generated types: `tsc -p test` must pass, and every
// `@ts-expect-error` below must meet an error (tsc fails on one that does not).
import {
  catalog,
  type ChannelName,
  type ChannelOf,
  type Delivered,
  type EventName,
  type EventsOf,
  type JoinAck,
  type PayloadOf,
  type ScriptSubmittedPayload,
} from "@realtime-gateway/protocol";

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
const same = <A, B>(ok: Equal<A, B>): Equal<A, B> => ok;

same<EventsOf<"notification">, "new_notification" | "notification_read">(true);
same<PayloadOf<"script_submission", "script_submitted">, ScriptSubmittedPayload>(true);
same<ChannelOf<"batch_created">, "batch_update">(true);
same<ChannelName, keyof typeof catalog.channels>(true);
same<EventName, (typeof catalog.channels)[ChannelName]["events"][number]>(true);

export function narrow(e: Delivered): string {
  if (e.event === "script_submitted") {
    const c: "script_submission" = e.channel;
    return `${c} ${e.payload.studentName} ${e.payload.courseCode}`;
  }
  if (e.channel === "notification") {
    // @ts-expect-error scriptId is no notification field
    return String(e.payload.scriptId);
  }
  return e.room;
}

export function ack(a: JoinAck): number | null {
  return a.ok ? a.offset : a.error.code.length;
}

export const payload: ScriptSubmittedPayload = {
  scriptId: 1,
  batchId: "b-1",
  studentId: 9,
  studentName: "Ada",
  courseCode: "CS101",
  courseName: "Intro",
  submittedAt: "2026-11-28T10:00:00Z",
  institutionId: 1,
};

// @ts-expect-error studentName is required
export const missing: ScriptSubmittedPayload = { ...payload, studentName: undefined };
