//! The event catalog: every channel and event type the gateway knows, and the
//! payload schema of each event.
//!
//! Backend services publish events as `(channel, event type, JSON payload)`.
//! This module is the single source of truth for which event types belong to
//! which channel ([`Channel::events`], [`EventType::channel`]) and for the shape
//! of each payload (one typed struct per event type, e.g. [`ScriptSubmitted`]).
//!
//! In strict mode the gateway calls [`validate_payload`] before relaying an
//! event. Validation only *inspects* the raw JSON: the bytes that are relayed
//! are always the publisher's own, never a re-serialization. Fields that the
//! catalog does not know about are accepted and pass through untouched, so
//! publishers can add fields before the catalog learns about them.
//!
//! Wire conventions shared by all payloads:
//! - field names are camelCase;
//! - ids ([`Id`]) may be JSON integers or non-empty strings;
//! - timestamps are ISO-8601 strings, e.g. `2025-06-12T09:30:00Z`;
//! - counts are non-negative integers; scores are numbers;
//! - optional fields may be absent or `null`;
//! - every payload carries the tenant as `institutionId`.

mod validate;

use std::fmt;

use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------
// Channels and event types
// ---------------------------------------------------------------------------

/// A broadcast channel: a family of related event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Life cycle of individual answer scripts (`script_submission`).
    ScriptSubmission,
    /// Life cycle and statistics of script batches (`batch_update`).
    BatchUpdate,
    /// Exam timetable publication and changes (`exam_timetable`).
    ExamTimetable,
    /// Exam incidents such as malpractice or disruptions (`incident`).
    Incident,
    /// Per-user notifications (`notification`).
    Notification,
}

impl Channel {
    /// Every channel, in catalog order.
    pub const ALL: [Channel; 5] = [
        Channel::ScriptSubmission,
        Channel::BatchUpdate,
        Channel::ExamTimetable,
        Channel::Incident,
        Channel::Notification,
    ];

    /// The wire name of the channel, e.g. `script_submission`.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::ScriptSubmission => "script_submission",
            Channel::BatchUpdate => "batch_update",
            Channel::ExamTimetable => "exam_timetable",
            Channel::Incident => "incident",
            Channel::Notification => "notification",
        }
    }

    /// Parses a wire name; `None` for anything not in the catalog.
    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The event types published on this channel, in catalog order.
    pub fn events(self) -> &'static [EventType] {
        use EventType as E;
        match self {
            Channel::ScriptSubmission => &[
                E::ScriptSubmitted,
                E::ScriptVerified,
                E::ScriptCollected,
                E::ScriptGraded,
            ],
            Channel::BatchUpdate => &[
                E::BatchSealed,
                E::BatchAssigned,
                E::BatchCreated,
                E::BatchStatusChanged,
                E::BatchStatsUpdated,
            ],
            Channel::ExamTimetable => &[
                E::TimetablePublished,
                E::TimetableUpdated,
                E::BatchesCreated,
            ],
            Channel::Incident => &[E::IncidentReported, E::IncidentUpdated, E::IncidentResolved],
            Channel::Notification => &[E::NewNotification, E::NotificationRead],
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event type; each belongs to exactly one [`Channel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// A student's script was handed in (`script_submitted`).
    ScriptSubmitted,
    /// An invigilator verified a submitted script (`script_verified`).
    ScriptVerified,
    /// A script was collected for marking (`script_collected`).
    ScriptCollected,
    /// An examiner recorded a score for a script (`script_graded`).
    ScriptGraded,
    /// A batch was sealed for transport (`batch_sealed`).
    BatchSealed,
    /// A batch was assigned to an examiner (`batch_assigned`).
    BatchAssigned,
    /// A single batch was created (`batch_created`).
    BatchCreated,
    /// A batch moved to another status (`batch_status_changed`).
    BatchStatusChanged,
    /// A batch's running counts changed (`batch_stats_updated`).
    BatchStatsUpdated,
    /// An exam timetable was published (`timetable_published`).
    TimetablePublished,
    /// A published timetable was changed (`timetable_updated`).
    TimetableUpdated,
    /// Batches were created in bulk from a timetable (`batches_created`).
    BatchesCreated,
    /// An exam incident was reported (`incident_reported`).
    IncidentReported,
    /// An incident's status or severity changed (`incident_updated`).
    IncidentUpdated,
    /// An incident was closed (`incident_resolved`).
    IncidentResolved,
    /// A notification for one user was created (`new_notification`).
    NewNotification,
    /// A user read a notification (`notification_read`).
    NotificationRead,
}

impl EventType {
    /// Every event type, grouped by channel in catalog order.
    pub const ALL: [EventType; 17] = [
        EventType::ScriptSubmitted,
        EventType::ScriptVerified,
        EventType::ScriptCollected,
        EventType::ScriptGraded,
        EventType::BatchSealed,
        EventType::BatchAssigned,
        EventType::BatchCreated,
        EventType::BatchStatusChanged,
        EventType::BatchStatsUpdated,
        EventType::TimetablePublished,
        EventType::TimetableUpdated,
        EventType::BatchesCreated,
        EventType::IncidentReported,
        EventType::IncidentUpdated,
        EventType::IncidentResolved,
        EventType::NewNotification,
        EventType::NotificationRead,
    ];

    /// The wire name of the event type, e.g. `script_submitted`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ScriptSubmitted => "script_submitted",
            EventType::ScriptVerified => "script_verified",
            EventType::ScriptCollected => "script_collected",
            EventType::ScriptGraded => "script_graded",
            EventType::BatchSealed => "batch_sealed",
            EventType::BatchAssigned => "batch_assigned",
            EventType::BatchCreated => "batch_created",
            EventType::BatchStatusChanged => "batch_status_changed",
            EventType::BatchStatsUpdated => "batch_stats_updated",
            EventType::TimetablePublished => "timetable_published",
            EventType::TimetableUpdated => "timetable_updated",
            EventType::BatchesCreated => "batches_created",
            EventType::IncidentReported => "incident_reported",
            EventType::IncidentUpdated => "incident_updated",
            EventType::IncidentResolved => "incident_resolved",
            EventType::NewNotification => "new_notification",
            EventType::NotificationRead => "notification_read",
        }
    }

    /// Parses a wire name; `None` for anything not in the catalog.
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// The channel this event type is published on.
    pub fn channel(self) -> Channel {
        use EventType as E;
        match self {
            E::ScriptSubmitted | E::ScriptVerified | E::ScriptCollected | E::ScriptGraded => {
                Channel::ScriptSubmission
            }
            E::BatchSealed
            | E::BatchAssigned
            | E::BatchCreated
            | E::BatchStatusChanged
            | E::BatchStatsUpdated => Channel::BatchUpdate,
            E::TimetablePublished | E::TimetableUpdated | E::BatchesCreated => {
                Channel::ExamTimetable
            }
            E::IncidentReported | E::IncidentUpdated | E::IncidentResolved => Channel::Incident,
            E::NewNotification | E::NotificationRead => Channel::Notification,
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------
// Ids
// ---------------------------------------------------------------------------

/// An identifier as it appears in payloads: a JSON integer or a JSON string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IdValue {
    /// A numeric id, e.g. `42`.
    Int(i64),
    /// A string id, e.g. `"stu_01HZX"`.
    Str(String),
}

/// The id type used by every payload field that names an entity.
pub type Id = IdValue;

impl fmt::Display for IdValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdValue::Int(n) => write!(f, "{n}"),
            IdValue::Str(s) => f.write_str(s),
        }
    }
}

// ---------------------------------------------------------------------------
// Payloads: script_submission
// ---------------------------------------------------------------------------

/// Payload of `script_submitted`: a student handed in an answer script.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScriptSubmitted {
    /// The submitted script.
    pub script_id: Id,
    /// The batch the script was placed in.
    pub batch_id: Id,
    /// The student who wrote the script.
    pub student_id: Id,
    /// The student's display name.
    pub student_name: String,
    /// Course code, e.g. `CSC 201`.
    pub course_code: String,
    /// Course title.
    pub course_name: String,
    /// When the script was handed in (ISO-8601).
    pub submitted_at: String,
    /// The tenant institution.
    pub institution_id: Id,
}

/// Payload of `script_verified`: an invigilator checked a submitted script.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScriptVerified {
    /// The verified script.
    pub script_id: Id,
    /// The batch the script belongs to.
    pub batch_id: Id,
    /// The student who wrote the script.
    pub student_id: Id,
    /// The staff member who verified it.
    pub verified_by: Id,
    /// Display name of the verifier.
    pub verified_by_name: String,
    /// When the script was verified (ISO-8601).
    pub verified_at: String,
    /// Free-text remarks from the verifier, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remarks: Option<String>,
    /// The tenant institution.
    pub institution_id: Id,
}

/// Payload of `script_collected`: a script was collected for marking.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScriptCollected {
    /// The collected script.
    pub script_id: Id,
    /// The batch the script belongs to.
    pub batch_id: Id,
    /// The student who wrote the script.
    pub student_id: Id,
    /// The staff member who collected it.
    pub collected_by: Id,
    /// Display name of the collector.
    pub collected_by_name: String,
    /// When the script was collected (ISO-8601).
    pub collected_at: String,
    /// Free-text remarks, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remarks: Option<String>,
    /// The tenant institution.
    pub institution_id: Id,
}

/// Payload of `script_graded`: an examiner recorded a score for a script.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScriptGraded {
    /// The graded script.
    pub script_id: Id,
    /// The batch the script belongs to.
    pub batch_id: Id,
    /// The student who wrote the script.
    pub student_id: Id,
    /// Course code of the exam.
    pub course_code: String,
    /// The examiner who graded it.
    pub graded_by: Id,
    /// Display name of the examiner.
    pub graded_by_name: String,
    /// Score awarded (may be fractional).
    pub score: f64,
    /// Maximum attainable score.
    pub max_score: f64,
    /// Letter grade, when already computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grade: Option<String>,
    /// The examiner's comment, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// When the score was recorded (ISO-8601).
    pub graded_at: String,
    /// The tenant institution.
    pub institution_id: Id,
}

// ---------------------------------------------------------------------------
// Payloads: batch_update
// ---------------------------------------------------------------------------

/// Payload of `batch_sealed`: a batch of scripts was sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchSealed {
    /// The sealed batch.
    pub batch_id: Id,
    /// Human-readable batch number, e.g. `B-2025-014`.
    pub batch_number: String,
    /// The exam the batch belongs to.
    pub exam_id: Id,
    /// Number of scripts in the sealed batch.
    pub script_count: u32,
    /// The staff member who sealed it.
    pub sealed_by: Id,
    /// Display name of that staff member.
    pub sealed_by_name: String,
    /// When the batch was sealed (ISO-8601).
    pub sealed_at: String,
    /// Number printed on the physical seal, if recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seal_number: Option<String>,
    /// The tenant institution.
    pub institution_id: Id,
}

/// Payload of `batch_assigned`: a batch was assigned to an examiner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchAssigned {
    /// The assigned batch.
    pub batch_id: Id,
    /// Human-readable batch number.
    pub batch_number: String,
    /// The exam the batch belongs to.
    pub exam_id: Id,
    /// The examiner the batch was assigned to.
    pub assigned_to: Id,
    /// Display name of the examiner.
    pub assigned_to_name: String,
    /// The staff member who made the assignment.
    pub assigned_by: Id,
    /// Display name of that staff member.
    pub assigned_by_name: String,
    /// When the assignment was made (ISO-8601).
    pub assigned_at: String,
    /// Marking deadline (ISO-8601), if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_at: Option<String>,
    /// The tenant institution.
    pub institution_id: Id,
}

/// Payload of `batch_created`: a single batch was created for an exam.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchCreated {
    /// The new batch.
    pub batch_id: Id,
    /// Human-readable batch number.
    pub batch_number: String,
    /// The exam the batch belongs to.
    pub exam_id: Id,
    /// Exam title.
    pub exam_name: String,
    /// Course code of the exam.
    pub course_code: String,
    /// Number of script slots in the batch.
    pub total_slots: u32,
    /// The staff member who created it.
    pub created_by: Id,
    /// Display name of that staff member.
    pub created_by_name: String,
    /// The tenant institution.
    pub institution_id: Id,
}

/// Payload of `batch_status_changed`: a batch moved to another status.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchStatusChanged {
    /// The batch.
    pub batch_id: Id,
    /// Human-readable batch number.
    pub batch_number: String,
    /// Status before the change, e.g. `sealed`.
    pub previous_status: String,
    /// Status after the change, e.g. `in_marking`.
    pub status: String,
    /// The staff member who changed it.
    pub changed_by: Id,
    /// Display name of that staff member.
    pub changed_by_name: String,
    /// When the status changed (ISO-8601).
    pub changed_at: String,
    /// Why the status changed, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The tenant institution.
    pub institution_id: Id,
}

/// Payload of `batch_stats_updated`: a batch's running counts changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchStatsUpdated {
    /// The batch.
    pub batch_id: Id,
    /// Number of script slots in the batch.
    pub total_slots: u32,
    /// Scripts submitted so far.
    pub submitted_count: u32,
    /// Scripts verified so far.
    pub verified_count: u32,
    /// Scripts collected so far.
    pub collected_count: u32,
    /// Scripts graded so far.
    pub graded_count: u32,
    /// When the counts were computed (ISO-8601).
    pub updated_at: String,
    /// The tenant institution.
    pub institution_id: Id,
}

// ---------------------------------------------------------------------------
// Payloads: exam_timetable
// ---------------------------------------------------------------------------

/// Payload of `timetable_published`: an exam timetable was published.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimetablePublished {
    /// The published timetable.
    pub timetable_id: Id,
    /// The exam (sitting) the timetable is for.
    pub exam_id: Id,
    /// Exam title, e.g. `First Semester Examinations`.
    pub exam_name: String,
    /// Academic term, e.g. `2024/2025 First Semester`.
    pub term: String,
    /// Number of papers (entries) on the timetable.
    pub entry_count: u32,
    /// The staff member who published it.
    pub published_by: Id,
    /// Display name of that staff member.
    pub published_by_name: String,
    /// When it was published (ISO-8601).
    pub published_at: String,
    /// The tenant institution.
    pub institution_id: Id,
}

/// Payload of `timetable_updated`: a published timetable was changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimetableUpdated {
    /// The changed timetable.
    pub timetable_id: Id,
    /// The exam the timetable is for.
    pub exam_id: Id,
    /// Revision number after the change.
    pub version: u32,
    /// What changed, for display, e.g. `CSC 201 moved to 14 June, 09:00`.
    pub change_summary: String,
    /// The course whose paper moved, when the change concerns one course.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub course_code: Option<String>,
    /// The staff member who made the change.
    pub updated_by: Id,
    /// Display name of that staff member.
    pub updated_by_name: String,
    /// When it was changed (ISO-8601).
    pub updated_at: String,
    /// The tenant institution.
    pub institution_id: Id,
}

/// Payload of `batches_created`: batches were created in bulk from a timetable.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchesCreated {
    /// The timetable the batches were generated from.
    pub timetable_id: Id,
    /// The exam the batches belong to.
    pub exam_id: Id,
    /// Exam title.
    pub exam_name: String,
    /// Number of batches created.
    pub batch_count: u32,
    /// Total script slots across the new batches.
    pub total_slots: u32,
    /// The staff member who ran the generation.
    pub created_by: Id,
    /// Display name of that staff member.
    pub created_by_name: String,
    /// When the batches were created (ISO-8601).
    pub created_at: String,
    /// The tenant institution.
    pub institution_id: Id,
}

// ---------------------------------------------------------------------------
// Payloads: incident
// ---------------------------------------------------------------------------

/// Payload of `incident_reported`: an exam incident was reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IncidentReported {
    /// The new incident.
    pub incident_id: Id,
    /// The exam during which it happened.
    pub exam_id: Id,
    /// Category, e.g. `malpractice`, `illness`, `power_outage`.
    pub category: String,
    /// Severity, e.g. `low`, `medium`, `high`.
    pub severity: String,
    /// What happened.
    pub description: String,
    /// Course code of the paper, if the incident concerns one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub course_code: Option<String>,
    /// Exam hall or room, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub venue: Option<String>,
    /// The student involved, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub student_id: Option<Id>,
    /// The script involved, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script_id: Option<Id>,
    /// The staff member who reported it.
    pub reported_by: Id,
    /// Display name of that staff member.
    pub reported_by_name: String,
    /// When it was reported (ISO-8601).
    pub reported_at: String,
    /// The tenant institution.
    pub institution_id: Id,
}

/// Payload of `incident_updated`: an incident's status or severity changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IncidentUpdated {
    /// The incident.
    pub incident_id: Id,
    /// Status after the update, e.g. `under_investigation`.
    pub status: String,
    /// Severity after the update.
    pub severity: String,
    /// The staff member who updated it.
    pub updated_by: Id,
    /// Display name of that staff member.
    pub updated_by_name: String,
    /// When it was updated (ISO-8601).
    pub updated_at: String,
    /// A note explaining the update, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The tenant institution.
    pub institution_id: Id,
}

/// Payload of `incident_resolved`: an incident was closed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IncidentResolved {
    /// The incident.
    pub incident_id: Id,
    /// How it was resolved.
    pub resolution: String,
    /// The staff member who resolved it.
    pub resolved_by: Id,
    /// Display name of that staff member.
    pub resolved_by_name: String,
    /// When it was resolved (ISO-8601).
    pub resolved_at: String,
    /// The tenant institution.
    pub institution_id: Id,
}

// ---------------------------------------------------------------------------
// Payloads: notification
// ---------------------------------------------------------------------------

/// Payload of `new_notification`: a notification for one user. The gateway
/// routes it to room `user:<userId>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewNotification {
    /// The notification.
    pub notification_id: Id,
    /// The recipient.
    pub user_id: Id,
    /// Short title.
    pub title: String,
    /// Body text.
    pub message: String,
    /// Kind, for icons and filtering, e.g. `info`, `warning`, `batch_assigned`.
    pub kind: String,
    /// In-app link to open, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// When it was created (ISO-8601).
    pub created_at: String,
    /// The tenant institution.
    pub institution_id: Id,
}

/// Payload of `notification_read`: a user read a notification. The gateway
/// routes it to room `user:<userId>` so the user's other sessions update.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationRead {
    /// The notification.
    pub notification_id: Id,
    /// The recipient who read it.
    pub user_id: Id,
    /// When it was read (ISO-8601).
    pub read_at: String,
    /// The tenant institution.
    pub institution_id: Id,
}

pub use validate::{example, required_fields, validate_payload, PayloadError};
