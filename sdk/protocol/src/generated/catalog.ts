// generated from catalog/elms.json, do not edit (npm run generate)

/** An entity id: a JSON integer or a non-empty string. */
export type Id = number | string;

export type OptionalId = Id | null;

/** An ISO-8601 date or date-time, e.g. 2025-06-12T09:30:00Z. */
export type Timestamp = string;

export type OptionalTimestamp = Timestamp | null;

/** A count: a non-negative integer below 2^32. */
export type Count = number;

/**
 * A student's script was handed in.
 *
 * Payload of `script_submission` / `script_submitted`.
 */
export interface ScriptSubmittedPayload {
  /** The submitted script. */
  scriptId: Id;
  /** The batch the script was placed in. */
  batchId: Id;
  /** The student who wrote the script. */
  studentId: Id;
  /** The student's display name. */
  studentName: string;
  /** Course code, e.g. `CSC 201`. */
  courseCode: string;
  /** Course title. */
  courseName: string;
  /** When the script was handed in (ISO-8601). */
  submittedAt: Timestamp;
  /** The tenant institution. */
  institutionId: Id;
}

/**
 * An invigilator verified a submitted script.
 *
 * Payload of `script_submission` / `script_verified`.
 */
export interface ScriptVerifiedPayload {
  /** The verified script. */
  scriptId: Id;
  /** The batch the script belongs to. */
  batchId: Id;
  /** The student who wrote the script. */
  studentId: Id;
  /** The staff member who verified it. */
  verifiedBy: Id;
  /** Display name of the verifier. */
  verifiedByName: string;
  /** When the script was verified (ISO-8601). */
  verifiedAt: Timestamp;
  /** Free-text remarks from the verifier, if any. */
  remarks?: string | null;
  /** The tenant institution. */
  institutionId: Id;
}

/**
 * A script was collected for marking.
 *
 * Payload of `script_submission` / `script_collected`.
 */
export interface ScriptCollectedPayload {
  /** The collected script. */
  scriptId: Id;
  /** The batch the script belongs to. */
  batchId: Id;
  /** The student who wrote the script. */
  studentId: Id;
  /** The staff member who collected it. */
  collectedBy: Id;
  /** Display name of the collector. */
  collectedByName: string;
  /** When the script was collected (ISO-8601). */
  collectedAt: Timestamp;
  /** Free-text remarks, if any. */
  remarks?: string | null;
  /** The tenant institution. */
  institutionId: Id;
}

/**
 * An examiner recorded a score for a script.
 *
 * Payload of `script_submission` / `script_graded`.
 */
export interface ScriptGradedPayload {
  /** The graded script. */
  scriptId: Id;
  /** The batch the script belongs to. */
  batchId: Id;
  /** The student who wrote the script. */
  studentId: Id;
  /** Course code of the exam. */
  courseCode: string;
  /** The examiner who graded it. */
  gradedBy: Id;
  /** Display name of the examiner. */
  gradedByName: string;
  /** Score awarded (may be fractional). */
  score: number;
  /** Maximum attainable score. */
  maxScore: number;
  /** Letter grade, when already computed. */
  grade?: string | null;
  /** The examiner's comment, if any. */
  comment?: string | null;
  /** When the score was recorded (ISO-8601). */
  gradedAt: Timestamp;
  /** The tenant institution. */
  institutionId: Id;
}

/**
 * A batch was sealed for transport.
 *
 * Payload of `batch_update` / `batch_sealed`.
 */
export interface BatchSealedPayload {
  /** The sealed batch. */
  batchId: Id;
  /** Human-readable batch number, e.g. `B-2025-014`. */
  batchNumber: string;
  /** The exam the batch belongs to. */
  examId: Id;
  /** Number of scripts in the sealed batch. */
  scriptCount: Count;
  /** The staff member who sealed it. */
  sealedBy: Id;
  /** Display name of that staff member. */
  sealedByName: string;
  /** When the batch was sealed (ISO-8601). */
  sealedAt: Timestamp;
  /** Number printed on the physical seal, if recorded. */
  sealNumber?: string | null;
  /** The tenant institution. */
  institutionId: Id;
}

/**
 * A batch was assigned to an examiner.
 *
 * Payload of `batch_update` / `batch_assigned`.
 */
export interface BatchAssignedPayload {
  /** The assigned batch. */
  batchId: Id;
  /** Human-readable batch number. */
  batchNumber: string;
  /** The exam the batch belongs to. */
  examId: Id;
  /** The examiner the batch was assigned to. */
  assignedTo: Id;
  /** Display name of the examiner. */
  assignedToName: string;
  /** The staff member who made the assignment. */
  assignedBy: Id;
  /** Display name of that staff member. */
  assignedByName: string;
  /** When the assignment was made (ISO-8601). */
  assignedAt: Timestamp;
  /** Marking deadline (ISO-8601), if set. */
  dueAt?: OptionalTimestamp;
  /** The tenant institution. */
  institutionId: Id;
}

/**
 * A single batch was created.
 *
 * Payload of `batch_update` / `batch_created`.
 */
export interface BatchCreatedPayload {
  /** The new batch. */
  batchId: Id;
  /** Human-readable batch number. */
  batchNumber: string;
  /** The exam the batch belongs to. */
  examId: Id;
  /** Exam title. */
  examName: string;
  /** Course code of the exam. */
  courseCode: string;
  /** Number of script slots in the batch. */
  totalSlots: Count;
  /** The staff member who created it. */
  createdBy: Id;
  /** Display name of that staff member. */
  createdByName: string;
  /** The tenant institution. */
  institutionId: Id;
}

/**
 * A batch moved to another status.
 *
 * Payload of `batch_update` / `batch_status_changed`.
 */
export interface BatchStatusChangedPayload {
  /** The batch. */
  batchId: Id;
  /** Human-readable batch number. */
  batchNumber: string;
  /** Status before the change, e.g. `sealed`. */
  previousStatus: string;
  /** Status after the change, e.g. `in_marking`. */
  status: string;
  /** The staff member who changed it. */
  changedBy: Id;
  /** Display name of that staff member. */
  changedByName: string;
  /** When the status changed (ISO-8601). */
  changedAt: Timestamp;
  /** Why the status changed, if given. */
  reason?: string | null;
  /** The tenant institution. */
  institutionId: Id;
}

/**
 * A batch's running counts changed.
 *
 * Payload of `batch_update` / `batch_stats_updated`.
 */
export interface BatchStatsUpdatedPayload {
  /** The batch. */
  batchId: Id;
  /** Number of script slots in the batch. */
  totalSlots: Count;
  /** Scripts submitted so far. */
  submittedCount: Count;
  /** Scripts verified so far. */
  verifiedCount: Count;
  /** Scripts collected so far. */
  collectedCount: Count;
  /** Scripts graded so far. */
  gradedCount: Count;
  /** When the counts were computed (ISO-8601). */
  updatedAt: Timestamp;
  /** The tenant institution. */
  institutionId: Id;
}

/**
 * An exam timetable was published.
 *
 * Payload of `exam_timetable` / `timetable_published`.
 */
export interface TimetablePublishedPayload {
  /** The published timetable. */
  timetableId: Id;
  /** The exam (sitting) the timetable is for. */
  examId: Id;
  /** Exam title, e.g. `First Semester Examinations`. */
  examName: string;
  /** Academic term, e.g. `2024/2025 First Semester`. */
  term: string;
  /** Number of papers (entries) on the timetable. */
  entryCount: Count;
  /** The staff member who published it. */
  publishedBy: Id;
  /** Display name of that staff member. */
  publishedByName: string;
  /** When it was published (ISO-8601). */
  publishedAt: Timestamp;
  /** The tenant institution. */
  institutionId: Id;
}

/**
 * A published timetable was changed.
 *
 * Payload of `exam_timetable` / `timetable_updated`.
 */
export interface TimetableUpdatedPayload {
  /** The changed timetable. */
  timetableId: Id;
  /** The exam the timetable is for. */
  examId: Id;
  /** Revision number after the change. */
  version: Count;
  /** What changed, for display, e.g. `CSC 201 moved to 14 June, 09:00`. */
  changeSummary: string;
  /** The course whose paper moved, when the change concerns one course. */
  courseCode?: string | null;
  /** The staff member who made the change. */
  updatedBy: Id;
  /** Display name of that staff member. */
  updatedByName: string;
  /** When it was changed (ISO-8601). */
  updatedAt: Timestamp;
  /** The tenant institution. */
  institutionId: Id;
}

/**
 * Batches were created in bulk from a timetable.
 *
 * Payload of `exam_timetable` / `batches_created`.
 */
export interface BatchesCreatedPayload {
  /** The timetable the batches were generated from. */
  timetableId: Id;
  /** The exam the batches belong to. */
  examId: Id;
  /** Exam title. */
  examName: string;
  /** Number of batches created. */
  batchCount: Count;
  /** Total script slots across the new batches. */
  totalSlots: Count;
  /** The staff member who ran the generation. */
  createdBy: Id;
  /** Display name of that staff member. */
  createdByName: string;
  /** When the batches were created (ISO-8601). */
  createdAt: Timestamp;
  /** The tenant institution. */
  institutionId: Id;
}

/**
 * An exam incident was reported.
 *
 * Payload of `incident` / `incident_reported`.
 */
export interface IncidentReportedPayload {
  /** The new incident. */
  incidentId: Id;
  /** The exam during which it happened. */
  examId: Id;
  /** Category, e.g. `malpractice`, `illness`, `power_outage`. */
  category: string;
  /** Severity, e.g. `low`, `medium`, `high`. */
  severity: string;
  /** What happened. */
  description: string;
  /** Course code of the paper, if the incident concerns one. */
  courseCode?: string | null;
  /** Exam hall or room, if known. */
  venue?: string | null;
  /** The student involved, if any. */
  studentId?: OptionalId;
  /** The script involved, if any. */
  scriptId?: OptionalId;
  /** The staff member who reported it. */
  reportedBy: Id;
  /** Display name of that staff member. */
  reportedByName: string;
  /** When it was reported (ISO-8601). */
  reportedAt: Timestamp;
  /** The tenant institution. */
  institutionId: Id;
}

/**
 * An incident's status or severity changed.
 *
 * Payload of `incident` / `incident_updated`.
 */
export interface IncidentUpdatedPayload {
  /** The incident. */
  incidentId: Id;
  /** Status after the update, e.g. `under_investigation`. */
  status: string;
  /** Severity after the update. */
  severity: string;
  /** The staff member who updated it. */
  updatedBy: Id;
  /** Display name of that staff member. */
  updatedByName: string;
  /** When it was updated (ISO-8601). */
  updatedAt: Timestamp;
  /** A note explaining the update, if any. */
  note?: string | null;
  /** The tenant institution. */
  institutionId: Id;
}

/**
 * An incident was closed.
 *
 * Payload of `incident` / `incident_resolved`.
 */
export interface IncidentResolvedPayload {
  /** The incident. */
  incidentId: Id;
  /** How it was resolved. */
  resolution: string;
  /** The staff member who resolved it. */
  resolvedBy: Id;
  /** Display name of that staff member. */
  resolvedByName: string;
  /** When it was resolved (ISO-8601). */
  resolvedAt: Timestamp;
  /** The tenant institution. */
  institutionId: Id;
}

/**
 * A notification for one user was created.
 *
 * Payload of `notification` / `new_notification`.
 */
export interface NewNotificationPayload {
  /** The notification. */
  notificationId: Id;
  /** The recipient. */
  userId: Id;
  /** Short title. */
  title: string;
  /** Body text. */
  message: string;
  /** Kind, for icons and filtering, e.g. `info`, `warning`, `batch_assigned`. */
  kind: string;
  /** In-app link to open, if any. */
  link?: string | null;
  /** When it was created (ISO-8601). */
  createdAt: Timestamp;
  /** The tenant institution. */
  institutionId: Id;
}

/**
 * A user read a notification.
 *
 * Payload of `notification` / `notification_read`.
 */
export interface NotificationReadPayload {
  /** The notification. */
  notificationId: Id;
  /** The recipient who read it. */
  userId: Id;
  /** When it was read (ISO-8601). */
  readAt: Timestamp;
  /** The tenant institution. */
  institutionId: Id;
}

/** Every channel of the catalog; also the Socket.IO event name a client listens to. */
export type ChannelName =
  | "script_submission"
  | "batch_update"
  | "exam_timetable"
  | "incident"
  | "notification";

/** Every event type of the catalog, all channels together (names are unique across channels). */
export type EventName =
  | "script_submitted"
  | "script_verified"
  | "script_collected"
  | "script_graded"
  | "batch_sealed"
  | "batch_assigned"
  | "batch_created"
  | "batch_status_changed"
  | "batch_stats_updated"
  | "timetable_published"
  | "timetable_updated"
  | "batches_created"
  | "incident_reported"
  | "incident_updated"
  | "incident_resolved"
  | "new_notification"
  | "notification_read";

/** Channel → event → payload. */
export interface CatalogMap {
  /** Life cycle of individual answer scripts. */
  script_submission: {
    script_submitted: ScriptSubmittedPayload;
    script_verified: ScriptVerifiedPayload;
    script_collected: ScriptCollectedPayload;
    script_graded: ScriptGradedPayload;
  };
  /** Life cycle and statistics of script batches. */
  batch_update: {
    batch_sealed: BatchSealedPayload;
    batch_assigned: BatchAssignedPayload;
    batch_created: BatchCreatedPayload;
    batch_status_changed: BatchStatusChangedPayload;
    batch_stats_updated: BatchStatsUpdatedPayload;
  };
  /** Exam timetable publication and changes. */
  exam_timetable: {
    timetable_published: TimetablePublishedPayload;
    timetable_updated: TimetableUpdatedPayload;
    batches_created: BatchesCreatedPayload;
  };
  /** Exam incidents such as malpractice or disruptions. */
  incident: {
    incident_reported: IncidentReportedPayload;
    incident_updated: IncidentUpdatedPayload;
    incident_resolved: IncidentResolvedPayload;
  };
  /** Per-user notifications. */
  notification: {
    new_notification: NewNotificationPayload;
    notification_read: NotificationReadPayload;
  };
}

/**
 * What the catalog holds, at run time: channels, their default rooms and their events (no schemas,
 * to keep bundles small; `GET /v1/catalog` on a gateway serves the whole document).
 */
export const catalog = {
  "name": "elms",
  "version": 1,
  "channels": {
    "script_submission": {
      "defaultRoom": "institution:{institutionId}",
      "events": [
        "script_submitted",
        "script_verified",
        "script_collected",
        "script_graded"
      ]
    },
    "batch_update": {
      "defaultRoom": "institution:{institutionId}",
      "events": [
        "batch_sealed",
        "batch_assigned",
        "batch_created",
        "batch_status_changed",
        "batch_stats_updated"
      ]
    },
    "exam_timetable": {
      "defaultRoom": "institution:{institutionId}",
      "events": [
        "timetable_published",
        "timetable_updated",
        "batches_created"
      ]
    },
    "incident": {
      "defaultRoom": "institution:{institutionId}",
      "events": [
        "incident_reported",
        "incident_updated",
        "incident_resolved"
      ]
    },
    "notification": {
      "defaultRoom": "user:{payload.userId}",
      "events": [
        "new_notification",
        "notification_read"
      ]
    }
  }
} as const;
