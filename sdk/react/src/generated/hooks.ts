// generated from catalog/elms.json, do not edit (npm run generate -w @realtime-gateway/react)
import { channelHook, eventHook, type ChannelHook, type EventHook } from "../factories.js";

/** Every event of `script_submission`. Life cycle of individual answer scripts. */
export const useScriptSubmissionEvents: ChannelHook<"script_submission"> = /* @__PURE__ */ channelHook("script_submission");

/** `script_submitted` events of `script_submission`. A student's script was handed in. */
export const useScriptSubmittedEvent: EventHook<"script_submission", "script_submitted"> = /* @__PURE__ */ eventHook("script_submission", "script_submitted");

/** `script_verified` events of `script_submission`. An invigilator verified a submitted script. */
export const useScriptVerifiedEvent: EventHook<"script_submission", "script_verified"> = /* @__PURE__ */ eventHook("script_submission", "script_verified");

/** `script_collected` events of `script_submission`. A script was collected for marking. */
export const useScriptCollectedEvent: EventHook<"script_submission", "script_collected"> = /* @__PURE__ */ eventHook("script_submission", "script_collected");

/** `script_graded` events of `script_submission`. An examiner recorded a score for a script. */
export const useScriptGradedEvent: EventHook<"script_submission", "script_graded"> = /* @__PURE__ */ eventHook("script_submission", "script_graded");

/** Every event of `batch_update`. Life cycle and statistics of script batches. */
export const useBatchUpdateEvents: ChannelHook<"batch_update"> = /* @__PURE__ */ channelHook("batch_update");

/** `batch_sealed` events of `batch_update`. A batch was sealed for transport. */
export const useBatchSealedEvent: EventHook<"batch_update", "batch_sealed"> = /* @__PURE__ */ eventHook("batch_update", "batch_sealed");

/** `batch_assigned` events of `batch_update`. A batch was assigned to an examiner. */
export const useBatchAssignedEvent: EventHook<"batch_update", "batch_assigned"> = /* @__PURE__ */ eventHook("batch_update", "batch_assigned");

/** `batch_created` events of `batch_update`. A single batch was created. */
export const useBatchCreatedEvent: EventHook<"batch_update", "batch_created"> = /* @__PURE__ */ eventHook("batch_update", "batch_created");

/** `batch_status_changed` events of `batch_update`. A batch moved to another status. */
export const useBatchStatusChangedEvent: EventHook<"batch_update", "batch_status_changed"> = /* @__PURE__ */ eventHook("batch_update", "batch_status_changed");

/** `batch_stats_updated` events of `batch_update`. A batch's running counts changed. */
export const useBatchStatsUpdatedEvent: EventHook<"batch_update", "batch_stats_updated"> = /* @__PURE__ */ eventHook("batch_update", "batch_stats_updated");

/** Every event of `exam_timetable`. Exam timetable publication and changes. */
export const useExamTimetableEvents: ChannelHook<"exam_timetable"> = /* @__PURE__ */ channelHook("exam_timetable");

/** `timetable_published` events of `exam_timetable`. An exam timetable was published. */
export const useTimetablePublishedEvent: EventHook<"exam_timetable", "timetable_published"> = /* @__PURE__ */ eventHook("exam_timetable", "timetable_published");

/** `timetable_updated` events of `exam_timetable`. A published timetable was changed. */
export const useTimetableUpdatedEvent: EventHook<"exam_timetable", "timetable_updated"> = /* @__PURE__ */ eventHook("exam_timetable", "timetable_updated");

/** `batches_created` events of `exam_timetable`. Batches were created in bulk from a timetable. */
export const useBatchesCreatedEvent: EventHook<"exam_timetable", "batches_created"> = /* @__PURE__ */ eventHook("exam_timetable", "batches_created");

/** Every event of `incident`. Exam incidents such as malpractice or disruptions. */
export const useIncidentEvents: ChannelHook<"incident"> = /* @__PURE__ */ channelHook("incident");

/** `incident_reported` events of `incident`. An exam incident was reported. */
export const useIncidentReportedEvent: EventHook<"incident", "incident_reported"> = /* @__PURE__ */ eventHook("incident", "incident_reported");

/** `incident_updated` events of `incident`. An incident's status or severity changed. */
export const useIncidentUpdatedEvent: EventHook<"incident", "incident_updated"> = /* @__PURE__ */ eventHook("incident", "incident_updated");

/** `incident_resolved` events of `incident`. An incident was closed. */
export const useIncidentResolvedEvent: EventHook<"incident", "incident_resolved"> = /* @__PURE__ */ eventHook("incident", "incident_resolved");

/** Every event of `notification`. Per-user notifications. */
export const useNotificationEvents: ChannelHook<"notification"> = /* @__PURE__ */ channelHook("notification");

/** `new_notification` events of `notification`. A notification for one user was created. */
export const useNewNotificationEvent: EventHook<"notification", "new_notification"> = /* @__PURE__ */ eventHook("notification", "new_notification");

/** `notification_read` events of `notification`. A user read a notification. */
export const useNotificationReadEvent: EventHook<"notification", "notification_read"> = /* @__PURE__ */ eventHook("notification", "notification_read");
