//! Payload validation: the schema of each event type (required fields and their JSON kinds)
//! and the check strict publishing runs before relaying. It only inspects the raw JSON; the
//! bytes relayed stay the publisher's own.

use serde_json::value::RawValue;
use serde_json::Value;

use super::*;

// ---------------------------------------------------------------------------
// Schemas
// ---------------------------------------------------------------------------

/// The JSON kind a field must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An integer (fits `i64`) or a non-empty string.
    Id,
    /// Any string.
    Str,
    /// A string starting with an ISO-8601 date, `YYYY-MM-DD`.
    Timestamp,
    /// A non-negative integer that fits `u32`.
    Count,
    /// Any JSON number.
    Number,
}

impl Kind {
    /// What the field should be, phrased for an error message.
    fn expected(self) -> &'static str {
        match self {
            Kind::Id => "an id (an integer or a non-empty string)",
            Kind::Str => "a string",
            Kind::Timestamp => "an ISO-8601 timestamp string",
            Kind::Count => "a non-negative integer",
            Kind::Number => "a number",
        }
    }

    /// Checks a present value (a required field set to `null` fails here);
    /// on mismatch returns the error message.
    fn check(self, value: &Value) -> Result<(), String> {
        let ok = match (self, value) {
            (Kind::Id, Value::Number(n)) => n.is_i64(),
            (Kind::Id, Value::String(s)) => !s.is_empty(),
            (Kind::Str, Value::String(_)) => true,
            (Kind::Timestamp, Value::String(s)) => {
                if !looks_like_iso8601(s) {
                    return Err(
                        "expected an ISO-8601 timestamp such as 2025-06-12T09:30:00Z".to_owned(),
                    );
                }
                true
            }
            (Kind::Count, Value::Number(n)) => n.as_u64().is_some_and(|v| v <= u64::from(u32::MAX)),
            (Kind::Number, Value::Number(_)) => true,
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "expected {}, found {}",
                self.expected(),
                describe(value)
            ))
        }
    }
}

/// A short description of a JSON value's kind, for error messages.
fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.as_i64().is_some_and(|v| v < 0) => "a negative integer",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(_) => "a number",
        Value::String(s) if s.is_empty() => "an empty string",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Whether `s` starts with a plausible ISO-8601 date (`YYYY-MM-DD`), followed
/// by nothing or by a time part introduced with `T` (or a space).
fn looks_like_iso8601(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 10 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if !(digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10)) {
        return false;
    }
    let two = |i: usize| (b[i] - b'0') * 10 + (b[i + 1] - b'0');
    let (month, day) = (two(5), two(8));
    (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && (b.len() == 10 || matches!(b[10], b'T' | b't' | b' '))
}

/// The wire-level schema of one payload: required fields (names and kinds, in
/// the same order) and optional fields.
struct Schema {
    required: &'static [&'static str],
    required_kinds: &'static [Kind],
    optional: &'static [(&'static str, Kind)],
}

/// Builds a [`Schema`] from `"wireName": Kind` lists.
macro_rules! schema {
    (
        required { $($r:literal : $rk:ident),* $(,)? }
        optional { $($o:literal : $ok:ident),* $(,)? }
    ) => {
        Schema {
            required: &[$($r),*],
            required_kinds: &[$(Kind::$rk),*],
            optional: &[$(($o, Kind::$ok)),*],
        }
    };
}

/// The schema of an event's payload; mirrors the payload structs above.
fn schema(event: EventType) -> &'static Schema {
    use EventType as E;
    match event {
        E::ScriptSubmitted => &schema! {
            required {
                "scriptId": Id, "batchId": Id, "studentId": Id, "studentName": Str,
                "courseCode": Str, "courseName": Str, "submittedAt": Timestamp,
                "institutionId": Id,
            }
            optional {}
        },
        E::ScriptVerified => &schema! {
            required {
                "scriptId": Id, "batchId": Id, "studentId": Id, "verifiedBy": Id,
                "verifiedByName": Str, "verifiedAt": Timestamp, "institutionId": Id,
            }
            optional { "remarks": Str }
        },
        E::ScriptCollected => &schema! {
            required {
                "scriptId": Id, "batchId": Id, "studentId": Id, "collectedBy": Id,
                "collectedByName": Str, "collectedAt": Timestamp, "institutionId": Id,
            }
            optional { "remarks": Str }
        },
        E::ScriptGraded => &schema! {
            required {
                "scriptId": Id, "batchId": Id, "studentId": Id, "courseCode": Str,
                "gradedBy": Id, "gradedByName": Str, "score": Number, "maxScore": Number,
                "gradedAt": Timestamp, "institutionId": Id,
            }
            optional { "grade": Str, "comment": Str }
        },
        E::BatchSealed => &schema! {
            required {
                "batchId": Id, "batchNumber": Str, "examId": Id, "scriptCount": Count,
                "sealedBy": Id, "sealedByName": Str, "sealedAt": Timestamp,
                "institutionId": Id,
            }
            optional { "sealNumber": Str }
        },
        E::BatchAssigned => &schema! {
            required {
                "batchId": Id, "batchNumber": Str, "examId": Id, "assignedTo": Id,
                "assignedToName": Str, "assignedBy": Id, "assignedByName": Str,
                "assignedAt": Timestamp, "institutionId": Id,
            }
            optional { "dueAt": Timestamp }
        },
        E::BatchCreated => &schema! {
            required {
                "batchId": Id, "batchNumber": Str, "examId": Id, "examName": Str,
                "courseCode": Str, "totalSlots": Count, "createdBy": Id,
                "createdByName": Str, "institutionId": Id,
            }
            optional {}
        },
        E::BatchStatusChanged => &schema! {
            required {
                "batchId": Id, "batchNumber": Str, "previousStatus": Str, "status": Str,
                "changedBy": Id, "changedByName": Str, "changedAt": Timestamp,
                "institutionId": Id,
            }
            optional { "reason": Str }
        },
        E::BatchStatsUpdated => &schema! {
            required {
                "batchId": Id, "totalSlots": Count, "submittedCount": Count,
                "verifiedCount": Count, "collectedCount": Count, "gradedCount": Count,
                "updatedAt": Timestamp, "institutionId": Id,
            }
            optional {}
        },
        E::TimetablePublished => &schema! {
            required {
                "timetableId": Id, "examId": Id, "examName": Str, "term": Str,
                "entryCount": Count, "publishedBy": Id, "publishedByName": Str,
                "publishedAt": Timestamp, "institutionId": Id,
            }
            optional {}
        },
        E::TimetableUpdated => &schema! {
            required {
                "timetableId": Id, "examId": Id, "version": Count, "changeSummary": Str,
                "updatedBy": Id, "updatedByName": Str, "updatedAt": Timestamp,
                "institutionId": Id,
            }
            optional { "courseCode": Str }
        },
        E::BatchesCreated => &schema! {
            required {
                "timetableId": Id, "examId": Id, "examName": Str, "batchCount": Count,
                "totalSlots": Count, "createdBy": Id, "createdByName": Str,
                "createdAt": Timestamp, "institutionId": Id,
            }
            optional {}
        },
        E::IncidentReported => &schema! {
            required {
                "incidentId": Id, "examId": Id, "category": Str, "severity": Str,
                "description": Str, "reportedBy": Id, "reportedByName": Str,
                "reportedAt": Timestamp, "institutionId": Id,
            }
            optional { "courseCode": Str, "venue": Str, "studentId": Id, "scriptId": Id }
        },
        E::IncidentUpdated => &schema! {
            required {
                "incidentId": Id, "status": Str, "severity": Str, "updatedBy": Id,
                "updatedByName": Str, "updatedAt": Timestamp, "institutionId": Id,
            }
            optional { "note": Str }
        },
        E::IncidentResolved => &schema! {
            required {
                "incidentId": Id, "resolution": Str, "resolvedBy": Id,
                "resolvedByName": Str, "resolvedAt": Timestamp, "institutionId": Id,
            }
            optional {}
        },
        E::NewNotification => &schema! {
            required {
                "notificationId": Id, "userId": Id, "title": Str, "message": Str,
                "kind": Str, "createdAt": Timestamp, "institutionId": Id,
            }
            optional { "link": Str }
        },
        E::NotificationRead => &schema! {
            required {
                "notificationId": Id, "userId": Id, "readAt": Timestamp,
                "institutionId": Id,
            }
            optional {}
        },
    }
}

/// Runs `$body` with `$t` bound to the payload struct of `$event`.
macro_rules! with_payload_type {
    ($event:expr, $t:ident => $body:expr) => {{
        use EventType as E;
        match $event {
            E::ScriptSubmitted => {
                type $t = ScriptSubmitted;
                $body
            }
            E::ScriptVerified => {
                type $t = ScriptVerified;
                $body
            }
            E::ScriptCollected => {
                type $t = ScriptCollected;
                $body
            }
            E::ScriptGraded => {
                type $t = ScriptGraded;
                $body
            }
            E::BatchSealed => {
                type $t = BatchSealed;
                $body
            }
            E::BatchAssigned => {
                type $t = BatchAssigned;
                $body
            }
            E::BatchCreated => {
                type $t = BatchCreated;
                $body
            }
            E::BatchStatusChanged => {
                type $t = BatchStatusChanged;
                $body
            }
            E::BatchStatsUpdated => {
                type $t = BatchStatsUpdated;
                $body
            }
            E::TimetablePublished => {
                type $t = TimetablePublished;
                $body
            }
            E::TimetableUpdated => {
                type $t = TimetableUpdated;
                $body
            }
            E::BatchesCreated => {
                type $t = BatchesCreated;
                $body
            }
            E::IncidentReported => {
                type $t = IncidentReported;
                $body
            }
            E::IncidentUpdated => {
                type $t = IncidentUpdated;
                $body
            }
            E::IncidentResolved => {
                type $t = IncidentResolved;
                $body
            }
            E::NewNotification => {
                type $t = NewNotification;
                $body
            }
            E::NotificationRead => {
                type $t = NotificationRead;
                $body
            }
        }
    }};
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// A payload that does not match its event's schema: which field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PayloadError {
    /// Dotted path of the offending field, e.g. `payload.scriptId`, or just
    /// `payload` when the problem is the payload as a whole.
    pub field: String,
    /// What is wrong, e.g. `missing required field`.
    pub message: String,
}

impl PayloadError {
    fn at(name: &str, message: impl Into<String>) -> Self {
        PayloadError {
            field: format!("payload.{name}"),
            message: message.into(),
        }
    }

    fn whole(message: impl Into<String>) -> Self {
        PayloadError {
            field: "payload".to_owned(),
            message: message.into(),
        }
    }
}

/// The required fields (wire names) of an event's payload, in schema order.
pub fn required_fields(event: EventType) -> &'static [&'static str] {
    schema(event).required
}

/// Checks that `payload` matches the schema of `event`.
///
/// The payload must be a JSON object; every required field must be present,
/// non-null and of the right kind; optional fields may be absent or `null`.
/// Unknown fields are ignored. The raw bytes are only read, never rewritten.
pub fn validate_payload(event: EventType, payload: &RawValue) -> Result<(), PayloadError> {
    let value: Value = serde_json::from_str(payload.get())
        .map_err(|e| PayloadError::whole(format!("is not valid JSON: {}", strip_position(&e))))?;
    let Value::Object(map) = &value else {
        return Err(PayloadError::whole(format!(
            "expected a JSON object, found {}",
            describe(&value)
        )));
    };

    let schema = schema(event);
    for (&name, &kind) in schema.required.iter().zip(schema.required_kinds) {
        match map.get(name) {
            None => return Err(PayloadError::at(name, "missing required field")),
            Some(v) => kind.check(v).map_err(|m| PayloadError::at(name, m))?,
        }
    }
    for &(name, kind) in schema.optional {
        match map.get(name) {
            None | Some(Value::Null) => {}
            Some(v) => kind.check(v).map_err(|m| PayloadError::at(name, m))?,
        }
    }

    // Final guard: the typed struct must accept the same bytes (this also
    // catches duplicate keys, which the map above silently collapses).
    with_payload_type!(event, T => serde_json::from_str::<T>(payload.get()).map(drop))
        .map_err(|e| serde_error(&e))
}

/// Maps a serde_json error to a [`PayloadError`] naming the field if possible.
fn serde_error(err: &serde_json::Error) -> PayloadError {
    let text = strip_position(err);
    let field_in = |prefix: &str| {
        text.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix('`'))
            .map(str::to_owned)
    };
    if let Some(name) = field_in("missing field `") {
        PayloadError::at(&name, "missing required field")
    } else if let Some(name) = field_in("duplicate field `") {
        PayloadError::at(&name, "field appears more than once")
    } else {
        PayloadError::whole(text)
    }
}

/// serde_json's message without its trailing ` at line L column C`.
fn strip_position(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    match text.strip_suffix(&suffix) {
        Some(s) => s.to_owned(),
        None => text,
    }
}

/// A realistic valid payload of `event` (JSON text): the tests check each against its schema;
/// the benchmark measures the wire size of each.
pub fn example(event: EventType) -> &'static str {
    use EventType as E;
    match event {
        E::ScriptSubmitted => {
            r#"{"scriptId":1042,"batchId":77,"studentId":"U2021/CSC/118","studentName":"Adaeze Okafor","courseCode":"CSC 201","courseName":"Data Structures","submittedAt":"2025-06-12T11:02:45Z","institutionId":3}"#
        }
        E::ScriptVerified => {
            r#"{"scriptId":1042,"batchId":77,"studentId":"U2021/CSC/118","verifiedBy":55,"verifiedByName":"Mr. Bello","verifiedAt":"2025-06-12T11:05:10Z","remarks":"Cover page signed","institutionId":3}"#
        }
        E::ScriptCollected => {
            r#"{"scriptId":1042,"batchId":77,"studentId":"U2021/CSC/118","collectedBy":"staff_9","collectedByName":"Mrs. Eze","collectedAt":"2025-06-12T12:00:00+01:00","institutionId":3}"#
        }
        E::ScriptGraded => {
            r#"{"scriptId":1042,"batchId":77,"studentId":"U2021/CSC/118","courseCode":"CSC 201","gradedBy":61,"gradedByName":"Dr. Musa","score":67.5,"maxScore":100,"grade":"B","comment":null,"gradedAt":"2025-06-20T15:30:00Z","institutionId":3}"#
        }
        E::BatchSealed => {
            r#"{"batchId":77,"batchNumber":"B-2025-014","examId":9,"scriptCount":48,"sealedBy":55,"sealedByName":"Mr. Bello","sealedAt":"2025-06-12T12:10:00Z","sealNumber":"SL-88213","institutionId":3}"#
        }
        E::BatchAssigned => {
            r#"{"batchId":77,"batchNumber":"B-2025-014","examId":9,"assignedTo":61,"assignedToName":"Dr. Musa","assignedBy":12,"assignedByName":"Exams Officer","assignedAt":"2025-06-13T08:00:00Z","dueAt":"2025-06-27","institutionId":3}"#
        }
        E::BatchCreated => {
            r#"{"batchId":77,"batchNumber":"B-2025-014","examId":9,"examName":"First Semester Examinations","courseCode":"CSC 201","totalSlots":50,"createdBy":12,"createdByName":"Exams Officer","institutionId":3}"#
        }
        E::BatchStatusChanged => {
            r#"{"batchId":77,"batchNumber":"B-2025-014","previousStatus":"sealed","status":"in_marking","changedBy":61,"changedByName":"Dr. Musa","changedAt":"2025-06-14T09:00:00Z","institutionId":3}"#
        }
        E::BatchStatsUpdated => {
            r#"{"batchId":77,"totalSlots":50,"submittedCount":48,"verifiedCount":48,"collectedCount":48,"gradedCount":12,"updatedAt":"2025-06-20T15:30:01Z","institutionId":3}"#
        }
        E::TimetablePublished => {
            r#"{"timetableId":"tt_2025_s1","examId":9,"examName":"First Semester Examinations","term":"2024/2025 First Semester","entryCount":132,"publishedBy":12,"publishedByName":"Exams Officer","publishedAt":"2025-05-02T10:00:00Z","institutionId":3}"#
        }
        E::TimetableUpdated => {
            r#"{"timetableId":"tt_2025_s1","examId":9,"version":4,"changeSummary":"CSC 201 moved to 14 June, 09:00","courseCode":"CSC 201","updatedBy":12,"updatedByName":"Exams Officer","updatedAt":"2025-05-20T16:45:00Z","institutionId":3}"#
        }
        E::BatchesCreated => {
            r#"{"timetableId":"tt_2025_s1","examId":9,"examName":"First Semester Examinations","batchCount":264,"totalSlots":13200,"createdBy":12,"createdByName":"Exams Officer","createdAt":"2025-05-21T07:30:00Z","institutionId":3}"#
        }
        E::IncidentReported => {
            r#"{"incidentId":501,"examId":9,"category":"malpractice","severity":"high","description":"Phone found under answer booklet","courseCode":"CSC 201","venue":"Hall B","studentId":"U2021/CSC/118","reportedBy":55,"reportedByName":"Mr. Bello","reportedAt":"2025-06-12T10:15:00Z","institutionId":3}"#
        }
        E::IncidentUpdated => {
            r#"{"incidentId":501,"status":"under_investigation","severity":"high","updatedBy":12,"updatedByName":"Exams Officer","updatedAt":"2025-06-13T09:00:00Z","note":"Panel convened","institutionId":3}"#
        }
        E::IncidentResolved => {
            r#"{"incidentId":501,"resolution":"Script cancelled; student referred to disciplinary committee","resolvedBy":12,"resolvedByName":"Exams Officer","resolvedAt":"2025-06-30T14:00:00Z","institutionId":3}"#
        }
        E::NewNotification => {
            r#"{"notificationId":"ntf_01J0A","userId":61,"title":"Batch assigned","message":"Batch B-2025-014 (CSC 201) is ready for marking.","kind":"batch_assigned","link":"/marking/batches/77","createdAt":"2025-06-13T08:00:01Z","institutionId":3}"#
        }
        E::NotificationRead => {
            r#"{"notificationId":"ntf_01J0A","userId":61,"readAt":"2025-06-13T08:12:30Z","institutionId":3}"#
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).expect("test JSON is valid")
    }

    fn validate(event: EventType, json: &str) -> Result<(), PayloadError> {
        validate_payload(event, &raw(json))
    }

    fn expect_err(event: EventType, json: &str) -> PayloadError {
        validate(event, json).expect_err("payload should be rejected")
    }

    fn sample(event: EventType) -> &'static str {
        example(event)
    }

    fn sample_map(event: EventType) -> serde_json::Map<String, Value> {
        match serde_json::from_str(sample(event)).expect("sample is JSON") {
            Value::Object(m) => m,
            other => panic!("sample for {event} is not an object: {other}"),
        }
    }

    fn with(event: EventType, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
        let mut map = sample_map(event);
        edit(&mut map);
        Value::Object(map).to_string()
    }

    /// The sample for `event` with `key` set to `value`.
    fn set(event: EventType, key: &str, value: impl Into<Value>) -> String {
        with(event, |m| {
            m.insert(key.to_owned(), value.into());
        })
    }

    /// The sample for `event` without `key`.
    fn without(event: EventType, key: &str) -> String {
        with(event, |m| {
            m.remove(key);
        })
    }

    #[test]
    fn channels_round_trip() {
        for c in Channel::ALL {
            assert_eq!(Channel::parse(c.as_str()), Some(c));
            assert_eq!(c.to_string(), c.as_str());
        }
        assert_eq!(Channel::parse("Incident"), None);
        assert_eq!(Channel::parse(""), None);
    }

    #[test]
    fn event_types_round_trip() {
        for e in EventType::ALL {
            assert_eq!(EventType::parse(e.as_str()), Some(e));
            assert_eq!(e.to_string(), e.as_str());
        }
        let names: BTreeSet<_> = EventType::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(names.len(), 17);
        assert_eq!(EventType::parse("script_deleted"), None);
    }

    #[test]
    fn events_are_grouped_by_channel() {
        let expected: [(&str, &[&str]); 5] = [
            (
                "script_submission",
                &[
                    "script_submitted",
                    "script_verified",
                    "script_collected",
                    "script_graded",
                ],
            ),
            (
                "batch_update",
                &[
                    "batch_sealed",
                    "batch_assigned",
                    "batch_created",
                    "batch_status_changed",
                    "batch_stats_updated",
                ],
            ),
            (
                "exam_timetable",
                &[
                    "timetable_published",
                    "timetable_updated",
                    "batches_created",
                ],
            ),
            (
                "incident",
                &["incident_reported", "incident_updated", "incident_resolved"],
            ),
            ("notification", &["new_notification", "notification_read"]),
        ];
        for (channel, events) in expected {
            let channel = Channel::parse(channel).expect("known channel");
            let listed: Vec<_> = channel.events().iter().map(|e| e.as_str()).collect();
            assert_eq!(listed, events, "Channel::events for {channel}");
            for name in events {
                let event = EventType::parse(name).expect("known event");
                assert_eq!(event.channel(), channel, "{event}.channel()");
            }
        }
        // Channel::events and EventType::channel agree, and cover ALL once.
        let mut seen = Vec::new();
        for c in Channel::ALL {
            for &e in c.events() {
                assert_eq!(e.channel(), c);
                seen.push(e);
            }
        }
        assert_eq!(seen, EventType::ALL.to_vec());
    }

    #[test]
    fn every_sample_is_valid() {
        for e in EventType::ALL {
            assert_eq!(validate(e, sample(e)), Ok(()), "sample for {e}");
        }
    }

    #[test]
    fn schema_matches_structs() {
        // A payload with every schema field set must deserialize into the
        // struct and serialize back with exactly those field names.
        for e in EventType::ALL {
            let s = schema(e);
            assert_eq!(s.required.len(), s.required_kinds.len(), "{e}");
            assert!(s.required.contains(&"institutionId"), "{e}");
            let full = with(e, |m| {
                for &(name, kind) in s.optional {
                    let v = match kind {
                        Kind::Id => Value::from(7),
                        Kind::Timestamp => Value::from("2025-01-01T00:00:00Z"),
                        Kind::Str => Value::from("x"),
                        Kind::Count | Kind::Number => Value::from(1),
                    };
                    m.insert(name.to_owned(), v);
                }
            });
            let back: Value = with_payload_type!(e, T => {
                let typed: T = serde_json::from_str(&full).expect("full payload");
                serde_json::to_value(&typed).expect("serialize")
            });
            let keys: BTreeSet<&str> = back
                .as_object()
                .expect("object")
                .keys()
                .map(String::as_str)
                .collect();
            let mut names: BTreeSet<&str> = s.required.iter().copied().collect();
            names.extend(s.optional.iter().map(|&(n, _)| n));
            assert_eq!(keys, names, "struct fields vs schema for {e}");
            for key in sample_map(e).keys() {
                assert!(
                    names.contains(key.as_str()),
                    "sample for {e} has unknown key {key}"
                );
            }
        }
    }

    #[test]
    fn each_missing_required_field_is_named() {
        for e in EventType::ALL {
            for &name in required_fields(e) {
                let json = with(e, |m| {
                    m.remove(name);
                });
                let err = expect_err(e, &json);
                assert_eq!(err.field, format!("payload.{name}"), "{e}");
                assert_eq!(err.message, "missing required field");
                // The struct itself also requires it.
                let typed = with_payload_type!(e, T => serde_json::from_str::<T>(&json).map(drop));
                assert!(typed.is_err(), "{e} struct accepts missing {name}");
            }
        }
    }

    #[test]
    fn missing_script_id() {
        let json = with(EventType::ScriptSubmitted, |m| {
            m.remove("scriptId");
        });
        let err = expect_err(EventType::ScriptSubmitted, &json);
        assert_eq!(err.to_string(), "payload.scriptId: missing required field");
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = EventType::ScriptSubmitted;
        let err = expect_err(e, &set(e, "studentName", 5));
        assert_eq!(err.field, "payload.studentName");
        assert_eq!(err.message, "expected a string, found a number");

        let err = expect_err(e, &set(e, "scriptId", true));
        assert_eq!(err.field, "payload.scriptId");
        assert_eq!(
            err.message,
            "expected an id (an integer or a non-empty string), found a boolean"
        );

        let err = expect_err(e, &set(e, "batchId", 1.5));
        assert_eq!(err.field, "payload.batchId");
        assert!(err.message.ends_with("found a fractional number"));

        let err = expect_err(e, &set(e, "courseCode", Value::Null));
        assert_eq!(err.field, "payload.courseCode");
        assert_eq!(err.message, "expected a string, found null");

        let b = EventType::BatchCreated;
        let err = expect_err(b, &set(b, "totalSlots", -3));
        assert_eq!(err.field, "payload.totalSlots");
        assert_eq!(
            err.message,
            "expected a non-negative integer, found a negative integer"
        );

        let err = expect_err(b, &set(b, "totalSlots", "50"));
        assert_eq!(
            err.message,
            "expected a non-negative integer, found a string"
        );
    }

    #[test]
    fn timestamps_must_look_like_iso8601() {
        let e = EventType::NotificationRead;
        for bad in [
            "yesterday",
            "2025-13-01T00:00:00Z",
            "12/06/2025",
            "2025-06-12X",
        ] {
            let err = expect_err(e, &set(e, "readAt", bad));
            assert_eq!(err.field, "payload.readAt", "{bad}");
        }
        let err = expect_err(e, &set(e, "readAt", 1_718_000_000));
        assert_eq!(
            err.message,
            "expected an ISO-8601 timestamp string, found a number"
        );
        for good in [
            "2025-06-12",
            "2025-06-12T08:12:30.123+01:00",
            "2025-06-12 08:12:30",
        ] {
            assert_eq!(validate(e, &set(e, "readAt", good)), Ok(()));
        }
    }

    #[test]
    fn optional_fields_may_be_absent_or_null_but_not_mistyped() {
        let e = EventType::ScriptVerified;
        assert_eq!(validate(e, &without(e, "remarks")), Ok(()));
        assert_eq!(validate(e, &set(e, "remarks", Value::Null)), Ok(()));
        let err = expect_err(e, &set(e, "remarks", 3));
        assert_eq!(err.field, "payload.remarks");

        let i = EventType::IncidentReported;
        let err = expect_err(i, &set(i, "studentId", ""));
        assert_eq!(err.field, "payload.studentId");
        assert_eq!(
            err.message,
            "expected an id (an integer or a non-empty string), found an empty string"
        );
    }

    #[test]
    fn non_object_payloads_are_rejected_as_a_whole() {
        let e = EventType::BatchCreated;
        for (json, found) in [
            ("[1,2]", "an array"),
            ("null", "null"),
            ("\"batch\"", "a string"),
            ("42", "a number"),
        ] {
            let err = expect_err(e, json);
            assert_eq!(err.field, "payload");
            assert_eq!(
                err.message,
                format!("expected a JSON object, found {found}")
            );
        }
    }

    #[test]
    fn unknown_fields_are_accepted() {
        let e = EventType::ScriptSubmitted;
        let json = with(e, |m| {
            m.insert("examHall".into(), "Hall B".into());
            m.insert(
                "meta".into(),
                serde_json::json!({"source": "kiosk-4", "retries": [1, 2]}),
            );
        });
        assert_eq!(validate(e, &json), Ok(()));
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let json = r#"{"notificationId":1,"userId":61,"userId":62,"readAt":"2025-06-13T08:12:30Z","institutionId":3}"#;
        let err = expect_err(EventType::NotificationRead, json);
        assert_eq!(err.field, "payload.userId");
        assert_eq!(err.message, "field appears more than once");
    }

    #[test]
    fn numeric_and_string_ids_are_both_accepted() {
        let e = EventType::NewNotification;
        for id in [Value::from(61), Value::from("usr_01HZX"), Value::from(-1)] {
            let json = with(e, |m| {
                m.insert("userId".into(), id.clone());
                m.insert("institutionId".into(), id.clone());
            });
            assert_eq!(validate(e, &json), Ok(()), "id {id}");
        }
        let err = expect_err(e, &without(e, "userId"));
        assert_eq!(err.field, "payload.userId");
        let err = expect_err(e, &set(e, "userId", u64::MAX));
        assert_eq!(err.field, "payload.userId");
    }

    #[test]
    fn id_value_serde_and_display() {
        let n: Id = serde_json::from_str("42").expect("int id");
        let s: Id = serde_json::from_str("\"stu_7\"").expect("string id");
        assert_eq!(n, IdValue::Int(42));
        assert_eq!(s, IdValue::Str("stu_7".into()));
        assert_eq!(n.to_string(), "42");
        assert_eq!(s.to_string(), "stu_7");
        assert_eq!(serde_json::to_string(&n).expect("ser"), "42");
        assert_eq!(serde_json::to_string(&s).expect("ser"), "\"stu_7\"");
        let typed: NewNotification =
            serde_json::from_str(sample(EventType::NewNotification)).expect("typed");
        assert_eq!(format!("user:{}", typed.user_id), "user:61");
    }

    #[test]
    fn validation_leaves_the_raw_bytes_alone() {
        let json = "{ \"notificationId\" : 1 ,\"userId\":61,\"readAt\":\"2025-06-13T08:12:30Z\",\"institutionId\":3, \"x\": 1.000 }";
        let payload = raw(json);
        assert_eq!(
            validate_payload(EventType::NotificationRead, &payload),
            Ok(())
        );
        assert_eq!(payload.get(), json);
    }
}
